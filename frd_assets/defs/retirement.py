"""Retirement on the Dagster side: read what the policy needs through the instance's public API, retire.

`retire_datasets` (a job of one op, no asset) reads every dataset partition, its latest validated_dataset
verdict, its newest run and whether one is in flight, and the seed upload's time from one listing of the
seeds bucket; core/retirement.py chooses; each chosen dataset is then retired: tombstone first (from then on
the seed sensor skips the id), the partition (`delete_dynamic_partition`), its runs when FRD_RETENTION_RUNS
is `delete` (`delete_run`, which takes each run's event log with it), its store objects when
FRD_RETENTION_OBJECTS is `delete` (only that dataset's keys, core/retirement.delete_dataset_objects).
A schedule runs it daily (FRD_RETENTION_CRON); `frd retire UUID` retires one dataset with the same function.
"""

import time
from dataclasses import dataclass
from typing import Callable

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    OpExecutionContext,
    RunsFilter,
    ScheduleDefinition,
    job,
    op,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._utils.schedules import is_valid_cron_string

from frd_assets.core.datasets import SEEDS_BUCKET, is_dataset_id, seed_dataset_id
from frd_assets.core.names import (
    CPU_QUEUE,
    PARTITION_TAG,
    PARTITIONS_DEF,
    QUEUE_TAG,
    RETIRE_JOB,
    RETIRE_OP,
    RETIRE_SCHEDULE,
    VALIDATED_DATASET,
)
from frd_assets.core.retirement import (
    DatasetActivity,
    Retirement,
    choose_retirements,
    delete_dataset_objects,
    deletes_objects,
    deletes_runs,
    write_tombstone,
)
from frd_assets.core.settings import FRD_RETENTION_CRON, RetentionSettings, SettingsError, retention_settings
from frd_assets.core.store import Store
from frd_assets.defs.resources import StoreResource


def runs_in_flight(instance: DagsterInstance, dataset_id: str) -> list[str]:
    """Ids of the partition's runs that are queued or running."""
    return list(instance.get_run_ids(RunsFilter(tags={PARTITION_TAG: dataset_id}, statuses=IN_PROGRESS_RUN_STATUSES)))


def seed_upload_times(store: Store) -> dict[str, float]:
    """Dataset id -> last-modified time of its seed upload (the newest if both suffixes), from one listing."""
    times: dict[str, float] = {}
    for info in store.list(SEEDS_BUCKET):
        uuid = seed_dataset_id(info.key)
        if uuid is not None:
            times[uuid] = max(times.get(uuid, 0.0), info.last_modified)
    return times


def dataset_activity(instance: DagsterInstance, dataset_id: str, seed_uploaded_at: float | None) -> DatasetActivity:
    verdict = verdict_at = last_run_at = None
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(VALIDATED_DATASET), asset_partitions=[dataset_id]), limit=1
    ).records
    if records:
        mat = records[0].asset_materialization
        value = mat.metadata.get("verdict") if mat else None
        verdict, verdict_at = (value.value if value is not None else None), records[0].timestamp
    runs = instance.get_run_records(RunsFilter(tags={PARTITION_TAG: dataset_id}), limit=1)
    if runs:
        run = runs[0]
        last_run_at = max(run.update_timestamp.timestamp(), run.end_time or 0.0, run.create_timestamp.timestamp())
    return DatasetActivity(dataset_id, verdict, verdict_at, last_run_at, seed_uploaded_at,
                           in_flight=bool(runs_in_flight(instance, dataset_id)))


def gather_activity(instance: DagsterInstance, store: Store) -> list[DatasetActivity]:
    """One row per dataset partition: a few instance queries each, and one listing of the seeds bucket."""
    uploads = seed_upload_times(store)
    # A key that is no dataset id (added by hand over GraphQL) never ran anything: the coordinator refuses it.
    return [dataset_activity(instance, uuid, uploads.get(uuid))
            for uuid in instance.get_dynamic_partitions(PARTITIONS_DEF) if is_dataset_id(uuid)]


def plan_retirements(instance: DagsterInstance, store: Store, policy: RetentionSettings,
                     now: float) -> list[Retirement]:
    return choose_retirements(gather_activity(instance, store), policy, now)


@dataclass(frozen=True)
class Retired:
    dataset_id: str
    reason: str
    objects_deleted: int  # 0 with a `keep` policy
    runs_deleted: int

    def line(self) -> str:
        return (f"retired {self.dataset_id} ({self.reason}): partition deleted, "
                f"{self.objects_deleted} store objects deleted, {self.runs_deleted} runs deleted")


def retire_dataset(instance: DagsterInstance, store: Store, dataset_id: str, *, reason: str,
                   policy: RetentionSettings, now: float) -> Retired:
    """Retires one dataset: tombstone, partition, then runs and objects as the policy says. The tombstone goes
    first so that a seed sensor tick in the middle already skips the id instead of re-adding its partition."""
    write_tombstone(store, dataset_id, reason=reason, policy=policy, now=now)
    instance.delete_dynamic_partition(PARTITIONS_DEF, dataset_id)
    runs = 0
    if deletes_runs(policy):
        for run_id in instance.get_run_ids(RunsFilter(tags={PARTITION_TAG: dataset_id})):
            instance.delete_run(run_id)
            runs += 1
    objects = delete_dataset_objects(store, dataset_id) if deletes_objects(policy) else 0
    return Retired(dataset_id, reason, objects, runs)


def retire_chosen(instance: DagsterInstance, store: Store, policy: RetentionSettings, now: float,
                  log: Callable[[str], None]) -> list[Retired]:
    """What the job does: plan, then retire each chosen dataset, one log line each."""
    done = []
    for chosen in plan_retirements(instance, store, policy, now):
        retired = retire_dataset(instance, store, chosen.dataset_id, reason=chosen.reason, policy=policy, now=now)
        log(retired.line())
        done.append(retired)
    return done


@op(name=RETIRE_OP, tags={QUEUE_TAG: CPU_QUEUE})
def retire_datasets_op(context: OpExecutionContext, store: StoreResource) -> None:
    """Retires the datasets the retention policy (FRD_RETENTION_*) names."""
    policy = retention_settings()
    s = store.get_store()
    done = retire_chosen(context.instance, s, policy, time.time(), context.log.info)
    context.log.info(f"{len(done)} datasets retired (policy: deleted verdicts {policy.retire_deleted}, idle days "
                     f"{policy.idle_days or 'off'}, objects {policy.objects}, runs {policy.runs})")


@job(name=RETIRE_JOB, description="Retire the datasets the retention policy (FRD_RETENTION_*) names.")
def retire_datasets_job():
    retire_datasets_op()


def retire_schedule(policy: RetentionSettings | None = None) -> ScheduleDefinition:
    policy = policy or retention_settings()
    if not is_valid_cron_string(policy.cron):
        raise SettingsError(f"{FRD_RETENTION_CRON} {policy.cron!r} is not a cron schedule: use five fields such as "
                            f"'0 3 * * *' (daily at 03:00)")
    # On by default, like the sensors: the daemon (dagster dev, compose's dagster-daemon, Helm's daemon) fires it.
    return ScheduleDefinition(name=RETIRE_SCHEDULE, job=retire_datasets_job, cron_schedule=policy.cron,
                              default_status=DefaultScheduleStatus.RUNNING)


retire_datasets_schedule = retire_schedule()
