"""`frd tune`: killed with SIGKILL after its first trial (its trial worker with it), the same command continues
the same study."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from frd_assets.core.lora.search import SearchSettings, run_search
from frd_assets.core.lora.trial import TrainingConfig
from frd_assets.core.records import Record

RECORDS = [{"instruction": f"Describe the quiet river number {i}.", "input": "",
            "output": f"The river {i} is calm, green and full of small fish."} for i in range(40)]


def completed_trials(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_killed_tune_continues_the_study_without_repeating_trials(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    db = tmp_path / "optuna.db"
    cmd = [sys.executable, "-m", "frd_assets.cli", "tune", str(data), "--base-model", str(tiny_model_dir),
           "--trials", "3", "--storage", f"sqlite:///{db}", "--study", "resume-test", "--out", str(tmp_path / "out"),
           "--work-dir", str(tmp_path / "work"), "--epochs", "2", "--batch-size", "2", "--pruner", "none"]

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while completed_trials(db) < 1:
        assert proc.poll() is None, "frd tune ended before its first trial completed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and the worker process of its next trial
    proc.wait()
    first = optuna.load_study(study_name="resume-test", storage=f"sqlite:///{db}").trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="resume-test", storage=f"sqlite:///{db}").trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    lost = [t for t in trials if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)]
    assert len(lost) <= 1  # at most the trial the killed worker was training
    assert trials[0].params == first.params and trials[0].value == first.value
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(t.params == first.params for t in complete) == 1  # the finished trial was not run again
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert "adapter: " in done.stdout


def test_the_median_pruner_stops_a_trial_worse_than_the_others(tmp_path, tiny_model_dir):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="minimize")
    good = {"rank": 8, "lora_alpha": 32, "learning_rate": 3e-3}
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "rank": 16})
    study.enqueue_trial({**good, "learning_rate": 1e-5})  # learns almost nothing: worse at every report
    records = [Record(f"r{i}", r["instruction"], "", r["output"]) for i, r in enumerate(RECORDS[:16])]
    result = run_search(records, base_model=str(tiny_model_dir), n_trials=3, storage_url=storage,
                        study_name="prune", work_dir=tmp_path / "work", out_dir=tmp_path / "out",
                        training=TrainingConfig(epochs=2, batch_size=2, evals_per_trial=4),
                        settings=SearchSettings(pruner="median", pruner_startup_trials=2), print_fn=lambda _: None)
    states = [t["state"] for t in result.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert 0 < result.trials[2]["steps"] < result.trials[0]["steps"]  # stopped early, not trained to the end
    assert result.best_params in (good, {**good, "rank": 16})


def test_search_settings_reject_bad_values():
    with pytest.raises(ValueError, match="pruner must be"):
        SearchSettings(pruner="sometimes")
    with pytest.raises(ValueError, match="grace_period"):
        SearchSettings(heartbeat_interval=10, grace_period=5)
