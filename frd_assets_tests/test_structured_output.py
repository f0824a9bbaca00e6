"""Instances as schema-constrained JSON: the parsers, the local teacher's llguidance constraint in a
left-padded batch, and the loop's counts with JSON on, off, and failing over to the text parser."""

import json
import random

import pytest

from frd_assets.core.generation.prompts import (
    instance_prompt,
    instance_schema,
    parse_instance_reply,
    parse_json_instance,
)
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher
from frd_assets.core.records import parse_seed


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"input":"2 and 3","output":"5"}', ("2 and 3", "5")),  # what the constraint writes
        ('{"output":"positive","input":"I loved it."}', ("I loved it.", "positive")),  # classification order
        ('Sure!\n```json\n{"input": "", "output": "Paris."}\n```', ("", "Paris.")),  # unconstrained chatter
        ('{"input":"<noinput>","output":"Paris."}', ("", "Paris.")),  # the text format's no-input marker
        ('{"output":"Paris."}', ("", "Paris.")),  # input left out: a task without input
        ('{"input":"x","output":""}', None),  # no answer
        ('{"input":"x","output":["a","b"]}', None),  # not the schema's string
        ('{"input":"x","output":"cut off', None),  # truncated
        ("Input: x\nOutput: y", None),  # no JSON at all
    ],
)
def test_parse_json_instance(text, expected):
    assert parse_json_instance(text) == expected


@pytest.mark.parametrize(
    "text, asked_json, expected",
    [
        ('{"input":"","output":"Paris."}', True, (("", "Paris."), "json")),
        # A teacher that ignored the schema and wrote the text format: the text parser reads it.
        ("Input: 2 and 3\nOutput: 5", True, (("2 and 3", "5"), "text")),
        # A broken object is not handed to the text parser, which would take all of it as the output.
        ('{"input":"x","output":"y" oops', True, (None, None)),
        ("Input: 2 and 3\nOutput: 5", False, (("2 and 3", "5"), "text")),
        ("Input: only an input", False, (None, None)),
    ],
)
def test_parse_instance_reply_reads_json_first_then_text(text, asked_json, expected):
    assert parse_instance_reply(text, asked_json=asked_json) == expected


def test_json_prompts_carry_the_schema_in_the_classification_order():
    plain, label_first = instance_prompt("Name a fruit.", as_json=True), instance_prompt(
        "Classify the review.", is_classification=True, as_json=True)
    assert list(plain.json_schema["properties"]) == ["input", "output"]
    assert list(label_first.json_schema["properties"]) == ["output", "input"]
    assert plain.prefill == "" and '"output"' in plain.messages[0]["content"]
    assert instance_prompt("Name a fruit.").json_schema is None  # the text format is unchanged
    assert instance_schema()["additionalProperties"] is False


def test_instance_format_is_checked_by_name():
    with pytest.raises(ValueError, match="instance_format must be one of 'json', 'text', got 'xml'"):
        GenerationConfig(instance_format="xml")


def _train_json_replies(model_dir, out_dir, steps=500, seed=0):
    """The tiny chat model taught, for a few seconds, to answer JSON instance prompts in compact JSON
    while still answering text prompts in the text format.

    500 steps: after 150, seeds 0 and 3 of 4 left the classification reply babbling inside its string past
    96 tokens (a fresh clone's CI run failed on it), and after 300 a fresh install of 2026-12-07 left the
    river description babbling; after 500 every reply closes its object.
    Instruction lists stay in the mix, or 300 steps of instances alone unteach the model to propose tasks.

    The session's tiny model never saw a quote or a brace, so under the constraint it never closes a
    string; a teacher that can write JSON is what shows the constrained path producing records."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from frd_assets_tests.tiny_model import ADJS, NOUNS, _corpus, _render, _sentence, train_on_texts

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = []
    for i in range(300):
        answer = f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} is {rng.choice(ADJS)}."
        if i % 3 == 2:  # the text format, as the session's tiny model was trained on it
            prompt = instance_prompt(_sentence(rng))
            texts.append(_render(prompt.messages, f"Input: <noinput>\nOutput: {answer}"))
            continue
        classification = i % 3 == 1 and i % 2 == 0
        prompt = instance_prompt(_sentence(rng), is_classification=classification, as_json=True)
        fields = {"output": rng.choice(ADJS), "input": answer} if classification else {
            "input": rng.choice(["", _sentence(rng)]), "output": answer}
        texts.append(_render(prompt.messages, json.dumps(fields, separators=(",", ":"))))
    texts += _corpus(rng, 200)[::2]  # the even ones: instruction lists in the session model's format
    train_on_texts(model, tokenizer, texts, steps=steps, rng=rng)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def json_model_dir(tiny_model_dir, tmp_path_factory):
    return _train_json_replies(tiny_model_dir, tmp_path_factory.mktemp("json-tiny") / "model")


@pytest.fixture(scope="module")
def json_teacher(json_model_dir):
    return TransformersTeacher(str(json_model_dir), batch_size=4)


def test_constrained_batch_is_left_padded_valid_json_and_equals_each_prompt_alone(json_teacher):
    assert json_teacher.supports_json_schema, json_teacher.json_schema_fallback_reason
    prompts = [
        instance_prompt("Describe the quiet river.", as_json=True),
        instance_prompt("Explain the ancient bridge of a famous village near the museum.", as_json=True),
        instance_prompt("Classify the gentle song.", is_classification=True, as_json=True),
        instance_prompt("Name the small garden."),  # a free-text row in the same padded batch
    ]
    # Room for the tiny model's longest greedy value: how long it runs on depends on the CPU's float kernels
    # (96 tokens cut one object short on an AVX-512/AMX machine).
    params = SamplingParams(max_new_tokens=192, temperature=0)
    out = json_teacher.complete(prompts, params)
    assert [c.constrained for c in out] == [True, True, True, False]
    for prompt, comp in zip(prompts[:3], out[:3], strict=True):
        assert comp.finish_reason == "stop", comp.text
        obj = json.loads(comp.text)  # the whole reply is the object: the constraint ends it with EOS
        assert list(obj) == list(prompt.json_schema["properties"]) and all(isinstance(v, str) for v in obj.values())
    # Greedy decoding under the constraint is unchanged by the padding of a batch.
    alone = json_teacher.complete(prompts[1:2], params)
    assert alone[0].text == out[1].text


def test_sampling_under_the_constraint_stays_valid_json(json_teacher):
    prompts = [instance_prompt(f"Describe the bright market number {i}.", as_json=True) for i in range(4)]
    out = json_teacher.complete(prompts, SamplingParams(max_new_tokens=96, temperature=1.0, top_p=0.9, seed=5))
    finished = [c for c in out if c.finish_reason == "stop"]
    assert finished and all(parse_json_instance(c.text) for c in finished)


def _loop_config(**overrides):
    settings = dict(num_instructions=6, prompts_per_round=4, max_rounds=6, temperature=1.0,
                    max_new_tokens_instructions=96, max_new_tokens_instance=64)
    return GenerationConfig(**{**settings, **overrides})


def _counts_add_up(result):
    counts = result.instances
    assert result.kept_instructions == len(result.instructions) == counts.kept_instructions >= len(result.records)
    assert counts.constrained + counts.json + counts.text == counts.records == len(result.records)
    assert counts.records + counts.unparsable + counts.truncated == counts.kept_instructions
    assert counts.unparsable == result.rejected["unparsable_instance"]
    assert result.instance_yield == len(result.records) / result.kept_instructions


def test_the_loop_counts_constrained_instances(json_teacher, sample_seed_bytes):
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    logs = []
    result = generate(seeds, json_teacher, _loop_config(), log=logs.append)
    _counts_add_up(result)
    assert result.instances.constrained > 0 and result.instances.json == 0
    assert result.json_fallback_reason is None
    assert any("from JSON" in line for line in logs) and any("yield" in line for line in logs)


def test_with_json_off_every_instance_comes_from_the_text_parser(json_teacher, sample_seed_bytes):
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    result = generate(seeds, json_teacher, _loop_config(instance_format="text"), log=lambda _m: None)
    _counts_add_up(result)
    assert result.instances.constrained == result.instances.json == 0
    assert result.instances.text == len(result.records) > 0


def test_constrained_replies_that_fail_are_asked_again_as_text(tiny_model_dir, sample_seed_bytes):
    # The session's tiny model cannot close a JSON string, so every constrained reply runs out of
    # tokens; the text prompt it was trained on then writes the instances.
    teacher = TransformersTeacher(str(tiny_model_dir), batch_size=4)
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    result = generate(seeds, teacher, _loop_config(), log=lambda _m: None)
    _counts_add_up(result)
    assert result.instances.constrained == result.instances.json == 0
    assert result.instances.text == len(result.records) > 0


def test_generated_dataset_metadata_carries_the_yield(json_model_dir, dagster_instance, dataset_id,
                                                      sample_seed_bytes, tmp_path):
    from dagster import AssetKey, materialize

    from frd_assets.core.store import SEEDS_BUCKET, LocalStore
    from frd_assets.definitions import ASSETS, build_resources
    from frd_assets.defs.partitions import dataset_partitions

    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "TEACHER_MODEL": str(json_model_dir), "TEACHER_BATCH_SIZE": "4"}
    LocalStore(env["FRD_LOCAL_STORE"]).put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    config = {"num_instructions": 6, "prompts_per_round": 4, "max_rounds": 6, "temperature": 1.0,
              "max_new_tokens_instructions": 96, "max_new_tokens_instance": 64}
    result = materialize(ASSETS[:2], partition_key=dataset_id, instance=dagster_instance,
                         resources=build_resources(env),
                         run_config={"ops": {"generated_dataset": {"config": config}}})
    assert result.success
    event = dagster_instance.get_latest_materialization_event(AssetKey("generated_dataset"))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    instances = meta["instances"]
    assert meta["instance_format"] == "json" and instances["json_fallback_reason"] is None
    assert meta["records"] == instances["records"] > 0 and instances["constrained"] > 0
    assert meta["kept_instructions"] == instances["kept_instructions"] >= meta["records"]
    assert meta["yield"] == instances["yield"] == round(meta["records"] / meta["kept_instructions"], 3)
