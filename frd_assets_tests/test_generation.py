import pytest

from frd_assets.core.generation.filters import FilterConfig, instruction_reject_reason
from frd_assets.core.generation.prompts import (
    instance_prompt,
    instruction_prompt,
    parse_instance,
    parse_instruction_list,
)
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher
from frd_assets.core.metrics.rouge_l import rouge_l_f
from frd_assets.core.records import parse_seed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7. Write a poem.\n8. Name three rivers.", ["Write a poem.", "Name three rivers."]),
        ("7) Write a poem\nabout the sea\n8 - Name rivers", ["Write a poem about the sea", "Name rivers"]),
        (
            "Sure! Here are tasks:\n\n3. Task: Sort the list.\n4. Instruction: Add two numbers.\n\nHope it helps",
            ["Sort the list.", "Add two numbers."],
        ),
        ("### \nWrite a haiku.\n###\nTranslate the text.", ["Write a haiku.", "Translate the text."]),
        ("Describe a cat.\nDescribe a dog.", ["Describe a cat.", "Describe a dog."]),
        ("", []),
    ],
)
def test_parse_instruction_list(text, expected):
    assert parse_instruction_list(text) == expected


@pytest.mark.parametrize(
    "text, output_first, expected",
    [
        ("Input: <noinput>\nOutput: Paris.", False, ("", "Paris.")),
        ("Input: 2 and 3\nOutput: 5\nInput: 4 and 4\nOutput: 8", False, ("2 and 3", "5")),
        ("Output: positive\nInput: I loved it.", True, ("I loved it.", "positive")),
        ("Just the answer.", False, ("", "Just the answer.")),
        ("Input: something but no answer", False, None),
        ("Input: x\nOutput:", False, None),
    ],
)
def test_parse_instance(text, output_first, expected):
    assert parse_instance(text, output_first=output_first) == expected


def test_instruction_prompt_numbers_examples_and_prefills_next_number():
    prompt = instruction_prompt(["Write a poem.", "Name a fruit."])
    assert "1. Write a poem.\n2. Name a fruit." in prompt.messages[0]["content"]
    assert prompt.prefill == "3."
    assert instance_prompt("Classify it.", is_classification=True).prefill == "Output:"


@pytest.mark.parametrize(
    "instruction, truncated, reason",
    [
        ("Write a poem about the sea.", False, None),
        ("Write a poem about the sea.", True, "truncated"),
        ("Do it", False, "too_short"),
        (" ".join(["word"] * 151), False, "too_long"),
        ("Draw a picture of a cat for me.", False, "blacklisted_word"),
        ("Describe what you see in the image below.", False, "blacklisted_word"),
        ("Go to the store and buy milk.", False, "blacklisted_word"),
        ("Write a program that sorts numbers.", False, "write_a_program"),
        ("- Write a poem about the sea.", False, "leading_punctuation"),
        ("1234 5678 9012", False, "non_text"),
        ("\U0001f642 Write a poem about the sea.", False, "leading_punctuation"),  # a symbol first (So)
        ("\u00a0\u2003 12 34 56", False, "non_text"),  # no letter of any script
        # issue 19: each was dropped before (non_text, or too_short counting words by spaces)
        ("Ünïcode first letter task here", False, None),
        ("Écris un poème sur la mer en été.", False, None),
        ("Напиши короткое стихотворение о море.", False, None),
        ("写一首关于大海的短诗。", False, None),
        ("«Напиши» короткое стихотворение.", False, "leading_punctuation"),  # « is Pi: punctuation in any script
        ("【写】一首关于大海的短诗。", False, "leading_punctuation"),
        ("你好", False, "too_short"),  # two characters: two words
        ("Нарисуй кота в шляпе, пожалуйста.", False, "blacklisted_word"),
        ("Опиши, что изображено на картинке ниже.", False, "blacklisted_word"),
        ("请根据这张图片写一段描述。", False, "blacklisted_word"),
        ("Напишите программу, которая сортирует числа.", False, "write_a_program"),
        ("编写一个程序，对数字进行排序。", False, "write_a_program"),
    ],
)
def test_filters(instruction, truncated, reason):
    assert instruction_reject_reason(instruction, truncated=truncated, config=FilterConfig()) == reason


def test_the_filters_signature_names_the_word_rule_and_the_languages_of_the_word_lists():
    assert GenerationConfig().filters_signature() == (
        "self_instruct_filters|words:tokenizer:unicode-v1|min_words:3|max_words:150|word_lists:en,ru,zh"
        "|novelty:rouge_l>0.7"
    )


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match=r"num_instructions must be in \[1, 1000000\], got 0"):
        GenerationConfig(num_instructions=0)
    with pytest.raises(ValueError, match="novelty_threshold"):
        GenerationConfig(novelty_threshold=1.5)
    with pytest.raises(ValueError, match="max_words"):
        GenerationConfig(min_words=10, max_words=5)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir):
    return TransformersTeacher(str(tiny_model_dir), batch_size=4)


def test_teacher_batches_left_padded_and_reports_finish(tiny_teacher):
    prompts = [instance_prompt("Describe the quiet river."), instruction_prompt(["Name a small garden."] * 3)]
    out = tiny_teacher.complete(prompts, SamplingParams(max_new_tokens=64, temperature=0))
    assert tiny_teacher.tokenizer.padding_side == "left"
    assert [c.text.startswith(p.prefill) for c, p in zip(out, prompts, strict=True)] == [True, True]
    assert all(c.finish_reason in ("stop", "length") and c.completion_tokens > 0 for c in out)
    # Greedy decoding of a prompt alone equals the same prompt inside a padded batch.
    alone = tiny_teacher.complete(prompts[:1], SamplingParams(max_new_tokens=64, temperature=0))
    assert alone[0].text == out[0].text


def test_self_instruct_loop_on_tiny_teacher(tiny_teacher, sample_seed_bytes):
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    config = GenerationConfig(
        num_instructions=8,
        prompts_per_round=4,
        max_rounds=6,
        temperature=1.0,
        max_new_tokens_instructions=96,
        max_new_tokens_instance=64,
    )
    logs: list[str] = []
    result = generate(seeds, tiny_teacher, config, log=logs.append)
    assert 0 < len(result.records) <= 8
    assert result.rounds <= 6 and result.teacher_tokens > 0
    assert any("kept" in line and "tok/s" in line for line in logs)
    instructions = [r.instruction for r in result.records]
    assert len(set(instructions)) == len(instructions)
    # The novelty filter held: no kept instruction is too close to a seed or to an earlier kept one.
    pool = [s.instruction for s in seeds]
    for ins in instructions:
        assert max(rouge_l_f(p, ins) for p in pool) <= config.novelty_threshold
        pool.append(ins)
    assert sum(result.rejected.values()) + len(result.records) >= 8
    assert all(r.output and r.provenance["source"] == "generated" for r in result.records)


def test_embedding_dedup_scores_paraphrases_high_and_unrelated_low():
    from frd_assets.core.generation.embeddings import EmbeddingIndex, SentenceEmbedder

    index = EmbeddingIndex(SentenceEmbedder(), ["Give three tips for staying healthy."])
    assert index.max_cosine("List three ways to stay healthy.") > 0.75
    assert index.max_cosine("Translate the sentence into French.") < 0.3
    index.add("Translate the sentence into French.")
    assert index.max_cosine("Convert this sentence to French.") > 0.75


def test_embedding_dedup_rejects_by_its_own_reason(tiny_teacher, first_sample_tasks_bytes):
    seeds = parse_seed(first_sample_tasks_bytes, "sample_seed.jsonl")
    # 0.7, not 1.0: the tiny teacher's sampled text at 1.0 depends on the CPU's float kernels (on an AVX-512/AMX
    # machine it wrote fragments that failed to parse, so no two instructions were left to compare).
    config = GenerationConfig(num_instructions=6, prompts_per_round=4, max_rounds=4, temperature=0.7,
                              max_new_tokens_instructions=96, max_new_tokens_instance=48,
                              embedding_dedup_threshold=0.5)
    result = generate(seeds, tiny_teacher, config, log=lambda _: None)
    # The tiny teacher's instructions share one template, so semantic near-duplicates are certain.
    assert result.rejected["similar_embedding"] > 0, (result.rejected, [r.instruction for r in result.records])
