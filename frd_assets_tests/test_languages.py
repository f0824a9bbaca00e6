"""Issue 19: every text measure protects Russian, Chinese, French, Arabic and English alike.

One small data set per language (data/language_sets.json), written for these tests (no translation of the
sample seed): seed tasks,
distinct records, a record that differs from a distinct one by a word and one that differs by a character
(a typo, a dropped accent or hamza), a copy of a seed task and a copy of an evaluation task. Each test runs
the same table over the five languages; English is there to show that nothing changed for it (its words
are still exactly rouge-score's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rouge_score.rouge_scorer import RougeScorer

from frd_assets.core.evaluation import EvalTask
from frd_assets.core.evaluation.stats import rouge_l_scores
from frd_assets.core.generation.filters import FilterConfig, instruction_reject_reason
from frd_assets.core.metrics.bleu import bleu_tokenizer
from frd_assets.core.metrics.rouge_l import NoveltyIndex, rouge_l_f
from frd_assets.core.metrics.text_units import words
from frd_assets.core.quality.decontamination import EvalNgramIndex
from frd_assets.core.quality.near_duplicates import find_near_duplicates
from frd_assets.core.validation import READY, ValidationConfig, validate


@dataclass(frozen=True)
class LanguageSet:
    language: str  # ISO 639-1
    seed: list[str]
    distinct: list[dict[str, str]]  # different tasks: all must be kept
    near_copy: dict[str, str]  # distinct[0] with one word (Chinese: one character) changed
    typo_copy: dict[str, str]  # distinct[typo_of] with one character changed: a typo, a dropped accent
    typo_of: int
    seed_copy: dict[str, str]  # seed[0], with other case or punctuation
    eval_task: EvalTask
    eval_copy: dict[str, str]  # shares a run of eight words (Chinese: characters) with eval_task
    bleu_tokenizer: str


def _language_set(fields: dict) -> LanguageSet:
    return LanguageSet(**{**fields, "eval_task": EvalTask(**fields["eval_task"])})


RUSSIAN, CHINESE, FRENCH, ARABIC, ENGLISH = map(
    _language_set, json.loads((Path(__file__).parent / "data" / "language_sets.json").read_text(encoding="utf-8"))
)
LANGUAGES = [pytest.param(s, id=s.language) for s in (RUSSIAN, CHINESE, FRENCH, ARABIC, ENGLISH)]
CONFIG = ValidationConfig()


# (text, words, where it comes from): the rule of metrics/text_units.py, one script at a time.
WORD_CASES = [
    ("The cat’s mat — 42!", ["the", "cat", "s", "mat", "42"], "English: rouge-score's tokens, curly quote and all"),
    ("Напиши ЁЛКУ, пожалуйста!", ["напиши", "ёлку", "пожалуйста"], "Cyrillic: case-folded runs of letters"),
    ("写一首诗。", ["写", "一", "首", "诗"], "Han: one word per character, 。 a separator"),
    ("Écris l’été", ["écris", "l", "été"], "French: accents stay inside a word"),
    ("E\u0301cris l’e\u0301te\u0301", ["écris", "l", "été"], "French, decomposed accents: NFKC composes them"),
    ("كَتَبَ الطالبُ", ["كَتَبَ", "الطالبُ"], "Arabic harakat (Mn) inside a word"),
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"], "Devanagari vowel signs and virama inside a word"),
    ("ภาษาไทย", ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"], "Thai: no spaces, one word per character"),
    ("カタカナとひらがな", list("カタカナとひらがな"), "Japanese kana: one word per character"),
    ("ＡＢＣ１２３ Straße", ["abc123", "strasse"], "full-width Latin (NFKC) and ß (case folding)"),
    ("用Python写", ["用", "python", "写"], "a Latin word inside Chinese stays one word"),
]


@pytest.mark.parametrize("text, expected, source", WORD_CASES, ids=[c[2] for c in WORD_CASES])
def test_words_follow_the_rule_for_each_script(text, expected, source):
    assert words(text) == expected


@pytest.mark.parametrize("data", LANGUAGES)
def test_the_filters_accept_well_formed_instructions(data):
    instructions = data.seed + [r["instruction"] for r in data.distinct]
    reasons = {i: instruction_reject_reason(i, truncated=False, config=FilterConfig()) for i in instructions}
    assert reasons == dict.fromkeys(instructions)


@pytest.mark.parametrize("data", LANGUAGES)
def test_the_novelty_filter_rejects_a_seed_copy_and_keeps_distinct_tasks(data):
    pool = NoveltyIndex(data.seed)
    assert pool.max_f(data.seed_copy["instruction"]) == (1.0, data.seed[0])
    for r in data.distinct:
        assert pool.max_f(r["instruction"])[0] <= 0.7, r["instruction"]
    first = data.distinct[0]["instruction"]
    pool.add(first)
    f, closest = pool.max_f(data.near_copy["instruction"])
    assert f > 0.7 and closest == first
    typo_of = data.distinct[data.typo_of]["instruction"]
    pool.add(typo_of)
    f, closest = pool.max_f(data.typo_copy["instruction"])
    assert f > 0.7 and closest == typo_of


@pytest.mark.parametrize("data", LANGUAGES)
def test_near_duplicates_of_a_record_and_of_the_seed_are_dropped_and_distinct_ones_kept(data):
    texts = [r["instruction"] for r in data.distinct + [data.near_copy, data.typo_copy, data.seed_copy]]
    found = find_near_duplicates(texts, data.seed, threshold=CONFIG.near_duplicate_threshold,
                                 shingle_size=CONFIG.shingle_size, num_perm=CONFIG.num_perm)
    assert found[: len(data.distinct)] == [None] * len(data.distinct)
    near_copy, typo_copy, seed_copy = found[len(data.distinct):]
    assert (near_copy.of_reference, near_copy.other) == (False, 0)
    assert (typo_copy.of_reference, typo_copy.other) == (False, data.typo_of)
    assert (seed_copy.of_reference, seed_copy.other, seed_copy.jaccard) == (True, 0, 1.0)


@pytest.mark.parametrize("data", LANGUAGES)
def test_a_copy_of_an_evaluation_task_is_caught_and_distinct_records_are_not(data):
    index = EvalNgramIndex([data.eval_task], CONFIG.decontamination_ngram)
    fields = ("instruction", "input", "output")
    assert index.match([data.eval_copy[f] for f in fields]).task_id == data.eval_task.id
    for r in data.distinct + [data.typo_copy, data.seed_copy]:
        assert index.match([r[f] for f in fields]) is None, r["instruction"]


@pytest.mark.parametrize("data", LANGUAGES)
def test_the_gate_drops_each_copy_for_its_reason_and_passes_the_distinct_records(data):
    rows = data.distinct + [data.near_copy, data.typo_copy, data.seed_copy, data.eval_copy]
    report = validate(rows, data.seed, CONFIG, eval_tasks=[data.eval_task])
    assert report.invalid_records == {"contaminated": 1, "near_duplicate": 3}
    assert [r["instruction"] for r in report.valid_rows] == [r["instruction"] for r in data.distinct]
    gates = {g.name: g for g in report.gates}
    # Related text scores above 0 (rouge-score's own tokenizer gave 0 for Russian, Chinese and Arabic).
    assert 0 < gates["seed_rouge_l_mean"].value < CONFIG.max_seed_rouge_l
    assert 0 < gates["pairwise_rouge_l_mean"].value < CONFIG.max_pairwise_rouge_l
    for signature in (gates["seed_rouge_l_mean"].signature, gates["pairwise_rouge_l_mean"].signature,
                      report.near_duplicates.signature, report.decontamination.signature):
        assert "tokenizer:unicode-v1" in signature
    assert f"tok:{data.bleu_tokenizer}" in gates["seed_bleu"].signature
    assert f"tok:{data.bleu_tokenizer}" in gates["self_bleu"].signature
    assert report.verdict == READY


@pytest.mark.parametrize("data", LANGUAGES)
def test_bleu_tokenizer_from_the_texts_agrees_with_the_language_code(data):
    assert bleu_tokenizer(data.seed) == bleu_tokenizer(language=data.language) == data.bleu_tokenizer


@pytest.mark.parametrize("data", LANGUAGES)
def test_evaluation_rouge_scores_an_identical_answer_1_and_a_related_one_between(data):
    reference = data.eval_task.reference
    related = data.distinct[0]["output"] + " " + reference[: len(reference) // 2]
    assert rouge_l_scores([reference, reference], [reference, related])[0] == 1.0
    assert 0 < rouge_l_scores([reference], [related])[0] < 1


SCORER = RougeScorer(["rougeL"])


def test_english_scores_are_rouge_scores_own_bit_for_bit():
    texts = ENGLISH.seed + [r[f] for r in ENGLISH.distinct + [ENGLISH.near_copy, ENGLISH.typo_copy, ENGLISH.eval_copy]
                            for f in ("instruction", "output")]
    for a in texts:
        for b in texts:
            assert rouge_l_f(a, b) == SCORER.score(a, b)["rougeL"].fmeasure


@pytest.mark.parametrize("language, code", [("zh-Hant", "zh"), ("ja", "char"), ("th", "char"), ("ru", "13a"),
                                            (None, "13a")])
def test_bleu_tokenizer_from_a_language_code(language, code):
    # None and no texts: sacrebleu's own default, 13a.
    assert bleu_tokenizer(language=language) == code
