"""Queue routing over real runs launched through GraphQL (as the UI and `frd launch` do) and of the jobs
the sensors request, on an instance configured with the project's coordinator and launcher (the embedded
dagster.yaml). test_service.py covers runs the daemon's sensors create."""

import time
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterRunStatus
from dagster_graphql.test.utils import execute_dagster_graphql

from frd_assets.launchers import QUEUE_TAG, QueueRoutingRunLauncher, QueueTaggingRunCoordinator, queue_for_run

REPO = Path(__file__).resolve().parents[1]

LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def launch(graphql, instance, assets=None, job="__ASSET_JOB"):
    partition = str(uuid.uuid4())
    instance.add_dynamic_partitions("dataset_uuid", [partition])
    selector = {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__", "jobName": job}
    if assets:
        selector["assetSelection"] = [{"path": [a]} for a in assets]
    result = execute_dagster_graphql(graphql, LAUNCH, {"executionParams": {
        "selector": selector, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        "runConfigData": {}}})
    payload = result.data["launchRun"]
    assert payload["__typename"] == "LaunchRunSuccess", payload
    return instance.get_run_by_id(payload["run"]["runId"])


def test_the_embedded_instance_uses_the_project_coordinator_and_launcher(instance):
    assert isinstance(instance.run_coordinator, QueueTaggingRunCoordinator)
    assert isinstance(instance.run_launcher, QueueRoutingRunLauncher)


@pytest.mark.parametrize("assets, job, queue", [
    (["lora_adapter"], "__ASSET_JOB", "gpu"),
    (["seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter"], "__ASSET_JOB", "gpu"),
    (["seed_dataset", "generated_dataset", "validated_dataset"], "__ASSET_JOB", "cpu"),
    (["validated_dataset"], "__ASSET_JOB", "cpu"),
    (None, "prepare_dataset", "cpu"),  # what the seed sensor launches
    (None, "train_adapter", "gpu"),  # what the verdict sensor launches
    (None, "seed_to_adapter", "gpu"),  # the whole chain in one run
])
def test_runs_are_tagged_with_their_queue_at_submission(graphql, instance, assets, job, queue):
    run = launch(graphql, instance, assets, job)
    assert run.status == DagsterRunStatus.QUEUED
    assert run.tags[QUEUE_TAG] == queue
    assert queue_for_run(instance, run) == queue


def test_the_gpu_limit_lets_one_gpu_run_through_at_a_time(graphql, instance):
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    runs = [launch(graphql, instance, ["lora_adapter"]) for _ in range(3)]
    cpu_run = launch(graphql, instance, ["seed_dataset"])
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    in_progress = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
    seen_gpu_starts, max_gpu_at_once = set(), 0
    deadline = time.monotonic() + 240
    while len(seen_gpu_starts) < 3 and time.monotonic() < deadline:
        list(daemon.run_iteration(graphql.process_context))
        statuses = {r.run_id: instance.get_run_by_id(r.run_id).status for r in runs}
        max_gpu_at_once = max(max_gpu_at_once, sum(s in in_progress for s in statuses.values()))
        seen_gpu_starts |= {rid for rid, s in statuses.items() if s != DagsterRunStatus.QUEUED}
        time.sleep(0.5)
    assert len(seen_gpu_starts) == 3  # all three went through, one after another
    assert max_gpu_at_once == 1
    # The CPU run is not held back by the GPU limit.
    assert instance.get_run_by_id(cpu_run.run_id).status != DagsterRunStatus.QUEUED
    events = instance.all_logs(runs[0].run_id)
    assert any("Routing run to the gpu queue" in (e.message or "") for e in events)


def test_launcher_config_needs_both_queues():
    from dagster._serdes import ConfigurableClassData

    data = ConfigurableClassData("frd_assets.launchers", "QueueRoutingRunLauncher", yaml.safe_dump(
        {"queues": {"cpu": {"module": "dagster._core.launcher.default_run_launcher", "class": "DefaultRunLauncher"}}}))
    with pytest.raises(Exception, match="needs a launcher for \\['gpu'\\]"):
        data.rehydrate(as_type=QueueRoutingRunLauncher)
