"""Issue 12's filters in the validation gate: near-duplicates, decontamination, and judge scores per record.

Fixed examples, each small enough to count its shingles and n-grams by hand. The judge's aggregation is
driven by ScriptedTeacher, a small real Teacher that answers each rubric prompt from a script; what is under
test there is the parsing and counting, not a model. The real judges are the tiny chat model behind
`transformers serve` and loaded locally: it was never taught the score format, so most replies are
unparsable, and those tests check the counting, not the quality.
"""

import re

import pytest

from frd_assets.core.evaluation import EvalTask, Judge, make_judge
from frd_assets.core.generation.teachers import Completion
from frd_assets.core.quality.decontamination import EvalNgramIndex
from frd_assets.core.quality.near_duplicates import (
    find_near_duplicates,
    jaccard,
    lsh_bands,
    minhashes,
    shingles,
)
from frd_assets.core.quality.record_judge import parse_score, record_judge_prompt, score_records
from frd_assets.core.records import Record
from frd_assets.core.validation import DELETED, READY, ValidationConfig, validate

SEEDS = ["Give three tips for staying healthy.", "Translate the sentence into French."]
GOOD = [
    {"instruction": "Name the largest planet in our solar system.", "input": "", "output": "Jupiter."},
    {"instruction": "Convert 3 kilometres into metres.", "input": "", "output": "3000 metres."},
    {"instruction": "Suggest a title for a novel about a lighthouse keeper.", "input": "", "output": "The Last Light"},
    {"instruction": "Return the person as JSON with name and age.", "input": "Ana, 31",
     "output": '{"name": "Ana", "age": 31}'},
    {"instruction": "Explain what photosynthesis produces.", "input": "", "output": "Sugar and oxygen."},
    {"instruction": "List two primary colours.", "input": "", "output": "Red and blue."},
]


def row(instruction, input="", output="An answer."):
    return {"instruction": instruction, "input": input, "output": output}


def near(texts, references=(), threshold=0.7, shingle_size=1, num_perm=128):
    return find_near_duplicates(texts, references, threshold=threshold, shingle_size=shingle_size,
                                num_perm=num_perm)


# ---- near-duplicates --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, size, expected",
    [
        ("Write a POEM, please!", 1, {"write", "a", "poem", "please"}),  # rouge-score's tokens: case and punctuation go
        ("Write a poem please", 2, {"write a", "a poem", "poem please"}),
        ("Write a poem", 3, {"write a poem"}),
        ("Write", 3, {"write"}),  # shorter than a shingle: one shingle of all its tokens
        ("把这句话翻译", 1, {"把", "这", "句", "话", "翻", "译"}),  # Chinese: one word per character
        ("!!! ...", 1, set()),  # no letter or digit of any script: no words, nothing to compare
    ],
)
def test_shingles_are_word_ngrams_of_text_units(text, size, expected):
    assert shingles(text, size) == expected


# (a, b, exact Jaccard of their word sets, dropped at 0.7): every case counted by hand.
NEAR_CASES = [
    ("Write a short poem about the sea in spring.", "Write a short poem about the ocean in spring.", 8 / 10, True),
    ("Give three tips for staying healthy.", "give three TIPS for staying healthy!", 1.0, True),
    # 7 shared words, 8 and 9 in all: exactly 0.7, which is a near-duplicate (the threshold is inclusive)
    ("alpha bravo charlie delta echo foxtrot golf hotel", "alpha bravo charlie delta echo foxtrot golf india juliet",
     0.7, True),
    # 7 shared words, 8 and 10 in all: 7/11, kept
    ("alpha bravo charlie delta echo foxtrot golf hotel",
     "alpha bravo charlie delta echo foxtrot golf india juliet kilo", 7 / 11, False),
    ("Name the largest planet in our solar system.", "Convert 3 kilometres into metres.", 0.0, False),
]


@pytest.mark.parametrize("a, b, expected_jaccard, dropped", NEAR_CASES)
def test_near_duplicate_pairs(a, b, expected_jaccard, dropped):
    assert jaccard(shingles(a, 1), shingles(b, 1)) == pytest.approx(expected_jaccard)
    result = near([a, b])
    assert result[0] is None
    assert (result[1] is not None) == dropped
    if dropped:
        assert (result[1].index, result[1].of_reference, result[1].other) == (1, False, 0)
        assert result[1].jaccard == pytest.approx(expected_jaccard)


def test_minhash_finds_a_one_word_variant_and_keeps_distinct_records():
    texts = [r["instruction"] for r in GOOD] + ["Name the biggest planet in our solar system."]
    result = near(texts)
    assert result[:-1] == [None] * len(GOOD)
    assert (result[-1].of_reference, result[-1].other) == (False, 0)


def test_a_candidate_lsh_proposes_below_the_threshold_is_confirmed_exactly_and_kept():
    from datasketch import MinHashLSH

    # 6 shared words of 10: Jaccard 0.6, which the recall-tilted banding proposes as a candidate.
    a = "alpha bravo charlie delta echo foxtrot golf hotel"
    b = "alpha bravo charlie delta echo foxtrot india juliet"
    sa, sb = shingles(a, 1), shingles(b, 1)
    assert jaccard(sa, sb) == pytest.approx(0.6)
    lsh = MinHashLSH(num_perm=128, params=lsh_bands(0.7, 128))
    ma, mb = minhashes([sa, sb], 128)
    lsh.insert("a", ma)
    assert lsh.query(mb) == ["a"]  # proposed...
    assert near([a, b]) == [None, None]  # ...and kept, because the exact Jaccard is below 0.7


def test_first_of_each_cluster_is_kept_and_later_texts_compare_with_kept_ones_only():
    words = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12".split()
    a, b, c = " ".join(words[0:10]), " ".join(words[1:11]), " ".join(words[2:12])
    # a~b and b~c at 9/11; a~c at 8/12. b goes as a repeat of a; c is compared with a (kept), not b (dropped).
    result = near([a, b, c])
    assert result[0] is None and result[2] is None
    assert (result[1].other, result[1].jaccard) == (0, pytest.approx(9 / 11))


def test_near_duplicates_of_the_seed_are_found_and_a_seed_wins_a_tie():
    seed = ["Translate the sentence into French."]
    result = near(["Translate the sentence into German.", "Translate the sentence into German."], seed)
    # The first is 4/6 from the seed: kept; the second is identical to it.
    assert result[0] is None and (result[1].of_reference, result[1].other) == (False, 0)
    result = near(["Translate this sentence into French."], seed + ["Translate this sentence into French."])
    assert (result[0].of_reference, result[0].other, result[0].jaccard) == (True, 1, 1.0)


def test_texts_without_words_are_kept_by_minhash_and_caught_exactly_by_the_gate():
    symbols = "\U0001f642 \u2192 \u2605\u2605\u2605 ?!"  # no letter or digit of any script (Chinese has words now)
    assert near([symbols, symbols]) == [None, None]
    report = validate(GOOD + [row(symbols), row(symbols)], SEEDS, ValidationConfig())
    assert report.invalid_records == {"duplicate": 1}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 1.0])
def test_lsh_bands_find_a_pair_at_the_threshold_98_times_in_100_with_the_fewest_bands(threshold):
    bands, rows = lsh_bands(threshold, 128)
    assert bands >= 2 and bands * rows <= 128
    assert 1 - (1 - threshold**rows) ** bands >= 0.98
    if rows < 64:  # one more row per band would fall short
        more = rows + 1
        assert 1 - (1 - threshold**more) ** (128 // more) < 0.98


def test_validate_counts_near_duplicates_of_the_seed_and_within_the_set():
    rows = GOOD + [
        row("Give three tips for staying healthy today."),  # 6 of 7 seed words: Jaccard 6/7
        row("GIVE THREE TIPS FOR STAYING HEALTHY."),  # an exact copy of the seed, up to case
        row("Name the biggest planet in our solar system."),  # one word from GOOD[0]
        dict(GOOD[1]),  # an exact repeat within the set keeps its own reason
    ]
    report = validate(rows, SEEDS, ValidationConfig())
    assert report.invalid_records == {"near_duplicate": 3, "duplicate": 1}
    assert report.valid_rows == GOOD
    nd = report.to_dict()["near_duplicates"]
    assert (nd["of_seed"], nd["within_set"], nd["threshold"], nd["shingle_size"], nd["num_perm"]) == (2, 1, 0.7, 1, 128)
    by_row = {e["row"]: e for e in nd["examples"]}
    assert by_row[8]["duplicate_of"] == "row" and by_row[8]["other_row"] == 0
    assert by_row[6]["duplicate_of"] == "seed" and by_row[6]["other_instruction"] == SEEDS[0]
    assert by_row[7]["jaccard"] == 1.0


# ---- decontamination --------------------------------------------------------------------------------------

EVAL = EvalTask("sky-1", "Explain why the sky looks blue on a clear summer afternoon.", "",
                "Sunlight is scattered by air molecules, and blue light scatters the most.")
SHARES_8 = row("Can you say why the sky looks blue on a clear day?", output="Rayleigh scattering.")
SHARES_7 = row("Can you say why the sky looks blue on a cloudy day?", output="Rayleigh scattering.")
COPIES_REFERENCE = row("What colour is the sky?",
                       output="Blue: sunlight is scattered by AIR molecules, and blue light...")


def longest_shared_run(record, task) -> int:
    """The longest word n-gram the record and the task share: proves each example is what its name says."""
    from frd_assets.core.metrics.text_units import words

    a = words(" ".join([record["instruction"], record["input"], record["output"]]))
    b = " " + " ".join(words(" ".join([task.instruction, task.input, task.reference]))) + " "
    return max((n for n in range(1, len(a) + 1) for i in range(len(a) - n + 1)
                if f" {' '.join(a[i:i + n])} " in b), default=0)


def test_the_examples_share_what_their_names_say():
    assert longest_shared_run(SHARES_8, EVAL) == 8
    assert longest_shared_run(SHARES_7, EVAL) == 7
    assert longest_shared_run(COPIES_REFERENCE, EVAL) == 9


def test_an_8_gram_copy_of_an_evaluation_task_is_dropped_and_a_7_gram_is_kept():
    report = validate(GOOD + [SHARES_8, SHARES_7, COPIES_REFERENCE], SEEDS, ValidationConfig(), eval_tasks=[EVAL])
    assert report.invalid_records == {"contaminated": 2}
    assert SHARES_7 in report.valid_rows and SHARES_8 not in report.valid_rows
    listed = report.to_dict()["decontamination"]["contaminated"]
    assert listed == [
        {"row": 6, "id": None, "instruction": SHARES_8["instruction"], "task_id": "sky-1",
         "task_instruction": EVAL.instruction, "ngram": "why the sky looks blue on a clear"},
        {"row": 8, "id": None, "instruction": COPIES_REFERENCE["instruction"], "task_id": "sky-1",  # the first 8-gram
         "task_instruction": EVAL.instruction, "ngram": "sunlight is scattered by air molecules and blue"},
    ]
    # n is configurable: at 7 the 7-gram record goes too.
    report = validate(GOOD + [SHARES_7], SEEDS, ValidationConfig(decontamination_ngram=7), eval_tasks=[EVAL])
    assert report.invalid_records == {"contaminated": 1}


def test_held_out_seed_records_and_evaluation_tasks_decontaminate_alike():
    as_record = Record("held-7", EVAL.instruction, EVAL.input, EVAL.reference, {"split": "held_out"})
    for task, task_id in ((EVAL, "sky-1"), (as_record, "held-7")):
        report = validate(GOOD + [SHARES_8], SEEDS, ValidationConfig(), eval_tasks=[task])
        assert report.decontamination.contaminated[0].task_id == task_id
        assert report.decontamination.eval_tasks == 1


def test_the_first_matching_task_is_named():
    other = EvalTask("other", "A different task entirely about cooking rice.", "", "Rinse, boil, rest.")
    index = EvalNgramIndex([other, EVAL, EvalTask("sky-2", EVAL.instruction, "", "x")], 8)
    hit = index.match((SHARES_8["instruction"], "", "x"))
    assert (hit.task_id, hit.task_instruction) == ("sky-1", EVAL.instruction)
    assert index.match(("Nothing in common here at all, not one phrase.",)) is None


# ---- judge scores per record ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "reply, score",
    [
        ("Clear and correct.\nScore: 5", 5),
        ("score:4", 4),  # case and spaces are forgiven
        ("**Score:** 3/5", 3),  # markdown and "/5"
        ("Score: 2 out of 5.", 2),
        ("Score = 1", 1),
        ("Score: 4\nOn reflection the output is wrong.\nScore: 2", 2),  # the last score stands
        ("4", 4),  # a reply that is only the number
        ("**4**\n", 4),
        ("Score: 6", None),
        ("Score: 0", None),
        ("Score: 4.5", None),
        ("Score: 45", None),
        ("I rate it highly.", None),
        ("The answer has 3 errors.", None),
        ("", None),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


class ScriptedTeacher:
    """A Teacher whose reply to a rubric prompt is scripted per record instruction."""

    name = "scripted"

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.calls = []  # (number of prompts, params) per complete() call

    def complete(self, prompts, params):
        self.calls.append((len(prompts), params))
        replies = []
        for prompt in prompts:
            instruction = re.search(r"### Instruction\n(.*)", prompt.messages[-1]["content"]).group(1)
            reply = self.script[instruction]
            replies.append(Completion(text=reply, finish_reason="stop", completion_tokens=len(reply.split())))
        return replies


SCRIPT = {
    GOOD[0]["instruction"]: "Correct and complete.\nScore: 5",
    GOOD[1]["instruction"]: "Fine.\nScore: 4",
    GOOD[2]["instruction"]: "The title does not fit.\nScore: 2",
    GOOD[3]["instruction"]: "I cannot decide.",  # unparsable: kept, not scored
    GOOD[4]["instruction"]: "Incomplete.\nScore: 3",
    GOOD[5]["instruction"]: "Wrong.\nScore: 1",
}


def test_records_below_min_judge_score_are_dropped_and_unparsable_ones_kept_and_counted():
    teacher = ScriptedTeacher(SCRIPT)
    report = validate(GOOD, SEEDS, ValidationConfig(), judge=Judge(teacher, max_new_tokens=64))
    assert report.invalid_records == {"low_judge_score": 2}
    assert report.valid_rows == [GOOD[0], GOOD[1], GOOD[3], GOOD[4]]
    # One call for every record, at temperature 0: a local judge batches them, an endpoint runs them concurrently.
    assert [(n, p.temperature, p.max_new_tokens) for n, p in teacher.calls] == [(6, 0, 64)]
    judged = report.to_dict()["judge"]
    assert judged["distribution"] == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1, "unparsable": 1}
    assert (judged["records_judged"], judged["records_scored"], judged["unparsable"]) == (6, 5, 1)
    assert judged["unparsable_examples"] == ["I cannot decide."]
    assert judged["model"] == "scripted" and judged["rubric_version"] == "record-rubric-v1"
    # The mean is over every scored record, the dropped ones too: (5 + 4 + 2 + 3 + 1) / 5.
    gate = next(g for g in report.gates if g.name == "judge_score_mean")
    assert (gate.value, gate.threshold, gate.passed) == (3.0, 3.5, False)
    assert gate.signature == "judge_score|judge:scripted|rubric:record-rubric-v1|temperature:0|scored:5|unparsable:1"
    assert report.verdict == DELETED and report.failed_gate_names == ["judge_score_mean"]
    assert report.judge_note.startswith("scored by scripted")
    relaxed = validate(GOOD, SEEDS, ValidationConfig(min_judge_score_mean=3.0), judge=Judge(ScriptedTeacher(SCRIPT)))
    assert relaxed.verdict == READY


def test_min_judge_score_is_the_cut():
    report = validate(GOOD, SEEDS, ValidationConfig(min_judge_score=1), judge=Judge(ScriptedTeacher(SCRIPT)))
    assert report.invalid_records == {} and report.judge.dropped_low_score == 0
    report = validate(GOOD, SEEDS, ValidationConfig(min_judge_score=5), judge=Judge(ScriptedTeacher(SCRIPT)))
    assert report.invalid_records == {"low_judge_score": 4}  # only the 5 and the unparsable reply stay


def test_no_record_scored_fails_the_judge_gate_and_keeps_every_record():
    teacher = ScriptedTeacher({r["instruction"]: "Looks fine to me." for r in GOOD})
    report = validate(GOOD, SEEDS, ValidationConfig(), judge=Judge(teacher))
    assert report.valid_records == len(GOOD) and report.judge.unparsable == len(GOOD)
    assert report.judge.mean is None
    gate = next(g for g in report.gates if g.name == "judge_score_mean")
    assert (gate.value, gate.passed) == (0.0, False)


def test_the_judge_sees_only_records_the_cheaper_filters_kept():
    script = {**SCRIPT, SHARES_8["instruction"]: "Score: 5", "Name the biggest planet in our solar system.": "Score: 5"}
    teacher = ScriptedTeacher(script)
    rows = GOOD + [SHARES_8, row("Name the biggest planet in our solar system."), row(""), dict(GOOD[0])]
    report = validate(rows, SEEDS, ValidationConfig(), eval_tasks=[EVAL], judge=Judge(teacher))
    assert report.invalid_records == {"contaminated": 1, "near_duplicate": 1, "empty_instruction": 1, "duplicate": 1,
                                      "low_judge_score": 2}
    assert teacher.calls[0][0] == len(GOOD)


def test_rubric_prompt_shows_the_record_and_asks_for_the_score_line():
    text = record_judge_prompt(GOOD[3]).messages[-1]["content"]
    assert "### Instruction\nReturn the person as JSON with name and age." in text
    assert "### Input\nAna, 31" in text and '### Output\n{"name": "Ana", "age": 31}' in text
    assert text.rstrip().endswith('"Score: N", where N is 1, 2, 3, 4 or 5.')
    assert "### Input\n(none)" in record_judge_prompt(GOOD[0]).messages[-1]["content"]


def test_scoring_no_records_asks_nothing():
    teacher = ScriptedTeacher({})
    assert score_records([], Judge(teacher)).scores == [] and teacher.calls == []


# ---- real judges ------------------------------------------------------------------------------------------

def check_counting(report, n):
    judged = report.judge
    assert judged.records_judged == n
    assert judged.records_scored + judged.unparsable == n
    assert sum(judged.distribution.values()) == n
    low = sum(judged.distribution[str(s)] for s in range(1, judged.min_judge_score))
    assert judged.dropped_low_score == low == report.invalid_records.get("low_judge_score", 0)
    assert report.valid_records == n - low
    gate = next(g for g in report.gates if g.name == "judge_score_mean")
    assert gate.value == (judged.mean if judged.records_scored else 0.0)


@pytest.mark.slow
def test_judge_scores_through_an_openai_compatible_endpoint(server, tiny_model_dir):
    judge = make_judge(base_url=server, model=str(tiny_model_dir), api_key="sk-test", max_new_tokens=24)
    report = validate(GOOD[:3], SEEDS, ValidationConfig(min_valid_records=2), judge=judge)
    check_counting(report, 3)
    assert report.judge.model.startswith(f"{tiny_model_dir} @ 127.0.0.1:")


@pytest.mark.slow
def test_judge_scores_through_a_local_model(tiny_model_dir):
    judge = make_judge(model=str(tiny_model_dir), max_new_tokens=24)
    report = validate(GOOD, SEEDS, ValidationConfig(), judge=judge)
    check_counting(report, len(GOOD))
    assert report.judge.model == f"{tiny_model_dir} (local transformers)"
