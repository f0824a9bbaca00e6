"""Retirement: the policy's choice, retiring one dataset (partition, objects, runs, tombstone) on a real
Dagster instance and real stores, the refusal of a retired uuid's upload, the schedule's job, and the seed
sensor after retirement."""

import json
import time
import uuid

import pytest
from dagster import AssetMaterialization, DagsterRunStatus, RunsFilter, build_schedule_context, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from frd_assets.core import versions
from frd_assets.core.config_checks import ConfigError
from frd_assets.core.datasets import asset_location, checkpoint_location
from frd_assets.core.names import ASSETS, PARTITION_TAG, PARTITIONS_DEF, RETIRE_JOB, RETIRE_SCHEDULE, VALIDATED_DATASET
from frd_assets.core.retirement import (
    DAY,
    RESTORE_FLAG,
    DatasetActivity,
    DatasetRetired,
    check_upload_allowed,
    choose_retirements,
    read_tombstone,
    tombstone_key,
)
from frd_assets.core.seeds import write_eval_set, write_seed
from frd_assets.core.settings import RetentionSettings, retention_settings
from frd_assets.core.store import BUCKETS, SEEDS_BUCKET, LocalStore
from frd_assets.core.validation import DELETED, READY
from frd_assets.defs import retirement
from frd_assets.defs.resources import StoreResource
from frd_assets.defs.retirement import plan_retirements, retire_dataset
from frd_assets.defs.sensors import seed_upload_sensor
from frd_assets_tests.test_cli import frd

SEED = b'{"instruction": "Name a fruit.", "input": "", "output": "Apple"}\n'
NOW = 1_800_000_000.0
DEFAULT = RetentionSettings()


def ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


# The policy's choice, as a pure function of the rows.


def test_the_policy_names_deleted_and_idle_datasets_and_not_fresh_busy_or_reuploaded_ones():
    deleted, idle, fresh, busy, reuploaded, unknown, just_idle = ids(7)
    rows = [
        DatasetActivity(deleted, DELETED, verdict_at=NOW - 60, last_run_at=NOW - 60, seed_uploaded_at=NOW - 600),
        DatasetActivity(idle, READY, verdict_at=NOW - 91 * DAY, last_run_at=NOW - 91 * DAY,
                        seed_uploaded_at=NOW - 92 * DAY),
        DatasetActivity(fresh, READY, verdict_at=NOW - DAY, last_run_at=NOW - DAY, seed_uploaded_at=NOW - DAY),
        # A run in flight, or an upload newer than the DELETED verdict (waiting for the sensor's run): not now.
        DatasetActivity(busy, DELETED, verdict_at=NOW - 99 * DAY, last_run_at=NOW - 99 * DAY, in_flight=True),
        DatasetActivity(reuploaded, DELETED, verdict_at=NOW - 60, last_run_at=NOW - 60, seed_uploaded_at=NOW - 5),
        DatasetActivity(unknown),  # a partition added by hand, never run, no seed: its age is unknown
        # Idle is "at least idle_days": exactly 90 days without a run counts.
        DatasetActivity(just_idle, None, last_run_at=NOW - 90 * DAY),
    ]
    chosen = choose_retirements(rows, DEFAULT, NOW)
    assert [c.dataset_id for c in chosen] == sorted([deleted, idle, just_idle])
    reasons = {c.dataset_id: c.reason for c in chosen}
    assert reasons[deleted] == f"verdict {DELETED}"
    assert reasons[idle].startswith("no run or upload for 91 days")

    # Each rule can be switched off on its own.
    no_idle = RetentionSettings(idle_days=0)
    assert [c.dataset_id for c in choose_retirements(rows, no_idle, NOW)] == [deleted]
    keep_deleted = RetentionSettings(retire_deleted=False)
    assert [c.dataset_id for c in choose_retirements(rows, keep_deleted, NOW)] == sorted([idle, just_idle])


def test_retention_settings_have_defaults_and_refuse_bad_values_by_name():
    assert retention_settings({}) == RetentionSettings(90, True, "keep", "keep", "0 3 * * *")
    env = {"FRD_RETENTION_IDLE_DAYS": "30", "FRD_RETENTION_DELETED": "False", "FRD_RETENTION_OBJECTS": "delete",
           "FRD_RETENTION_RUNS": "DELETE", "FRD_RETENTION_CRON": "15 2 * * 0"}
    assert retention_settings(env) == RetentionSettings(30, False, "delete", "delete", "15 2 * * 0")
    for name, value in (("FRD_RETENTION_OBJECTS", "purge"), ("FRD_RETENTION_IDLE_DAYS", "ninety"),
                        ("FRD_RETENTION_DELETED", "yes please"), ("FRD_RETENTION_IDLE_DAYS", "-1")):
        with pytest.raises(ConfigError, match=name):
            retention_settings({name: value})


# Retiring one dataset on a real instance and store.


def fill_dataset(store, dataset_id: str) -> None:
    """What a dataset leaves in the store: seed, evaluation set, a version of each asset, the checkpoint."""
    write_eval_set(store, dataset_id, SEED)
    write_seed(store, dataset_id, SEED)
    for asset in ASSETS:
        versions.publish(store, *asset_location(asset, dataset_id), [("data.jsonl", SEED)])
    bucket, key = checkpoint_location(dataset_id)
    store.put_bytes(bucket, key, b"{}")


def objects_of(store, dataset_id: str) -> set[tuple[str, str]]:
    return {(b, i.key) for b in BUCKETS for i in store.list(b) if i.key.startswith(dataset_id)}


def add_run(instance, dataset_id: str, status=DagsterRunStatus.SUCCESS) -> str:
    return create_run_for_test(instance, job_name="prepare_dataset", status=status,
                               tags={PARTITION_TAG: dataset_id}).run_id


@pytest.mark.parametrize("objects, runs", [("delete", "delete"), ("keep", "keep")])
def test_retiring_removes_its_partition_and_nothing_of_another_dataset(store, dagster_instance, objects, runs):
    gone, other = ids(2)
    for d in (gone, other):
        fill_dataset(store, d)
        add_run(dagster_instance, d)
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [gone, other])
    before_gone, before_other = objects_of(store, gone), objects_of(store, other)
    assert len(before_gone) == len(before_other) >= 9
    policy = RetentionSettings(objects=objects, runs=runs)

    retired = retire_dataset(dagster_instance, store, gone, reason="by test", policy=policy, now=NOW)

    assert list(dagster_instance.get_dynamic_partitions(PARTITIONS_DEF)) == [other]
    assert objects_of(store, other) == before_other
    assert len(dagster_instance.get_run_ids(RunsFilter(tags={PARTITION_TAG: other}))) == 1
    tombstone = (SEEDS_BUCKET, tombstone_key(gone))
    gone_runs = dagster_instance.get_run_ids(RunsFilter(tags={PARTITION_TAG: gone}))
    if objects == "delete":
        assert objects_of(store, gone) == {tombstone}
        assert retired.objects_deleted == len(before_gone)
        assert gone_runs == [] and retired.runs_deleted == 1
    else:
        assert objects_of(store, gone) == before_gone | {tombstone}
        assert retired.objects_deleted == 0
        assert len(gone_runs) == 1 and retired.runs_deleted == 0
    stone = read_tombstone(store, gone)
    assert (stone.dataset_id, stone.reason, stone.retired_at) == (gone, "by test", "2027-01-15T08:00:00Z")
    assert stone.policy["objects"] == objects and stone.policy["runs"] == runs
    assert read_tombstone(store, other) is None


def verdict(instance, dataset_id: str, value: str) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(VALIDATED_DATASET, partition=dataset_id, metadata={"verdict": value})
    )


def test_the_schedule_runs_the_job_that_retires_exactly_what_the_policy_names(dagster_instance, tmp_path,
                                                                               monkeypatch):
    from frd_assets.definitions import build_definitions

    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setattr(retirement, "PAGE", 2)  # the walks over runs and verdicts cross pages
    store = LocalStore(tmp_path / "store")
    deleted, ready, reuploaded, busy = ids(4)
    for d in (deleted, ready, reuploaded, busy):
        write_seed(store, d, SEED)
        add_run(dagster_instance, d)
    verdict(dagster_instance, deleted, DELETED)
    verdict(dagster_instance, ready, READY)
    verdict(dagster_instance, busy, DELETED)
    add_run(dagster_instance, busy, DagsterRunStatus.STARTED)
    verdict(dagster_instance, reuploaded, DELETED)
    time.sleep(0.05)  # the local store's times are in ns: the new upload is after the verdict
    write_seed(store, reuploaded, SEED + SEED)
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [deleted, ready, reuploaded, busy])

    defs = build_definitions()
    schedule = defs.resolve_schedule_def(RETIRE_SCHEDULE)
    assert schedule.cron_schedule == "0 3 * * *" and schedule.default_status.value == "RUNNING"
    with build_schedule_context(instance=dagster_instance) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    result = defs.resolve_job_def(RETIRE_JOB).execute_in_process(
        instance=dagster_instance, run_config=request.run_config, tags=request.tags
    )
    assert result.success
    assert sorted(dagster_instance.get_dynamic_partitions(PARTITIONS_DEF)) == sorted([ready, reuploaded, busy])
    assert read_tombstone(store, deleted).reason == f"verdict {DELETED}"
    assert all(read_tombstone(store, d) is None for d in (ready, reuploaded, busy))
    # The default policy keeps objects and runs.
    assert store.exists(SEEDS_BUCKET, f"{deleted}.jsonl")
    assert dagster_instance.get_run_ids(RunsFilter(tags={PARTITION_TAG: deleted}))
    # The job expires the upload journal's old hours only: today's five uploads keep their entries.
    assert len(list(store.list(SEEDS_BUCKET, "_uploads/"))) == 5


def test_idle_datasets_are_those_without_activity_since_the_policy_s_days(dagster_instance, local_store,
                                                                         monkeypatch):
    monkeypatch.setattr(retirement, "PAGE", 1)
    idle, fresh = ids(2)
    write_seed(local_store, idle, SEED)
    add_run(dagster_instance, idle)
    verdict(dagster_instance, idle, READY)
    time.sleep(1.1)  # run records keep whole seconds: the two datasets' last activity must differ
    cutoff = time.time()
    time.sleep(1.1)
    write_seed(local_store, fresh, SEED)
    add_run(dagster_instance, fresh)
    verdict(dagster_instance, fresh, READY)
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [idle, fresh])

    policy = RetentionSettings(idle_days=30)
    chosen = plan_retirements(dagster_instance, local_store, policy, now=cutoff + 30 * DAY)
    assert [c.dataset_id for c in chosen] == [idle]
    assert plan_retirements(dagster_instance, local_store, policy, now=cutoff + 29 * DAY) == []


# The refusal of a retired uuid's upload, and `frd retire`, as a user runs them.


def test_a_retired_uuid_upload_is_refused_with_one_line_and_restored_with_the_flag(tmp_path):
    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "DAGSTER_HOME": str(tmp_path / "home"), "MINIO_ENDPOINT": ""}
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(SEED)
    dataset_id = str(uuid.uuid4())
    assert frd("seed", "upload", str(seed), "--uuid", dataset_id, env=env).returncode == 0

    asked = frd("retire", dataset_id, env=env)  # no --yes and no terminal: refused, nothing done
    assert asked.returncode == 2 and len(asked.stderr.splitlines()) == 1 and "add --yes" in asked.stderr
    store = LocalStore(tmp_path / "store")
    assert read_tombstone(store, dataset_id) is None

    out = frd("retire", dataset_id, "--yes", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"retired {dataset_id} (frd retire by hand): partition deleted")
    stone = read_tombstone(store, dataset_id)

    refused = frd("seed", "upload", str(seed), "--uuid", dataset_id, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1
    assert dataset_id in lines[0] and f"retired at {stone.retired_at}" in lines[0] and RESTORE_FLAG in lines[0]
    assert store.get_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl") == SEED  # the old seed is untouched

    again = frd("retire", dataset_id, "--yes", env=env)
    assert again.returncode == 0 and again.stdout.strip() == f"dataset {dataset_id} is already {stone.line()}"

    restored = frd("seed", "upload", str(seed), "--uuid", dataset_id, RESTORE_FLAG, env=env)
    assert restored.returncode == 0 and restored.stdout.strip() == dataset_id
    assert read_tombstone(store, dataset_id) is None

    unknown = frd("retire", str(uuid.uuid4()), "--yes", env=env)
    assert unknown.returncode == 2 and "no dataset" in unknown.stderr and len(unknown.stderr.splitlines()) == 1


# The sensors after retirement.


def tick(instance, store_resource, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"store": store_resource})
    return seed_upload_sensor(context)


def test_the_seed_sensor_skips_a_retired_uuid_and_keeps_adding_new_uploads(dagster_instance, tmp_path):
    resource = StoreResource(local_root=str(tmp_path / "store"))
    store = resource.get_store()
    retired, kept = ids(2)
    for d in (retired, kept):
        write_seed(store, d, SEED)
    first = tick(dagster_instance, resource)
    assert sorted(r.partition_key for r in first.run_requests) == sorted([kept, retired])
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [retired, kept])

    retire_dataset(dagster_instance, store, retired, reason="by test", policy=DEFAULT, now=time.time())
    time.sleep(0.05)
    write_seed(store, retired, SEED + SEED)  # a rewrite into the bucket behind the CLI's back
    new = str(uuid.uuid4())
    write_seed(store, new, SEED)
    second = tick(dagster_instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [new]
    assert [req.partition_keys for req in second.dynamic_partitions_requests] == [[new]]
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [new])

    # Nothing new: the retired upload is counted, not run, and stays skipped tick after tick.
    quiet = tick(dagster_instance, resource, second.cursor)
    assert not quiet.run_requests and "other keys" in quiet.skip_reason.skip_message

    # Restored on purpose: the tombstone goes before the seed is written, and the sensor adds it again.
    check_upload_allowed(store, retired, restore=True)
    time.sleep(0.05)
    write_seed(store, retired, SEED)
    third = tick(dagster_instance, resource, quiet.cursor)
    assert [r.partition_key for r in third.run_requests] == [retired]
    assert [req.partition_keys for req in third.dynamic_partitions_requests] == [[retired]]


def test_a_retired_uuid_is_refused_by_seed_dataset_and_by_the_upload_check(dagster_instance, local_store):
    from dagster import materialize

    from frd_assets.defs.assets import seed_dataset

    dataset_id = str(uuid.uuid4())
    write_seed(local_store, dataset_id, SEED)
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [dataset_id])
    retire_dataset(dagster_instance, local_store, dataset_id, reason="by test", policy=DEFAULT, now=NOW)
    with pytest.raises(DatasetRetired, match=f"dataset {dataset_id} was retired at 2027-01-15T08:00:00Z"):
        check_upload_allowed(local_store, dataset_id, restore=False)

    # Re-added by hand (the UI, GraphQL): the run fails at its first asset, naming the retirement.
    dagster_instance.add_dynamic_partitions(PARTITIONS_DEF, [dataset_id])
    result = materialize([seed_dataset], partition_key=dataset_id, instance=dagster_instance,
                         resources={"store": StoreResource(local_root=str(local_store.root))}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert f"dataset {dataset_id} was retired at" in failure and RESTORE_FLAG in failure
    assert json.loads(local_store.get_bytes(SEEDS_BUCKET, tombstone_key(dataset_id)))["reason"] == "by test"


def test_compose_and_helm_run_the_daemon_that_fires_the_schedule_under_the_code_s_defaults():
    import yaml

    from frd_assets.core import settings
    from frd_assets_tests.test_deployment import REPO, compose_default, example_env

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    default = retention_settings({})
    expected = {settings.FRD_RETENTION_IDLE_DAYS: str(default.idle_days),
                settings.FRD_RETENTION_DELETED: str(default.retire_deleted).lower(),
                settings.FRD_RETENTION_OBJECTS: default.objects, settings.FRD_RETENTION_RUNS: default.runs,
                settings.FRD_RETENTION_CRON: default.cron}
    example = example_env()
    # The code server reads the schedule's time, the cpu worker runs the job under the policy.
    for service in ("code-server", "cpu-worker"):
        env = compose["services"][service]["environment"]
        assert {name: compose_default(env[name]) for name in expected} == expected, service
    assert {name: example[name] for name in expected} == expected
    assert retention_settings(example) == default
    assert compose["services"]["dagster-daemon"]["command"][:2] == ["dagster-daemon", "run"]
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert values["dagsterDaemon"]["enabled"] is True


def test_the_schedule_s_run_is_accepted_by_the_coordinator_and_routed_to_the_cpu_queue(graphql, instance):
    """What the daemon submits when the schedule fires: a run of retire_datasets with no partition."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    from frd_assets.core.names import CPU_QUEUE, QUEUE_TAG
    from frd_assets_tests.test_routing import LAUNCH

    selector = {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__", "jobName": RETIRE_JOB}
    result = execute_dagster_graphql(graphql, LAUNCH, {"executionParams": {"selector": selector, "runConfigData": {}}})
    payload = result.data["launchRun"]
    assert payload["__typename"] == "LaunchRunSuccess", payload
    run = instance.get_run_by_id(payload["run"]["runId"])
    assert run.status == DagsterRunStatus.QUEUED and run.tags[QUEUE_TAG] == CPU_QUEUE
