"""Retirement on the Dagster side: read what the policy needs through the instance's public API, retire.

`retire_datasets` (a job of one op, no asset) reads every dataset partition, its latest validated_dataset
verdict, its runs' last activity and whether one is in flight (one paged walk over the verdicts and one
over the runs), and the seed upload's time from one listing of the seeds bucket; core/retirement.py
chooses; each chosen dataset is then retired: tombstone first (from then on the seed sensor skips the id),
the partition (`delete_dynamic_partition`), its runs when FRD_RETENTION_RUNS is `delete` (`delete_run`,
which takes each run's event log with it), its store objects when FRD_RETENTION_OBJECTS is `delete` (only
that dataset's keys, core/retirement.delete_dataset_objects).
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
from frd_assets.core.seeds import JOURNAL_KEEP_SECONDS, expire_upload_journal
from frd_assets.core.settings import (
    FRD_RETENTION_CRON,
    RetentionSettings,
    SettingsError,
    retention_settings,
    service_settings,
)
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


# Rows per page when walking the instance's runs and verdicts: one query per page instead of three per
# partition (12-13 ms each on SQLite, measured at 500 partitions: 40 minutes a day at 100,000).
PAGE = 1000


def latest_verdicts(instance: DagsterInstance) -> dict[str, tuple[str | None, float]]:
    """Dataset id -> (verdict, time) of its latest validated_dataset materialization: one walk, newest first."""
    found: dict[str, tuple[str | None, float]] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(VALIDATED_DATASET)),
                                               limit=PAGE, cursor=cursor)
        for record in page.records:
            key = record.partition_key
            if key is None or key in found:
                continue
            mat = record.asset_materialization
            value = mat.metadata.get("verdict") if mat else None
            found[key] = (value.value if value is not None else None, record.timestamp)
        if not page.has_more:
            return found
        cursor = page.cursor


def run_activity(instance: DagsterInstance) -> tuple[dict[str, float], set[str]]:
    """(dataset id -> time of the last status change of any of its runs, ids with a run queued or running):
    one walk over the run records, newest first."""
    last: dict[str, float] = {}
    busy: set[str] = set()
    cursor = None
    while True:
        records = instance.get_run_records(limit=PAGE, cursor=cursor)
        for record in records:
            key = record.dagster_run.tags.get(PARTITION_TAG)
            if key is None:
                continue
            when = max(record.update_timestamp.timestamp(), record.end_time or 0.0)
            last[key] = max(last.get(key, 0.0), when)
            if record.dagster_run.status in IN_PROGRESS_RUN_STATUSES:
                busy.add(key)
        if len(records) < PAGE:
            return last, busy
        cursor = records[-1].dagster_run.run_id


def gather_activity(instance: DagsterInstance, store: Store) -> list[DatasetActivity]:
    """One row per dataset partition, from one walk over the verdicts, one over the runs and one listing of
    the seeds bucket."""
    uploads = seed_upload_times(store)
    verdicts = latest_verdicts(instance)
    last_run, busy = run_activity(instance)
    rows = []
    # A key that is no dataset id (added by hand over GraphQL) never ran anything: the coordinator refuses it.
    for uuid in instance.get_dynamic_partitions(PARTITIONS_DEF):
        if is_dataset_id(uuid):
            verdict, verdict_at = verdicts.get(uuid, (None, None))
            rows.append(DatasetActivity(uuid, verdict, verdict_at, last_run.get(uuid), uploads.get(uuid),
                                        in_flight=uuid in busy))
    return rows


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
        # The walk was a snapshot: a run the seed sensor started since then keeps its partition until next time.
        busy = runs_in_flight(instance, chosen.dataset_id)
        if busy:
            log(f"not retiring {chosen.dataset_id} ({chosen.reason}) now: run {busy[0]} started since the "
                "policy read the runs")
            continue
        retired = retire_dataset(instance, store, chosen.dataset_id, reason=chosen.reason, policy=policy, now=now)
        log(retired.line())
        done.append(retired)
    return done


@op(name=RETIRE_OP, tags={QUEUE_TAG: CPU_QUEUE})
def retire_datasets_op(context: OpExecutionContext, store: StoreResource) -> None:
    """Retires the datasets the retention policy (FRD_RETENTION_*) names."""
    policy = retention_settings()
    s = store.get_store()
    now = time.time()
    done = retire_chosen(context.instance, s, policy, now, context.log.info)
    context.log.info(f"{len(done)} datasets retired (policy: deleted verdicts {policy.retire_deleted}, idle days "
                     f"{policy.idle_days or 'off'}, objects {policy.objects}, runs {policy.runs})")
    # The upload journal write_seed keeps for the seed sensor: entries older than a day are no longer needed
    # (a sweep has seen their seeds since), and would otherwise lengthen every sweep of the embedded store.
    keep = max(JOURNAL_KEEP_SECONDS, 2 * service_settings().seed_sweep_seconds)
    context.log.info(f"{expire_upload_journal(s, now, keep_seconds=keep)} upload journal entries expired")


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
