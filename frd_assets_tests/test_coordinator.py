"""The run coordinator refuses, at submission, what must not run (resources in the run config, values core
refuses), and lets one run of a dataset through at a time; over real runs launched through GraphQL on an
instance configured with the shipped dagster.yaml, and Dagster's own queue daemon."""

import inspect
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterRunStatus
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.test.utils import execute_dagster_graphql

from frd_assets.definitions import ASSETS
from frd_assets.defs.config import RUN_CONFIGS
from frd_assets_tests.test_routing import LAUNCH

REPO = Path(__file__).resolve().parents[1]

def launch(graphql, instance, assets, *, run_config=None, partition=None) -> dict:
    partition = partition or str(uuid.uuid4())
    instance.add_dynamic_partitions("dataset_uuid", [partition])
    selector = {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]}
    result = execute_dagster_graphql(graphql, LAUNCH, {"executionParams": {
        "selector": selector, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        "runConfigData": run_config or {}}})
    return result.data["launchRun"]


def test_every_asset_config_class_is_the_one_the_coordinator_checks():
    for asset in ASSETS:
        annotation = inspect.signature(asset.op.compute_fn.decorated_fn).parameters["config"].annotation
        assert RUN_CONFIGS[asset.key.path[-1]] is annotation


@pytest.mark.parametrize("resources", [
    {"store": {"config": {"local_root": "/etc"}}},
    {"teacher": {"config": {"base_url": "http://elsewhere:8000/v1"}}},
    {"lora": {"config": {"optuna_storage": "sqlite:////tmp/other.db"}}},
])
def test_a_run_config_that_sets_resources_is_refused_at_submission(graphql, instance, resources):
    payload = launch(graphql, instance, ["seed_dataset"], run_config={"resources": resources})
    assert payload["__typename"] == "PythonError", payload
    message = payload["message"]
    assert f"run config sets resources.{next(iter(resources))}" in message
    assert "remove the 'resources' section" in message
    # Nothing waits in the queue for it.
    assert not [r for r in instance.get_runs() if r.status == DagsterRunStatus.QUEUED]


@pytest.mark.parametrize("asset, field", [
    ("lora_adapter", "n_trials"),
    ("adapter_evaluation", "max_new_tokens"),
    ("generated_dataset", "prompts_per_round"),
    ("generated_dataset", "max_new_tokens_instance"),
])
def test_a_numeric_field_over_its_upper_bound_is_refused_at_submission(graphql, instance, asset, field):
    payload = launch(graphql, instance, [asset], run_config={"ops": {asset: {"config": {field: 10**9}}}})
    assert payload["__typename"] == "PythonError", payload
    line = payload["message"].strip().splitlines()[-1]
    assert f"ops.{asset}.config refused" in line and f"{field} must be in [1, " in line and "1000000000" in line
    assert not [r for r in instance.get_runs() if r.status == DagsterRunStatus.QUEUED]


def test_a_run_config_within_bounds_is_queued(graphql, instance):
    run_config = {"ops": {"lora_adapter": {"config": {"n_trials": 3}}}}
    payload = launch(graphql, instance, ["lora_adapter"], run_config=run_config)
    assert payload["__typename"] == "LaunchRunSuccess", payload
    assert instance.get_run_by_id(payload["run"]["runId"]).status == DagsterRunStatus.QUEUED


def test_runs_of_one_dataset_start_one_at_a_time(graphql, instance):
    """Two queued runs of one partition (on different queues, so the queue limits alone would let both
    through): the second stays QUEUED while the first is in progress; another dataset's run is not held."""
    dataset = str(uuid.uuid4())
    first = launch(graphql, instance, ["seed_dataset"], partition=dataset)["run"]["runId"]
    second = launch(graphql, instance, ["lora_adapter"], partition=dataset)["run"]["runId"]
    other = launch(graphql, instance, ["lora_adapter"])["run"]["runId"]
    # Hold the first run in progress, as a long generation would be: the daemon then sees it STARTED.
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    list(daemon.run_iteration(graphql.process_context))
    status = {rid: instance.get_run_by_id(rid).status for rid in (first, second, other)}
    assert status[first] != DagsterRunStatus.QUEUED
    assert status[second] == DagsterRunStatus.QUEUED
    assert status[other] != DagsterRunStatus.QUEUED
    # While the first has not finished, more daemon passes do not start the second.
    deadline = time.monotonic() + 300
    while instance.get_run_by_id(first).status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
        list(daemon.run_iteration(graphql.process_context))
        if instance.get_run_by_id(first).status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
            assert instance.get_run_by_id(second).status == DagsterRunStatus.QUEUED
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # Once it is done, the second goes through (when the other dataset's run frees the one GPU slot).
    while instance.get_run_by_id(second).status == DagsterRunStatus.QUEUED:
        list(daemon.run_iteration(graphql.process_context))
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_the_definitions_resources_ignore_a_run_config_that_would_redirect_them(tmp_path, dagster_instance,
                                                                                 sample_seed_bytes, dataset_id):
    """Defect 6 below the coordinator (a run executed in process never passes one): the store stays the
    deployment's, whatever the run config says."""
    from dagster import AssetKey, DagsterInvalidConfigError

    from frd_assets.core import versions
    from frd_assets.core.datasets import asset_location
    from frd_assets.core.store import SEEDS_BUCKET, LocalStore
    from frd_assets.definitions import build_definitions

    deployed, elsewhere = LocalStore(tmp_path / "deployed"), LocalStore(tmp_path / "elsewhere")
    deployed.put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    elsewhere.put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    job = build_definitions({"FRD_LOCAL_STORE": str(tmp_path / "deployed")}).resolve_implicit_global_asset_job_def()
    dagster_instance.add_dynamic_partitions("dataset_uuid", [dataset_id])
    redirect = {"resources": {"store": {"config": {"local_root": str(tmp_path / "elsewhere")}}}}
    try:
        result = job.execute_in_process(run_config=redirect, instance=dagster_instance, partition_key=dataset_id,
                                        asset_selection=[AssetKey("seed_dataset")])
    except DagsterInvalidConfigError:
        return  # refused outright: nothing ran
    assert result.success
    [materialization] = result.asset_materializations_for_node("seed_dataset")
    source = str(materialization.metadata["source"].value)
    assert source == deployed.uri(SEEDS_BUCKET, f"{dataset_id}.jsonl"), source
    assert versions.current(deployed, *asset_location("seed_dataset", dataset_id))
