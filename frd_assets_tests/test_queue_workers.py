"""End to end on real queues: Redis, two Celery worker processes (cpu_queue, gpu_queue), PostgreSQL-backed
Dagster storage. A CPU run executes on the cpu worker and a GPU run on the gpu worker."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from frd_assets.celery_app import QUEUES
from frd_assets.core.names import PARTITION_TAG
from frd_assets.core.store import LocalStore
from frd_assets_tests.test_routing import LAUNCH

REPO = Path(__file__).resolve().parents[1]
REDIS_DB = "11"  # a database of its own on the machine's Redis, flushed before use


@pytest.fixture
def worker_env(tmp_path, postgres_db, tiny_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")  # the deployment's instance, as shipped
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": postgres_db,
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6379", "REDIS_DB": REDIS_DB,
        "FRD_LOCAL_STORE": str(tmp_path / "store"),
        "TEACHER_MODEL": str(tiny_model_dir), "LORA_MODEL_NAME": str(tiny_model_dir), "LORA_N_TRIALS": "1",
        "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}", "FRD_TRIALS_DIR": str(tmp_path / "trials"),
    }
    env.pop("MINIO_ENDPOINT", None)
    redis.Redis(host="127.0.0.1", port=6379, db=int(REDIS_DB)).flushdb()
    return env


@pytest.fixture
def workers(worker_env, tmp_path):
    procs = {}
    for queue in QUEUES.values():
        log = open(tmp_path / f"{queue}.log", "wb")
        procs[queue] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "frd_assets.celery_app", "worker", "-Q", queue, "--pool", "solo",
             "--prefetch-multiplier=1", "-n", f"{queue}@%h", "-l", "INFO"],
            env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield procs
    for proc in procs.values():
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for(context, run_id, timeout=180):
    """Plays the daemon's run coordinator (dequeues within the queue limits) until the run finishes."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        list(daemon.run_iteration(context.process_context))
        run = context.instance.get_run_by_id(run_id)
        if run.is_finished:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {run.status} after {timeout} s")


def run_pids(instance, run_id) -> set[int]:
    """The process that ran the run: Dagster stamps every event with its emitter's pid."""
    return {e.dagster_event.pid for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)}


def test_cpu_and_gpu_runs_execute_on_their_own_workers(worker_env, workers, monkeypatch, sample_seed_bytes):
    for key in ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD",
                "DAGSTER_PG_DB", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "FRD_LOCAL_STORE"):
        monkeypatch.setenv(key, worker_env[key])
    dataset_id = str(uuid.uuid4())
    LocalStore(worker_env["FRD_LOCAL_STORE"]).put_bytes("seeds", f"{dataset_id}.jsonl", sample_seed_bytes)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("dataset_uuid", [dataset_id])
        with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
            def launch(assets, run_config):
                result = execute_dagster_graphql(context, LAUNCH, {"executionParams": {
                    "selector": {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__",
                                 "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]},
                    "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": dataset_id}]},
                    "runConfigData": run_config}})
                assert result.data["launchRun"]["__typename"] == "LaunchRunSuccess", result.data
                return result.data["launchRun"]["run"]["runId"]

            generation = {"num_instructions": 10, "prompts_per_round": 4, "max_rounds": 6, "temperature": 1.0,
                          "max_new_tokens_instructions": 96, "max_new_tokens_instance": 96}
            cpu_run = wait_for(context, launch(["seed_dataset", "generated_dataset", "validated_dataset"],
                                                {"ops": {"generated_dataset": {"config": generation}}}))
            assert cpu_run.status == DagsterRunStatus.SUCCESS, cpu_run.status
            gpu_run = wait_for(context, launch(["lora_adapter"], {"ops": {"lora_adapter": {"config": {
                "batch_size": 2}}}}))
            assert gpu_run.status == DagsterRunStatus.SUCCESS, gpu_run.status

            assert (cpu_run.tags["frd/queue"], gpu_run.tags["frd/queue"]) == ("cpu", "gpu")
            assert run_pids(instance, cpu_run.run_id) == {workers["cpu_queue"].pid}
            assert run_pids(instance, gpu_run.run_id) == {workers["gpu_queue"].pid}
            steps = {e.step_key: e.dagster_event.pid for r in (cpu_run, gpu_run)
                     for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_START)}
            print("step -> pid:", steps, "workers:", {q: p.pid for q, p in workers.items()})
            assert set(steps) == {"seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter"}
    from frd_assets.core import versions

    adapter = versions.current(LocalStore(worker_env["FRD_LOCAL_STORE"]), "lora-adapters", dataset_id)
    assert "adapter_config.json" in adapter.files
