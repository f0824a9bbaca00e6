"""`frd validate` as a user runs it: exit codes, the JSON report, and malformed files without tracebacks."""

import json
import os
import subprocess
import sys

import pytest

GOOD = [
    {"instruction": "Name the largest planet in our solar system.", "input": "", "output": "Jupiter."},
    {"instruction": "Convert 3 kilometres into metres.", "input": "", "output": "3000 metres."},
    {"instruction": "Suggest a title for a novel about a lighthouse keeper.", "input": "", "output": "The Last Light"},
    {"instruction": "Return the person as JSON with name and age.", "input": "Ana, 31", "output": '{"name": "Ana"}'},
    {"instruction": "Explain what photosynthesis produces.", "input": "", "output": "Sugar and oxygen."},
]


def frd_validate(*args, env=None):
    # A judge set in the developer's shell would change every verdict below: the tests set their own.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JUDGE_")}
    return subprocess.run([sys.executable, "-m", "frd_assets.cli", "validate", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ready_set_exits_0_and_prints_the_json_report(tmp_path, sample_seed_bytes):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    out = frd_validate(write_jsonl(tmp_path / "d.jsonl", GOOD), "--seed", seed, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "READY_FOR_FINE_TUNING"
    assert (report["records"], report["valid_records"], report["invalid_records"]) == (5, 5, {})
    assert {g["name"] for g in report["gates"]} == {"valid_records", "valid_share", "seed_rouge_l_mean",
                                                   "seed_bleu", "self_bleu", "pairwise_rouge_l_mean"}
    assert all({"name", "value", "threshold", "passed", "signature"} <= set(g) for g in report["gates"])


def test_deleted_set_exits_3_with_a_readable_report(tmp_path):
    out = frd_validate(write_jsonl(tmp_path / "d.jsonl", GOOD), "--config", '{"max_self_bleu": 0}')
    assert out.returncode == 3
    assert "DELETED" in out.stdout and "FAIL  self_bleu" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["missing.jsonl"], "No such file"),
    (["DATA", "--seed", "bad_seed.jsonl"], "bad_seed.jsonl line 1"),
    (["DATA", "--config", '{"max_self_bleu": 500}'], "max_self_bleu must be in [0, 100]"),
    (["DATA", "--config", '{"no_such_threshold": 1}'], "no_such_threshold"),
    (["DATA", "--config", '{"decontamination_ngram": 2}'], "decontamination_ngram must be in [4, 64], got 2"),
    (["DATA", "--decontaminate", "missing.jsonl"], "No such file"),
    (["DATA", "--decontaminate", "bad_seed.jsonl"], "bad_seed.jsonl line 1"),
    (["DATA", "--decontaminate", "no_refs.jsonl"], "no_refs.jsonl: no task has a reference output (1 skipped)"),
    (["DATA", "--decontaminate", "tasks.jsonl", "--decontaminate", "binary.jsonl"], "binary.jsonl line 1: not UTF-8"),
    (["DATA", "--judge-url", "http://127.0.0.1:9/v1"], "needs the name of the model it serves: set JUDGE_MODEL"),
    (["DATA", "--judge-model", "no-such-judge-model"], "no-such-judge-model"),
])
def test_unusable_input_exits_2(tmp_path, args, fragment):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD)
    (tmp_path / "bad_seed.jsonl").write_text("{not json\n")
    write_jsonl(tmp_path / "no_refs.jsonl", [{"instruction": "Say hi.", "input": "", "output": ""}])
    write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe{}\n")
    args = [str(data) if a == "DATA" else (str(tmp_path / a) if a.endswith(".jsonl") else a) for a in args]
    out = frd_validate(*args)
    assert out.returncode == 2, out.stdout
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# Evaluation tasks in two seed formats: Alpaca JSONL and a Self-Instruct JSON array.
TASKS = [{"id": "sky-1", "instruction": "Explain why the sky looks blue on a clear summer afternoon.", "input": "",
          "output": "Sunlight is scattered by air molecules, and blue light scatters the most."}]
SELF_INSTRUCT_TASKS = [{"id": "bake-1",
                        "instruction": "Give the oven temperature for baking a loaf of sourdough bread.",
                        "instances": [{"input": "", "output": "About 230 degrees Celsius."}]}]
CONTAMINATED = [
    {"instruction": "Can you say why the sky looks blue on a clear day?", "input": "", "output": "Rayleigh."},
    # 6 words of the instruction, then the reference answer: 9 in a row across the two fields
    {"instruction": "What oven temperature suits baking a loaf of sourdough bread?", "input": "",
     "output": "About 230 degrees Celsius."},
]


def test_decontaminate_drops_records_sharing_an_8_gram_with_any_given_file(tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    array = tmp_path / "self_instruct.json"
    array.write_text(json.dumps(SELF_INSTRUCT_TASKS))
    data = write_jsonl(tmp_path / "d.jsonl", GOOD + CONTAMINATED)
    out = frd_validate(data, "--decontaminate", tasks, "--decontaminate", array, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["invalid_records"] == {"contaminated": 2} and report["valid_records"] == 5
    assert report["decontamination"]["eval_tasks"] == 2
    assert [(c["row"], c["task_id"], c["ngram"]) for c in report["decontamination"]["contaminated"]] == [
        (5, "sky-1", "why the sky looks blue on a clear"),
        (6, "bake-1", "baking a loaf of sourdough bread about 230"),
    ]
    assert report["judge"] is None and report["judge_note"].startswith("no judge given")


def test_text_report_names_contamination_and_the_missing_judge(tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    out = frd_validate(write_jsonl(tmp_path / "d.jsonl", GOOD + CONTAMINATED[:1]), "--decontaminate", tasks)
    assert out.returncode == 0, out.stderr
    assert "contaminated: 1" in out.stdout
    assert "decontamination: 1 records share a word 8-gram with the 1 evaluation tasks" in out.stdout
    assert "task sky-1" in out.stdout
    assert "judge: no judge given" in out.stdout and "--judge-model" in out.stdout


@pytest.mark.slow
def test_judge_model_scores_each_record_and_counts_unparsable_replies(tmp_path, tiny_model_dir):
    out = frd_validate(write_jsonl(tmp_path / "d.jsonl", GOOD), "--judge-model", tiny_model_dir, "--json",
                       "--config", '{"min_valid_records": 2}')
    assert out.returncode in (0, 3) and "Traceback" not in out.stderr, out.stderr
    report = json.loads(out.stdout)
    judge = report["judge"]
    assert judge["model"] == f"{tiny_model_dir} (local transformers)"
    assert judge["records_judged"] == 5 and judge["records_scored"] + judge["unparsable"] == 5
    assert sum(judge["distribution"].values()) == 5
    assert report["invalid_records"].get("low_judge_score", 0) == judge["dropped_low_score"]
    assert "judge_score_mean" in [g["name"] for g in report["gates"]]


@pytest.mark.slow
def test_the_judge_model_defaults_to_judge_model_from_the_environment(tmp_path, tiny_model_dir):
    out = frd_validate(write_jsonl(tmp_path / "d.jsonl", GOOD[:3]), "--config", '{"min_valid_records": 2}',
                       env={"JUDGE_MODEL": str(tiny_model_dir)})
    assert out.returncode in (0, 3) and "Traceback" not in out.stderr, out.stderr
    assert f"judge: {tiny_model_dir} (local transformers), " in out.stdout
    assert "judge_score_mean" in out.stdout


def test_malformed_lines_are_counted_by_reason(tmp_path):
    path = tmp_path / "malformed.jsonl"
    lines = [json.dumps(r).encode() for r in GOOD] + [
        b'{"instruction": "truncated", "inp',
        json.dumps({"instruction": 5, "input": "", "output": "x"}).encode(),
        json.dumps({"instruction": "no output here", "input": ""}).encode(),
        b'{"instruction": "caf\xe9 au lait", "input": "", "output": "x"}',
        b"[1, 2, 3]",
        json.dumps({"instruction": "A very long answer follows.", "input": "", "output": "x" * 10_000_000}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = frd_validate(path, "--json")
    assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    assert report["records"] == 11 and report["valid_records"] == 5
    assert report["invalid_records"] == {"invalid_json": 1, "instruction_not_a_string": 1, "missing_output": 1,
                                         "not_utf8": 1, "not_an_object": 1, "output_too_long": 1}
    # 5 of 11 valid is below the default valid share of 0.5.
    assert out.returncode == 3 and report["failed_gates"] == ["valid_share"]


def test_an_empty_file_is_deleted_not_a_crash(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    out = frd_validate(path, "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 3 and "Traceback" not in out.stderr
    assert (report["records"], report["valid_records"], report["invalid_records"]) == (0, 0, {})
    assert report["failed_gates"] == ["valid_records", "valid_share"]
