"""Issue 18, defects 7 and 9 (the CLI's share): numeric flags and run-config fields beyond a bound, and more
evaluation tasks than the stated limit, are refused with one line before any work.

The bounds live once, in the core config rules (core/config_checks.py and each config's rule table); the
CLI flags and the Dagster run config both go through them. On the main of 2026-12-07
`frd generate --prompts-per-round 1000000000` ran until MemoryError and `frd evaluate` started on 200,000
tasks without a word.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from frd_assets.cli import main
from frd_assets.core.config_checks import ConfigError, Integer, check_fields
from frd_assets.core.evaluation import EvaluationConfig
from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.held_out import HeldOutConfig
from frd_assets.core.lora.search import SearchSettings, SearchSpace
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig
from frd_assets.core.seeds import sample_seed
from frd_assets.core.validation import ValidationConfig

HUGE_INT, HUGE_FLOAT = 10**12, 1e12  # above every bound, seeds' 2**32 included


def _numeric_fields(config) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if any(t in str(f.type) for t in ("int", "float"))]


CONFIGS = [GenerationConfig(), ValidationConfig(), EvaluationConfig(), TrainingConfig(), SearchSpace(),
           SearchSettings(), HeldOutConfig(), LoraHyperparams(8, 16, 1e-3)]
CASES = [(c, f.name, HUGE_FLOAT if "float" in str(f.type) else HUGE_INT) for c in CONFIGS for f in _numeric_fields(c)]


@pytest.mark.parametrize("config, field, value", CASES, ids=[f"{type(c).__name__}.{n}" for c, n, _ in CASES])
def test_every_numeric_config_field_has_an_upper_bound(config, field, value):
    with pytest.raises(ConfigError, match=rf": {field} must be ") as refused:
        dataclasses.replace(config, **{field: value})
    assert refused.value.field == field


def test_a_config_rule_without_an_upper_bound_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Unbounded:
        rounds: int = 1

        def __post_init__(self):
            check_fields(self, "unbounded config", {"rounds": Integer(1)})

    with pytest.raises(TypeError, match=r"every numeric field needs an upper bound; none for \['rounds'\]"):
        Unbounded()


def test_the_dagster_run_config_refuses_the_same_values_with_the_same_rule():
    from pydantic import ValidationError

    from frd_assets.defs.config import EvaluationRunConfig, GenerationRunConfig, LoraRunConfig

    for make, message in (
        (lambda: GenerationRunConfig(prompts_per_round=10**9), "prompts_per_round must be in [1, 10000]"),
        (lambda: GenerationRunConfig(max_new_tokens_instance=10**9), "max_new_tokens_instance must be in [1, 32768]"),
        (lambda: LoraRunConfig(n_trials=10**9), "n_trials must be in [1, 10000]"),
        (lambda: EvaluationRunConfig(max_new_tokens=10**9), "max_new_tokens must be in [1, 32768]"),
    ):
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
            make()


def _seed(tmp_path: Path) -> Path:
    path = tmp_path / "seed.jsonl"
    path.write_bytes(sample_seed().read_bytes())
    return path


def _flag_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    seed, out = str(_seed(tmp_path)), str(tmp_path / "out" / "generated.jsonl")
    data = tmp_path / "tune.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    tune = ["tune", str(data), "--out", str(tmp_path / "out" / "adapter"), "--storage",
            f"sqlite:///{tmp_path / 'out' / 'optuna.db'}", "--work-dir", str(tmp_path / "out" / "work")]
    adapter = str(tmp_path / "no-adapter")  # the bound is checked before the adapter is looked for
    fake = tmp_path / "adapter"  # passes export's adapter check, which comes before its bound check
    fake.mkdir(exist_ok=True)
    (fake / "adapter_config.json").write_text("{}")
    (fake / "adapter_model.safetensors").write_bytes(b"")
    return {
        "generate --prompts-per-round 1e9": (["generate", seed, "--out", out, "--prompts-per-round", "1e9"],
                                             "prompts_per_round must be in [1, 10000], got 1000000000 "
                                             "(set by --prompts-per-round)"),
        "generate --num 1e9": (["generate", seed, "--out", out, "--num", "1e9"],
                               "num_instructions must be in [1, 1000000], got 1000000000 (set by --num)"),
        "generate --max-rounds": (["generate", seed, "--out", out, "--max-rounds", "1000000000"],
                                  "max_rounds must be in [1, 100000]"),
        "generate --num 1e999": (["generate", seed, "--out", out, "--num", "1e999"],
                                 "frd generate: argument --num: '1e999' is far above any bound"),
        "generate --out a folder": (["generate", seed, "--out", str(tmp_path)], "is a folder; give a file name"),
        "tune --trials 1e9": ([*tune, "--trials", "1e9"],
                              "n_trials must be in [1, 10000], got 1000000000 (set by --trials or LORA_N_TRIALS)"),
        "tune --workers": ([*tune, "--workers", "100000"], "n_workers must be in [1, 1024]"),
        "tune --epochs": ([*tune, "--epochs", "1e9"], "epochs must be in [1, 1000]"),
        "evaluate --max-new-tokens": (["evaluate", adapter, "--tasks", seed, "--max-new-tokens", "1e9"],
                                      "max_new_tokens must be in [1, 32768], got 1000000000 (set by --max-new-tokens)"),
        "evaluate --limit": (["evaluate", adapter, "--tasks", seed, "--limit", "1e9"],
                             "limit must be in [1, 1000000]"),
        "demo --instructions 1e9": (["demo", "--instructions", "1e9"],
                                    "num_instructions must be in [1, 1000000], got 1000000000 (set by --instructions)"),
        "demo --trials": (["demo", "--trials", "100000"], "n_trials must be in [1, 10000], got 100000"),
        "export --max-new-tokens": (["export", str(fake), "--merge", "--out", str(tmp_path / "out" / "merged"),
                                     "--max-new-tokens", "1e9"],
                                    "merged export: max_new_tokens must be in [1, 32768], got 1000000000 "
                                    "(set by --max-new-tokens)"),
    }


def _exit_status(argv: list[str]) -> int:
    """main's exit status, whether it returns it or argparse exits with it (a value it cannot parse)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


CASE_NAMES = ["generate --prompts-per-round 1e9", "generate --num 1e9", "generate --max-rounds", "generate --num 1e999",
              "generate --out a folder", "tune --trials 1e9", "tune --workers", "tune --epochs",
              "evaluate --max-new-tokens", "evaluate --limit", "export --max-new-tokens", "demo --instructions 1e9",
              "demo --trials"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_flag_beyond_its_bound_is_refused_in_one_line_before_any_work(case, tmp_path, capsys):
    argv, message = _flag_cases(tmp_path)[case]
    rc = _exit_status(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # no output, checkpoint, study or trial folder


# --- defect 7/9: `frd evaluate` started on 200,000 tasks without a word about the hours ahead ---


def _tasks(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Name the number {i}.", "input": "", "output": str(i)}) + "\n"
                            for i in range(n)))
    return path


def test_evaluate_over_the_task_limit_without_limit_is_refused_with_the_count_and_the_time(tmp_path, capsys):
    tasks = _tasks(tmp_path, 2000)
    rc = main(["evaluate", str(tmp_path / "no-adapter"), "--tasks", str(tasks)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    # 2000 tasks x 22.11 s / 16 tasks at 48 tokens x 128 / 48 = 7370 s
    assert "2000 tasks, more than the 500 evaluated without --limit: about 2.0 hours" in err, err
    assert "give --limit N to evaluate the first N, or --limit 2000 for all of them" in err

    # With --limit the count is the user's choice: the command goes on to the adapter (missing here).
    rc = main(["evaluate", str(tmp_path / "no-adapter"), "--tasks", str(tasks), "--limit", "2000"])
    assert rc == 2 and "no-adapter" in capsys.readouterr().err
    rc = main(["evaluate", str(tmp_path / "no-adapter"), "--tasks", str(_tasks(tmp_path, 500))])
    assert rc == 2 and "more than the 500" not in capsys.readouterr().err
