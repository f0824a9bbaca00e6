"""The platform as a running service: SeaweedFS, dagster-webserver and dagster-daemon as real processes on
a PostgreSQL-backed instance. A seed dropped in the bucket becomes an adapter with nobody clicking; a second
dataset is launched with `frd launch` and read back with `frd status`."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from dagster import DagsterInstance

from frd_assets.core import versions
from frd_assets.core.datasets import asset_location
from frd_assets.core.names import PARTITION_TAG
from frd_assets.core.seeds import write_seed
from frd_assets.core.store import ADAPTERS_BUCKET, SEEDS_BUCKET, S3Store
from frd_assets_tests.openai_server import free_port
from frd_assets_tests.processes import stop_process_groups
from frd_assets_tests.s3_server import start_s3_server, stop_s3_server

REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def service(tmp_path, postgres_db, tiny_model_dir):
    s3 = start_s3_server(tmp_path / "s3")  # a bucket of its own: the sensor must see only this test's seeds
    home = tmp_path / "home"
    home.mkdir()
    embedded = yaml.safe_load((REPO / "dagster.yaml").read_text())
    deployed = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    # PostgreSQL storage and the queue coordinator of the deployment; runs launched in-process per run.
    config = {"storage": deployed["storage"], "run_coordinator": deployed["run_coordinator"],
              "run_launcher": embedded["run_launcher"], "telemetry": {"enabled": False}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {
        **os.environ, **s3.env(),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": postgres_db,
        "TEACHER_MODEL": str(tiny_model_dir), "LORA_MODEL_NAME": str(tiny_model_dir), "LORA_N_TRIALS": "1",
        "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}", "FRD_TRIALS_DIR": str(tmp_path / "trials"),
        "FRD_SENSOR_INTERVAL_SECONDS": "2",
    }
    bin_dir = Path(sys.executable).parent
    procs = []
    for name, cmd in (("webserver", [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                     "-w", "workspace.yaml"]),
                      ("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"])):
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/server_info"), 120, "the webserver")
        yield {"port": port, "env": env, "s3": s3, "home": home, "logs": tmp_path}
    finally:
        stop_process_groups(procs, timeout=30)
        stop_s3_server(s3)


def _ok(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def frd(*args, env):
    return subprocess.run([sys.executable, "-m", "frd_assets.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_seed_upload_to_adapter_with_nobody_clicking_then_frd_launch_and_status(service, sample_seed_bytes):
    s3 = service["s3"]
    store = S3Store.connect(s3.endpoint, s3.access_key, s3.secret_key)
    first = str(uuid.uuid4())
    # Through the project's upload function, as `frd seed upload` does: journaled, so the next tick sees it (an
    # upload made with another S3 tool waits for the sensor's sweep, FRD_SEED_SWEEP_SECONDS).
    write_seed(store, first, sample_seed_bytes)
    store.put_bytes(SEEDS_BUCKET, "README.txt", b"not a seed: the sensor skips it")

    wait_until(lambda: store.exists(ADAPTERS_BUCKET, f"{first}/{versions.POINTER}"), 240,
               f"the adapter of {first} (logs in {service['logs']})")
    assert "adapter_config.json" in versions.current(store, ADAPTERS_BUCKET, first).files
    validated = versions.current(store, *asset_location("validated_dataset", first))
    assert validated.meta["verdict"] == "READY_FOR_FINE_TUNING"
    os.environ.update({k: service["env"][k] for k in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME",
                                                       "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")})
    with DagsterInstance.from_config(str(service["home"])) as instance:
        def finished_runs():
            runs = {r.job_name: r for r in instance.get_runs() if r.tags.get(PARTITION_TAG) == first}
            return runs if len(runs) == 2 and all(r.is_finished for r in runs.values()) else None

        by_job = wait_until(finished_runs, 60, f"both runs of {first} to finish")
        assert set(by_job) == {"prepare_dataset", "train_adapter"}  # two runs: CPU, then GPU
        assert by_job["prepare_dataset"].tags["frd/queue"] == "cpu"
        assert by_job["train_adapter"].tags["frd/queue"] == "gpu"
        assert all(r.status.value == "SUCCESS" for r in by_job.values())
        assert by_job["prepare_dataset"].tags.get("dagster/sensor_name") == "seed_upload_sensor"

    # A second dataset, launched over GraphQL by the CLI, read back by the CLI. (The sensor sees the upload
    # too; it leaves a partition alone while a run for it is queued or running.)
    second = str(uuid.uuid4())
    env, port = service["env"], str(service["port"])
    store.put_bytes(SEEDS_BUCKET, f"{second}.jsonl", sample_seed_bytes)
    launched = frd("launch", second, "--assets", "seed_dataset,generated_dataset,validated_dataset",
                   "--port", port, env=env)
    assert launched.returncode == 0, launched.stderr
    run_id = launched.stdout.strip()
    with DagsterInstance.from_config(str(service["home"])) as instance:
        run = wait_until(lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r, 240, f"run {run_id}")
        assert run.status.value == "SUCCESS" and run.tags["frd/queue"] == "cpu"
        assert run.tags[PARTITION_TAG] == second

    # The sensor may have seen the upload before `frd launch` queued its run and started one of its own;
    # either way the newest run touching validated_dataset ends, and status then reports it.
    def validated_line():
        out = frd("status", second, "--port", port, env=env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        line = next(x for x in lines if x.strip().startswith("validated_dataset"))
        return lines if "last run SUCCESS" in line else None

    lines = wait_until(validated_line, 240, f"frd status to show the validation run of {second} finished")
    assert lines[0] == f"dataset {second}"
    validated = next(line for line in lines if line.strip().startswith("validated_dataset"))
    assert "verdict READY_FOR_FINE_TUNING" in validated
    # The folder shown is the one the store's pointer names now, as the IO manager reads it.
    pointed = versions.current(store, *asset_location("validated_dataset", second))
    assert f"current {store.uri(pointed.bucket, pointed.folder)}" in validated
    # ...and the versions it was computed from (issue 18, Must 5).
    generated = versions.current(store, *asset_location("generated_dataset", second)).version
    assert f"<- generated_dataset {generated}, seed_dataset " in validated
    assert "materialized never" not in next(line for line in lines if line.strip().startswith("seed_dataset"))

    unknown = frd("status", str(uuid.uuid4()), "--port", port, env=env)
    assert unknown.returncode == 2 and "is not a partition here" in unknown.stderr
    bad_asset = frd("launch", second, "--assets", "nope", "--port", port, env=env)
    assert bad_asset.returncode == 2 and "unknown asset(s) nope" in bad_asset.stderr
