"""The standalone commands run without Dagster: an ML engineer can use `frd generate | validate | tune |
evaluate | export | seed upload` on files, in a notebook's environment or a plain container, without an
orchestrator installed or imported (and without paying its import time).

One subprocess imports `frd_assets.cli.standalone`, then runs them one after another, in-process through
`frd_assets.cli.main`, on a tiny model, and after each one checks that no `dagster` module was imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from frd_assets.core.seeds import sample_seed

SAMPLE_SEED = Path(str(sample_seed()))  # the bundled sample seed as a file

# `python -c` this with a command's arguments: the command runs through main() in a fresh interpreter and
# fails if it imported Dagster (test_evaluation.py and test_export.py use it for their commands' own cases).
MAIN_WITHOUT_DAGSTER = (
    "import sys\n"
    "from frd_assets.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]\n"
    "assert not bad, bad\n"
    "sys.exit(rc)\n"
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import frd_assets.cli.standalone
    assert "dagster" not in sys.modules, "importing frd_assets.cli.standalone loaded Dagster"
    from frd_assets.cli import main

    steps = json.loads(sys.argv[1])
    for name, argv in steps:
        rc = main(argv)
        loaded = sorted(m for m in sys.modules if m == "dagster" or m.startswith(("dagster.", "dagster_")))
        print(json.dumps({"step": name, "rc": rc, "dagster_modules": loaded[:5]}), flush=True)
    """
)


def test_the_standalone_module_and_the_parser_import_without_dagster():
    """The property is the module's: importing it, or building the parser over every command, loads no
    Dagster and no GraphQL client (the service commands' module is imported only when one runs)."""
    code = ("import sys, frd_assets.cli.standalone, frd_assets.cli; frd_assets.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'requests') "
            "or m in ('frd_assets.client', 'frd_assets.cli.service', 'frd_assets.definitions')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_demo_flags_default_to_the_demo_sizes_and_lora_n_trials_wins(monkeypatch):
    from frd_assets.cli import build_parser
    from frd_assets.core.settings import DEMO_INSTRUCTIONS, DEMO_N_TRIALS

    monkeypatch.delenv("LORA_N_TRIALS", raising=False)
    args = build_parser().parse_args(["demo"])
    assert (args.trials, args.instructions) == (DEMO_N_TRIALS, DEMO_INSTRUCTIONS) == (3, 12)  # as README says
    monkeypatch.setenv("LORA_N_TRIALS", "5")
    assert build_parser().parse_args(["demo"]).trials == 5


def test_standalone_commands_never_import_dagster(tmp_path, tiny_model_dir):
    rows = [json.loads(line) for line in SAMPLE_SEED.read_text().splitlines() if line.strip()][:12]
    records = tmp_path / "records.jsonl"
    # Seed tasks flattened to instruction/input/output records: what validate and tune read.
    records.write_text("".join(
        json.dumps({"instruction": r["instruction"], "input": r["instances"][0].get("input", ""),
                    "output": r["instances"][0]["output"]}) + "\n" for r in rows))
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    model = str(tiny_model_dir)
    steps = [
        ("seed upload", ["seed", "upload", str(SAMPLE_SEED)]),
        ("generate", ["generate", str(SAMPLE_SEED), "--out", str(tmp_path / "gen.jsonl"), "--num", "2",
                      "--prompts-per-round", "2", "--max-rounds", "1", "--teacher-model", model]),
        ("validate", ["validate", str(records), "--json"]),
        ("tune", ["tune", str(records), "--base-model", model, "--trials", "1", "--epochs", "1",
                  "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out", str(adapter),
                  "--work-dir", str(tmp_path / "trials"), "--pruner", "none"]),
        ("evaluate", ["evaluate", str(adapter), "--tasks", str(SAMPLE_SEED), "--base-model", model, "--limit", "2",
                      "--max-new-tokens", "4"]),
        ("export", ["export", str(adapter), "--merge", "--out", str(merged), "--base-model", model,
                    "--prompts", "2", "--max-new-tokens", "4"]),
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FRD_LOCAL_STORE": str(tmp_path / "store"),
           "FRD_MODEL_CACHE": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1", "FRD_TORCH_THREADS": "1",
           # The code under test, where the suite runs from a checkout other than the installed one.
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(steps)], capture_output=True, text=True,
                         env=env, timeout=900, cwd=tmp_path)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"step"')]
    assert [r["step"] for r in results] == [name for name, _ in steps], out.stdout[-3000:] + out.stderr[-3000:]
    for r in results:
        assert r["dagster_modules"] == [], f"`frd {r['step']}` imported Dagster: {r['dagster_modules']}"
    # validate exits 0 (ready) or 3 (rejected); the others 0.
    assert {r["step"]: r["rc"] for r in results if r["step"] != "validate"} == {
        name: 0 for name, _ in steps if name != "validate"}, out.stderr[-3000:]
    assert results[2]["rc"] in (0, 3)
    assert (merged / "model.safetensors").exists() or list(merged.glob("*.safetensors"))
