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


def frd_validate(*args):
    return subprocess.run([sys.executable, "-m", "frd_assets.cli", "validate", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env={**os.environ})


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
])
def test_unusable_input_exits_2(tmp_path, args, fragment):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD)
    (tmp_path / "bad_seed.jsonl").write_text("{not json\n")
    args = [str(data) if a == "DATA" else (str(tmp_path / a) if a.endswith(".jsonl") else a) for a in args]
    out = frd_validate(*args)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr


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
