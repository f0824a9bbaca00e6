"""The validation report's stored form: `validation_report.json` and validated_dataset's metadata are
`ValidationReport.to_dict()`, so its keys, their order and their values are pinned here against a literal,
and a report from a real run of the gate is checked to have exactly that shape."""

import json
from dataclasses import replace

from frd_assets.core import validation_report as vr
from frd_assets.core.evaluation import Judge
from frd_assets.core.language import SeedLanguage
from frd_assets.core.validation import NO_EVAL_TASKS_NOTE, ValidationConfig, validate
from frd_assets_tests.test_quality import EVAL, GOOD, SCRIPT, SEEDS, SHARES_8, ScriptedTeacher, row

ENGLISH = SeedLanguage("en", "English", 1.0, "py3langid 0.4.0", {"en": 2})


def full_report() -> vr.ValidationReport:
    """A report with all four accounts, each filled in, built by hand so every value is known."""
    return vr.ValidationReport(
        verdict="DELETED",
        records=12,
        valid_records=5,
        invalid_records={"contaminated": 1, "near_duplicate": 2},
        gates=[vr.Gate("valid_records", 5.0, 4.0, True, "record_checks|x"),
               vr.Gate("judge_score_mean", 3.25, 3.5, False, "j")],
        near_duplicates=vr.NearDuplicateAccount(
            threshold=0.7, shingle_size=1, num_perm=128, of_seed=1, within_set=1,
            examples=(vr.NearDuplicateExample(9, "Name the biggest planet.", "", 0.7778, "row",
                                              "Name the largest planet.", "", other_row=0),
                      vr.NearDuplicateExample(11, "Give three tips!", "in", 1.0, "seed", "Give three tips.", "in")),
            signature="near_duplicate|nd"),
        decontamination=vr.DecontaminationAccount(
            ngram=8, eval_tasks=1,
            contaminated=(vr.ContaminatedRecord(6, None, "Why is the sky blue?", "sky-1", "Explain the blue sky.",
                                             "why the sky looks blue on a clear"),),
            signature="decontamination|dc"),
        valid_rows=[{"instruction": "never stored"}],
        judge=vr.JudgeAccount(model="scripted", rubric_version="record-rubric-v1", records_judged=7, records_scored=6,
                           unparsable=1, distribution={"1": 1, "2": 1, "3": 1, "4": 2, "5": 1, "unparsable": 1},
                           mean=3.25, min_judge_score=3, dropped_low_score=2,
                           unparsable_examples=("I cannot decide.",)),
        judge_note="scored by scripted on rubric record-rubric-v1",
        language=vr.LanguageAccount(ENGLISH, checked=11, off_language=1, off_language_share=0.0909,
                                 signature="off_language|lang"),
    )


EXPECTED = {
    "verdict": "DELETED",
    "records": 12,
    "valid_records": 5,
    "invalid_records": {"contaminated": 1, "near_duplicate": 2},
    "gates": [
        {"name": "valid_records", "value": 5.0, "threshold": 4.0, "passed": True, "signature": "record_checks|x"},
        {"name": "judge_score_mean", "value": 3.25, "threshold": 3.5, "passed": False, "signature": "j"},
    ],
    "failed_gates": ["judge_score_mean"],
    "near_duplicates": {
        "threshold": 0.7, "shingle_size": 1, "num_perm": 128, "of_seed": 1, "within_set": 1,
        "examples": [
            {"row": 9, "instruction": "Name the biggest planet.", "input": "", "jaccard": 0.7778,
             "duplicate_of": "row", "other_row": 0, "other_instruction": "Name the largest planet.",
             "other_input": ""},
            {"row": 11, "instruction": "Give three tips!", "input": "in", "jaccard": 1.0, "duplicate_of": "seed",
             "other_instruction": "Give three tips.", "other_input": "in"},
        ],
        "signature": "near_duplicate|nd",
    },
    "decontamination": {
        "ngram": 8, "eval_tasks": 1,
        "contaminated": [{"row": 6, "id": None, "instruction": "Why is the sky blue?", "task_id": "sky-1",
                          "task_instruction": "Explain the blue sky.", "ngram": "why the sky looks blue on a clear"}],
        "signature": "decontamination|dc",
    },
    "judge": {
        "model": "scripted", "rubric_version": "record-rubric-v1", "temperature": 0, "records_judged": 7,
        "records_scored": 6, "unparsable": 1,
        "distribution": {"1": 1, "2": 1, "3": 1, "4": 2, "5": 1, "unparsable": 1}, "mean": 3.25,
        "min_judge_score": 3, "dropped_low_score": 2, "unparsable_examples": ["I cannot decide."],
    },
    "judge_note": "scored by scripted on rubric record-rubric-v1",
    "language": {
        "language": "en", "language_name": "English", "language_share": 1.0, "language_detector": "py3langid 0.4.0",
        "language_counts": {"en": 2}, "language_note": "English (en): 100% of 2 instructions",
        "checked": 11, "off_language": 1, "off_language_share": 0.0909, "signature": "off_language|lang",
    },
}


def shape(value):
    """The keys at every level, in order, with list items' shapes; leaves reduced to their type's name."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_the_stored_form_is_pinned_keys_order_and_values():
    report = full_report()
    assert report.to_dict() == EXPECTED
    # Key order too: Dagster shows the metadata as given (to_json sorts, so the file does not depend on it).
    assert json.dumps(report.to_dict()) == json.dumps(EXPECTED)
    assert json.loads(report.to_json()) == EXPECTED
    assert report.failed_gate_names == ["judge_score_mean"]


def test_absent_parts_are_stored_as_before_null_judge_empty_language_and_a_note_when_nothing_was_checked():
    report = replace(full_report(), judge=None, judge_note=vr.NO_JUDGE_NOTE, language=None,
                     decontamination=vr.DecontaminationAccount(8, 0, (), "decontamination|none",
                                                               note=NO_EVAL_TASKS_NOTE))
    d = report.to_dict()
    assert (d["judge"], d["judge_note"], d["language"]) == (None, vr.NO_JUDGE_NOTE, {})
    assert d["decontamination"] == {"ngram": 8, "eval_tasks": 0, "contaminated": [],
                                    "signature": "decontamination|none", "note": NO_EVAL_TASKS_NOTE}


def test_a_real_run_with_all_four_accounts_has_the_pinned_shape():
    """The gate's own output, not a hand-built report: every key the literal has, in the same order, with
    values of the same types, and nothing more."""
    near_row = row("Name the biggest planet in our solar system.")  # one word from GOOD[0]
    rows = GOOD + [SHARES_8, near_row, row("Give three tips for staying healthy!")]
    report = validate(rows, SEEDS, ValidationConfig(), eval_tasks=[EVAL], judge=Judge(ScriptedTeacher(SCRIPT)))
    d = report.to_dict()
    assert report.judge is not None and report.language is not None and report.decontamination.contaminated
    assert {e.duplicate_of for e in report.near_duplicates.examples} == {"row", "seed"}
    # The hand-built examples are listed row-then-seed; the real run finds them in the same order.
    assert [e.duplicate_of for e in report.near_duplicates.examples] == ["row", "seed"]
    expected = shape(EXPECTED)
    # vr.Gate values are floats in a real run, and the gates are every gate the run measured.
    expected["gates"] = [{"name": "str", "value": "float", "threshold": "float", "passed": "bool", "signature": "str"}
                         for _ in d["gates"]]
    expected["failed_gates"] = ["str" for _ in d["failed_gates"]]
    expected["invalid_records"] = {k: "int" for k in d["invalid_records"]}
    expected["language"]["language_counts"] = {k: "int" for k in d["language"]["language_counts"]}
    assert shape(d) == expected
    assert d["failed_gates"] == report.failed_gate_names == [g.name for g in report.gates if not g.passed]
