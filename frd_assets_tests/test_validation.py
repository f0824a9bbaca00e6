import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from frd_assets.core.metrics.bleu import corpus_bleu, self_bleu
from frd_assets.core.validation import DELETED, READY, ValidationConfig, validate

SEEDS = [
    "Give three tips for staying healthy.",
    "Translate the sentence into French.",
    "Summarize the paragraph in one sentence.",
]
GOOD = [
    {"instruction": "Name the largest planet in our solar system.", "input": "", "output": "Jupiter."},
    {"instruction": "Convert 3 kilometres into metres.", "input": "", "output": "3000 metres."},
    {"instruction": "Suggest a title for a novel about a lighthouse keeper.", "input": "", "output": "The Last Light"},
    {
        "instruction": "Return the person as JSON with name and age.",
        "input": "Ana, 31",
        "output": '{"name": "Ana", "age": 31}',
    },
    {"instruction": "Explain what photosynthesis produces.", "input": "", "output": "Sugar and oxygen."},
]


def gate(report, name):
    return next(g for g in report.gates if g.name == name)


def test_good_set_is_ready():
    report = validate(GOOD, SEEDS, ValidationConfig())
    assert report.verdict == READY, report.to_json()
    assert report.valid_records == 5 and report.invalid_records == {}


def test_per_record_problems_are_counted_by_reason_and_dropped():
    bad = [
        "not an object",
        {"instruction": "x y z", "output": "o"},
        {"instruction": "x y z", "input": 3, "output": "o"},
        {"instruction": " ", "input": "", "output": "o"},
        {"instruction": "a b c", "input": "", "output": ""},
        {"instruction": "Give the answer as JSON please.", "input": "", "output": "{broken"},
        {"instruction": "List things.", "input": "", "output": "[1, 2"},
        GOOD[0],
    ]
    report = validate(GOOD + bad, SEEDS, ValidationConfig())
    assert report.invalid_records == {
        "not_an_object": 1,
        "missing_input": 1,
        "input_not_a_string": 1,
        "empty_instruction": 1,
        "empty_output": 1,
        "output_not_valid_json": 2,
        "duplicate": 1,
    }
    assert report.valid_records == 5 and len(report.valid_rows) == 5


def test_copying_the_seeds_is_dropped_as_near_duplicate():
    copies = [{"instruction": s, "input": "", "output": "ok"} for s in SEEDS] * 2
    copies = [dict(r, input=str(i)) for i, r in enumerate(copies)]
    report = validate(copies, SEEDS, ValidationConfig())
    assert report.verdict == DELETED and report.valid_records == 0
    assert report.invalid_records == {"near_duplicate": 6}
    assert report.near_duplicates.of_seed == 6 and report.near_duplicates.within_set == 0


# near_duplicate_threshold 1.0: only identical shingle sets are near-duplicates, so records close to the seed
# or to each other reach the corpus gates, which must still catch them.
ONLY_IDENTICAL = {"near_duplicate_threshold": 1.0}


def test_copying_the_seeds_fails_novelty_gates():
    copies = [{"instruction": s, "input": "", "output": "ok"} for s in SEEDS] * 2
    copies = [dict(r, input=str(i)) for i, r in enumerate(copies)]
    report = validate(copies, SEEDS, ValidationConfig(**ONLY_IDENTICAL))
    assert report.verdict == DELETED
    assert {"seed_rouge_l_mean", "seed_bleu"} <= {g.name for g in report.failed_gates}
    assert gate(report, "seed_rouge_l_mean").value == pytest.approx(1.0)


REPETITIVE = [
    {"instruction": f"Describe the weather in the city number {i} today.", "input": "", "output": "Sunny."}
    for i in range(10)
]


def test_repetitive_set_is_cut_to_its_first_record():
    report = validate(REPETITIVE, SEEDS, ValidationConfig())
    assert report.valid_rows == REPETITIVE[:1]  # one word apart: Jaccard 8/10, the first of the cluster stays
    assert report.invalid_records == {"near_duplicate": 9}
    assert report.near_duplicates.within_set == 9 and report.verdict == DELETED


def test_repetitive_set_fails_diversity_gates():
    report = validate(REPETITIVE, SEEDS, ValidationConfig(**ONLY_IDENTICAL))
    assert report.verdict == DELETED
    assert "pairwise_rouge_l_mean" in [g.name for g in report.failed_gates]


def test_too_few_or_too_many_invalid_records_fail():
    assert validate(GOOD[:2], SEEDS, ValidationConfig()).verdict == DELETED
    junk = [{"instruction": "", "input": "", "output": ""}] * 10
    report = validate(GOOD + junk, SEEDS, ValidationConfig())
    assert report.verdict == DELETED and report.failed_gate_names == ["valid_share"]


def test_report_carries_signatures():
    report = validate(GOOD, SEEDS, ValidationConfig())
    assert gate(report, "seed_bleu").signature.startswith("nrefs:1|case:mixed")
    assert "rouge_score" in gate(report, "seed_rouge_l_mean").signature
    assert report.to_dict()["failed_gates"] == []
    # The kept count depends on every filter, so its signature names each with its settings.
    kept = gate(report, "valid_records").signature
    assert "record_checks|" in kept and "decontamination|word-8-gram" in kept
    assert "near_duplicate|minhash:datasketch-2." in kept and "jaccard>=0.7|confirmed:exact" in kept


def test_without_judge_or_evaluation_tasks_the_report_says_so():
    d = validate(GOOD, SEEDS, ValidationConfig()).to_dict()
    assert d["judge"] is None and d["judge_note"].startswith("no judge given")
    assert "judge_score_mean" not in [g["name"] for g in d["gates"]]
    assert d["decontamination"]["eval_tasks"] == 0 and d["decontamination"]["contaminated"] == []
    assert d["decontamination"]["note"].startswith("no evaluation tasks given")


def test_seed_tasks_may_be_rows_records_or_instructions():
    from frd_assets.core.records import Record

    row = {"instruction": "Translate the sentence into French.", "input": "The cat sleeps on the sofa.",
           "output": "Le chat dort sur le canapé."}
    as_row = [{"id": "s1", **row}]
    as_record = [Record("s1", row["instruction"], row["input"], row["output"])]
    for seed in (as_row, as_record):
        report = validate(GOOD + [dict(row, output="Le chat dort.")], seed, ValidationConfig())
        assert report.invalid_records == {"near_duplicate": 1}  # an exact copy of a seed task, input included
    # A bare instruction has no input: the same instruction with an input is another task.
    assert validate(GOOD + [row], [row["instruction"]], ValidationConfig()).invalid_records == {}
    with pytest.raises(TypeError, match="a seed task must be an instruction string, a Record or a row"):
        validate(GOOD, [42], ValidationConfig())


def test_bleu_metrics_match_sacrebleu():
    hyps, refs = [g["instruction"] for g in GOOD], SEEDS + SEEDS[:2]
    assert corpus_bleu(hyps, refs).value == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    texts = [g["instruction"] for g in GOOD]
    expected = sum(
        BLEU(effective_order=True).sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)
    ) / len(texts)
    assert self_bleu(texts).value == pytest.approx(expected)


def test_seed_rouge_gate_uses_rouge_score_definition():
    report = validate(GOOD, SEEDS, ValidationConfig())
    scorer = RougeScorer(["rougeL"])
    expected = sum(max(scorer.score(s, g["instruction"])["rougeL"].fmeasure for s in SEEDS) for g in GOOD) / 5
    assert gate(report, "seed_rouge_l_mean").value == pytest.approx(expected)


def test_config_rejects_out_of_range_thresholds():
    with pytest.raises(ValueError, match="max_seed_rouge_l must be in \\[0, 1\\], got 2"):
        ValidationConfig(max_seed_rouge_l=2)


# (field, value, message after "validation config: "): issue 10 found the first three accepted.
BAD_CONFIG_VALUES = [
    ("min_valid_records", float("inf"), "min_valid_records must be an integer in [2, 10000000], got inf"),
    ("max_output_chars", -5, "max_output_chars must be in [1, 10000000], got -5"),
    ("seed", "abc", "seed must be an integer in [0, 4294967295], got 'abc'"),
    ("self_bleu_sample", -1, "self_bleu_sample must be in [2, 10000], got -1"),
    ("self_bleu_sample", 0, "self_bleu_sample must be in [2, 10000], got 0"),
    ("self_bleu_sample", 4.0, "self_bleu_sample must be an integer in [2, 10000], got 4.0"),
    ("min_valid_records", True, "min_valid_records must be an integer in [2, 10000000], got True"),
    ("min_valid_share", float("nan"), "min_valid_share must be a finite number in [0, 1], got nan"),
    ("max_self_bleu", "60", "max_self_bleu must be a finite number in [0, 100], got '60'"),
    ("max_seed_bleu", 100.5, "max_seed_bleu must be in [0, 100], got 100.5"),
    # issue 12's fields
    ("near_duplicate_threshold", 0, "near_duplicate_threshold must be in (0, 1], got 0"),
    ("near_duplicate_threshold", 1.5, "near_duplicate_threshold must be in (0, 1], got 1.5"),
    ("shingle_size", 0, "shingle_size must be in [1, 8], got 0"),
    ("shingle_size", 2.0, "shingle_size must be an integer in [1, 8], got 2.0"),
    ("num_perm", 8, "num_perm must be in [16, 1024], got 8"),
    ("decontamination_ngram", 3, "decontamination_ngram must be in [4, 64], got 3"),
    ("min_judge_score", 6, "min_judge_score must be in [1, 5], got 6"),
    ("min_judge_score", 2.5, "min_judge_score must be an integer in [1, 5], got 2.5"),
    ("min_judge_score_mean", 0.5, "min_judge_score_mean must be in [1, 5], got 0.5"),
    ("min_judge_score_mean", float("inf"), "min_judge_score_mean must be a finite number in [1, 5], got inf"),
]


@pytest.mark.parametrize("field, value, message", BAD_CONFIG_VALUES)
def test_config_rejects_wrong_types_and_ranges_naming_config_field_value_and_range(field, value, message):
    with pytest.raises(ValueError) as err:
        ValidationConfig(**{field: value})
    assert str(err.value) == f"validation config: {message}"


def test_config_stores_an_int_given_for_a_float_field_as_a_float():
    config = ValidationConfig(max_seed_bleu=40)
    assert isinstance(config.max_seed_bleu, float) and config == ValidationConfig(max_seed_bleu=40.0)


@pytest.mark.parametrize(
    "gate_name, strict",
    [
        ("valid_records", {"min_valid_records": 6}),
        ("valid_share", {"min_valid_share": 1.0}),
        ("seed_rouge_l_mean", {"max_seed_rouge_l": 0.0}),
        ("seed_bleu", {"max_seed_bleu": 0.0}),
        ("self_bleu", {"max_self_bleu": 0.0}),
        ("pairwise_rouge_l_mean", {"max_pairwise_rouge_l": 0.0}),
    ],
)
def test_each_gate_passes_by_default_and_fails_alone_when_its_threshold_is_tightened(gate_name, strict):
    rows = GOOD + [{"instruction": "", "input": "", "output": "x"}]  # one invalid record: share 5/6
    assert gate(validate(rows, SEEDS, ValidationConfig()), gate_name).passed
    report = validate(rows, SEEDS, ValidationConfig(**strict))
    assert report.verdict == DELETED
    assert [g.name for g in report.failed_gates] == [gate_name]


# (hypotheses, references, where the case comes from): checked against sacrebleu's own corpus_score.
BLEU_CASES = [
    (["the cat sat on the mat"], ["the cat sat on the mat"], "identical: 100"),
    (["the cat"], ["the cat sat on the mat"], "short hypothesis: brevity penalty"),
    (["Der Hund bellt."], ["The dog barks."], "no overlap: 0"),
    (["It is a guide to action which ensures that the military always obeys the commands of the party."],
     ["It is a guide to action that ensures that the military will forever heed Party commands."],
     "Papineni et al. 2002, example 1"),
]


@pytest.mark.parametrize("hyps, refs, source", BLEU_CASES)
def test_corpus_bleu_case_table(hyps, refs, source):
    assert corpus_bleu(hyps, refs).value == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)


def test_read_records_counts_unparsable_lines_and_never_raises():
    from frd_assets.core.validation import read_records

    data = b'{"instruction": "a"}\n{"instruction": \n\xff\xfe\n\n[1, 2]\n"text"\n' + b"[" * 100000 + b"\n"
    rows, unreadable = read_records(data)
    assert rows == [{"instruction": "a"}, [1, 2], "text"]
    assert unreadable == {"invalid_json": 2, "not_utf8": 1}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_records_counts_a_line_using_nan_or_infinity_as_invalid_json(constant):
    from frd_assets.core.validation import read_records

    data = b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "score": %s}\n' % constant.encode()
    rows, unreadable = read_records(data)
    assert rows == [{"instruction": "a", "input": "", "output": "b"}]
    assert unreadable == {"invalid_json": 1}


@pytest.mark.parametrize(
    "instruction, output, problem",
    [
        ("Give the score as JSON.", "NaN", "output_not_valid_json"),
        ("Give the score as JSON.", "Infinity", "output_not_valid_json"),
        ("Give the score as JSON.", "-Infinity", "output_not_valid_json"),
        ("Return the stats.", '{"mean": NaN}', "output_not_valid_json"),
        ("Return the stats.", "[" * 5000, "output_not_valid_json"),  # too deep for the parser: invalid, no crash
        ("Give the score as JSON.", "null", None),
        ("Return the stats.", '{"mean": 1.5e300}', None),
        ("Name a number that is not a number.", "NaN", None),  # not meant as JSON: plain text
    ],
)
def test_output_meant_as_json_must_be_strict_json(instruction, output, problem):
    from frd_assets.core.metrics.json_checks import record_problem

    row = {"instruction": instruction, "input": "", "output": output}
    assert record_problem(row, max_instruction_words=150, max_output_chars=8000) == problem
