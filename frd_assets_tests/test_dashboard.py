"""`frd dashboard` as a user runs it: a real optuna-dashboard process on a study, read back over its HTTP API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from frd_assets.core.lora.study_storage import STORAGE_ENV, hide_password, redacted, study_storage_url

REPO = Path(__file__).resolve().parents[1]


def _make_study(url: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="frd-dashboard-test", storage=url, direction="minimize")
    for rank, loss in ((8, 1.25), (16, 0.75)):
        study.add_trial(optuna.trial.create_trial(
            params={"rank": rank}, distributions={"rank": optuna.distributions.IntDistribution(4, 64, log=True)},
            value=loss))
    return study


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait_listening(proc: subprocess.Popen, out_path: Path, err_path: Path, timeout: float = 60) -> str:
    """The base URL the process printed, once it answers /api/meta; fails with its output if it died."""
    deadline = time.monotonic() + timeout
    base = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"frd dashboard exited with {proc.returncode}:\n{out_path.read_text()}\n"
                        f"{err_path.read_text()[-3000:]}")
        if base is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", out_path.read_text())
            base = found and found.group(0).rstrip("/")
        if base:
            try:
                _get_json(base + "/api/meta")
                return base
            except (urllib.error.URLError, ConnectionError):
                pass
        time.sleep(0.2)
    pytest.fail(f"frd dashboard did not answer in {timeout} s:\n{out_path.read_text()}")


def test_dashboard_serves_the_configured_study_over_http(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = _make_study(url)
    out_path, err_path = tmp_path / "dashboard.out", tmp_path / "dashboard.err"
    env = {**os.environ, STORAGE_ENV: url}  # the configured storage, as lora_adapter and `frd tune` read it
    # -X importtime lists every module the command imports, on stderr: the proof that it never loads Dagster.
    # Port 0: the OS picks a free port and the command prints it.
    with open(out_path, "w") as out, open(err_path, "w") as err:
        command = [sys.executable, "-X", "importtime", "-m", "frd_assets.cli", "dashboard", "--port", "0"]
        # SIGINT as a terminal's foreground command has it: a suite started in the background by a
        # non-interactive shell ignores SIGINT, and the child would inherit that and never see Ctrl-C.
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        base = _wait_listening(proc, out_path, err_path)
        studies = _get_json(base + "/api/studies")["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("frd-dashboard-test", ["minimize"])]
        detail = _get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        assert detail["name"] == "frd-dashboard-test"
        trials = {t["number"]: t for t in detail["trials"]}
        assert {n: (t["state"], t["values"]) for n, t in trials.items()} == {0: ("Complete", [1.25]),
                                                                          1: ("Complete", [0.75])}
        assert [p["param_internal_value"] for p in trials[1]["params"] if p["name"] == "rank"] == [16]
        assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number] == [1]
    finally:
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            returncode = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            lines = [x for x in err_path.read_text().splitlines() if not x.startswith("import time:")]
            pytest.fail("frd dashboard did not stop within 20 s of Ctrl-C; its stderr:\n" + "\n".join(lines[-40:]))
    assert returncode == 0, err_path.read_text()[-3000:]
    imported = re.findall(r"\|\s+(dagster\S*)\s*$", err_path.read_text(), flags=re.M)
    assert imported == [], f"frd dashboard imported {imported[:5]}"


def test_dashboard_never_prints_the_storage_password():
    """A PostgreSQL URL nobody listens at: the error names the storage with *** for its password."""
    url = "postgresql+psycopg://frd:s3cr%40t-pw@127.0.0.1:1/optuna"
    out = subprocess.run([sys.executable, "-m", "frd_assets.cli", "dashboard", "--storage", url, "--port", "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "postgresql+psycopg://frd:***@127.0.0.1:1/optuna" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    assert "s3cr" not in out.stdout + out.stderr


@pytest.mark.parametrize("url, shown", [
    # a password with a percent-encoded @, as a PostgreSQL URL must carry it
    ("postgresql+psycopg://frd:p%40ss@db:5432/optuna", "postgresql+psycopg://frd:***@db:5432/optuna"),
    ("postgresql+psycopg://frd@db/optuna", "postgresql+psycopg://frd@db/optuna"),  # no password: unchanged
    ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
    ("not a url", "<storage URL that is not an SQLAlchemy URL>"),  # unparsed: nothing of it is printed
])
def test_redacted_hides_only_the_password(url, shown):
    assert redacted(url) == shown


def test_hide_password_covers_the_typed_and_encoded_forms():
    url = "postgresql+psycopg://frd:p%40ss@db/optuna"
    shown = hide_password(f"failed for {url} (password p@ss)", url)
    assert shown == "failed for postgresql+psycopg://frd:***@db/optuna (password ***)"


def test_dashboard_and_lora_adapter_resolve_the_same_storage(monkeypatch):
    """The dashboard shows the studies lora_adapter and `frd tune` write: with OPTUNA_STORAGE and without."""
    from frd_assets.defs.resources import LoraResource

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert study_storage_url() == LoraResource.from_env().storage_url()
    assert study_storage_url().startswith("sqlite:///")
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg://frd:pw@db/optuna")
    assert study_storage_url() == LoraResource.from_env().storage_url() == "postgresql+psycopg://frd:pw@db/optuna"


def test_the_default_storage_is_an_sqlite_file_beside_the_model_cache(tmp_path):
    env = {"FRD_MODEL_CACHE": str(tmp_path / "cache" / "models")}
    assert study_storage_url(env) == f"sqlite:///{tmp_path / 'cache' / 'optuna.db'}"
    assert study_storage_url({**env, STORAGE_ENV: "postgresql+psycopg://frd@db/optuna"}) == \
        "postgresql+psycopg://frd@db/optuna"
