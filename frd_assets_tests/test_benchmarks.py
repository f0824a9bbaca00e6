"""Every benchmark ends with one JSON line of its figures: read from each source, and from small real runs."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py")
                    if 'if __name__ == "__main__":' in p.read_text())  # runnable: not synthetic.py, __init__.py


def test_the_benchmarks_are_found():
    assert {"evaluation", "novelty_filter", "seed_parsing", "teacher_throughput", "tuning",
            "validation_throughput"} <= {p.stem for p in BENCHMARKS}


def _is_call(node: ast.AST, owner: str | None, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if owner is None:
        return isinstance(func, ast.Name) and func.id == name
    return isinstance(func, ast.Attribute) and func.attr == name and isinstance(func.value, ast.Name) \
        and func.value.id == owner


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_main_ends_by_printing_one_json_line(path):
    """main's last statement is print(json.dumps(...)) without indent, so the last line of output is the one
    JSON object; the docstring's Run line names the module, so the command a reader copies is the right one."""
    tree = ast.parse(path.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{path.name}: no top-level main()"
    last = mains[0].body[-1]
    assert isinstance(last, ast.Expr) and _is_call(last.value, None, "print"), \
        f"{path.name}: main() must end with print(json.dumps(figures)), not line {last.lineno}"
    (dumped,) = last.value.args
    assert _is_call(dumped, "json", "dumps"), f"{path.name} line {last.lineno}: the last print is not json.dumps"
    assert not {k.arg for k in dumped.keywords} & {"indent", "separators"}, \
        f"{path.name} line {last.lineno}: json.dumps with indent prints more than one line"
    assert f".venv/bin/python -m benchmarks.{path.stem}" in (ast.get_docstring(tree) or ""), \
        f"{path.name}: the docstring's Run line does not name benchmarks.{path.stem}"


def _run(module: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    objects = [line for line in lines if line.startswith("{")]
    assert objects == lines[-1:], f"benchmarks.{module}: the JSON object is not the one last line:\n{out.stdout}"
    figures = json.loads(lines[-1])
    assert figures["benchmark"] == module
    numbers = [v for v in figures.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numbers and all(math.isfinite(v) for v in numbers), figures
    return figures


# Small sizes: each run takes seconds, and proves the size option and the JSON line on the real code path.
def test_novelty_filter_small_run():
    figures = _run("novelty_filter", "--n", "60")
    assert figures["candidates"] == 60 == figures["kept"] + figures["rejected"]
    assert figures["identical_decisions"] is True


def test_seed_parsing_small_run():
    figures = _run("seed_parsing", "--n", "300")
    assert figures["records_jsonl"] == figures["records_array"] == 300
    assert figures["identical_records"] is True


def test_validation_throughput_small_run():
    figures = _run("validation_throughput", "--records", "300", "--baseline-records", "20")
    assert figures["records"] == 300 and figures["baseline_records"] == 20
    assert figures["rouge_l_identical"] is True


def test_language_id_small_run():
    """py3langid only: lingua's models take a gigabyte and most of a minute to load."""
    figures = _run("language_id", "--detectors", "py3langid")
    assert figures["instructions"] == 160 and figures["py3langid_accuracy"] >= 0.95
    assert figures["py3langid_false_drops"] == 0


@pytest.mark.slow
def test_teacher_throughput_small_run(tiny_model_dir):
    figures = _run("teacher_throughput", "--model", str(tiny_model_dir), "--max-new-tokens", "4")
    assert figures["prompts"] == 8 and figures["one_at_a_time"]["tokens"] > 0


@pytest.mark.slow
def test_evaluation_small_run(tiny_model_dir):
    figures = _run("evaluation", "--model", str(tiny_model_dir), "--tasks", "2", "--max-new-tokens", "4")
    assert figures["tasks"] == 2 and figures["answers"] == 4


@pytest.mark.slow  # two webservers and a SQLite event shard per run: a minute or two on a shared machine
def test_partitions_scale_small_run():
    """The whole benchmark on SQLite at 60 datasets against 20: it builds both instances through Dagster's API,
    runs the real sensors, client and UI queries against a real webserver, and checks each answer."""
    figures = _run("partitions_scale", "--datasets", "60", "--baseline", "20", "--backends", "sqlite",
                   "--repeats", "1", "--new-uploads", "50")
    assert figures["datasets"] == 60 and figures["baseline_datasets"] == 20 and figures["new_uploads"] == 50
    assert figures["sqlite_runs"] == 12 + 1  # a prepare run per seeded dataset, an adapter run per adapted one
    assert figures["sqlite_events"] == 12 + 2 * 6 + 2 * 1
    for op in ("seed_tick_s", "seed_tick_sweep_s", "verdict_tick_s", "status_s", "launch_s", "add_partition_s",
               "asset_partition_page_s", "asset_partitions_overview_s"):
        assert figures[f"sqlite_{op}"] > 0 and figures[f"sqlite_baseline_{op}"] > 0
        ratio = figures[f"sqlite_{op}"] / figures[f"sqlite_baseline_{op}"]
        assert figures[f"sqlite_ratio_{op}"] == pytest.approx(ratio, rel=0.05, abs=0.02)
    assert "postgres_seed_tick_s" not in figures


def test_gpu_trainer_runs_its_tiny_config_without_cuda():
    """Without CUDA the benchmark runs a tiny Llama through the real trial loop: bf16/fp32 and NF4 bases, with
    and without checkpointing, each with its estimate and measured peak, and the ratios against baselines."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("with CUDA the benchmark runs the 1B and 8B shapes: minutes, not a test")
    figures = _run("gpu_trainer", "--steps", "2", "--seq", "64")
    assert figures["failed"] == [] and figures["device"] == "cpu"
    for q in ("none", "nf4"):
        for c in ("ckpt", "nockpt"):
            assert figures[f"tiny_{q}_{c}_tokens_per_s"] > 0
            assert figures[f"tiny_{q}_{c}_peak_mb"] > 0 and figures[f"tiny_{q}_{c}_estimate_mb"] > 0
        assert figures[f"tiny_{q}_ckpt_memory_ratio"] > 0 and figures[f"tiny_{q}_ckpt_speed_ratio"] > 0
    assert figures["tiny_nf4_vs_unquantized_memory_ratio_ckpt"] > 0
