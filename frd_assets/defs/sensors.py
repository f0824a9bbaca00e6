"""Sensors that run the chain with nobody clicking.

- seed_upload_sensor: new or rewritten <uuid>.jsonl/.json objects in the seeds bucket become partitions
  and `prepare_dataset` runs (CPU). The store has no notifications (SeaweedFS has no bucket-notification
  API), so it lists from a cursor. The newest upload of a dataset is processed exactly once after it was
  written:
  * the cursor is the newest last-modified time seen plus the key -> ETag of every object at exactly that
    time (S3 times have one-second resolution, so time alone cannot order two writes in one second, and a
    same-second rewrite of one key is told apart by its ETag);
  * an upload is done when the dataset's latest seed_dataset materialization records that very key and
    ETag (seed_dataset stores them), not when some run happened later: a run may have read the older seed;
  * an upload whose dataset has a run in flight is held in the cursor's `pending` map and looked at again
    every tick until that run ends, instead of being skipped for good.
  With the store unreachable a tick skips, naming the endpoint, and keeps its cursor.
  An upload of a retired dataset (its tombstone `<uuid>.retired.json` is in the same listing) is skipped
  with one log line: it gets no partition again until restored on purpose (core/retirement.py).
- adapter_on_ready_sensor: a run-status sensor. When a run that materialized validated_dataset succeeds
  with the verdict READY_FOR_FINE_TUNING, it requests `train_adapter` (GPU) for it. A run-status sensor
  rather than an automation condition because the trigger is a verdict, not freshness: the rule reads as
  code, runs once per finished run, and a DELETED verdict simply stops there. The verdict is read from
  that run's own materialization event (the same record the store's version pointer holds), so a store
  outage at that moment cannot lose the adapter: a run-status sensor never looks at a run twice.
"""

import json

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from frd_assets.core.datasets import is_dataset_id, retired_dataset_id, seed_dataset_id
from frd_assets.core.names import LORA_ADAPTER, PARTITION_TAG, SEED_DATASET, VALIDATED_DATASET
from frd_assets.core.retirement import RESTORE_FLAG, utc_iso
from frd_assets.core.settings import service_settings
from frd_assets.core.store import SEEDS_BUCKET, ObjectInfo, StoreError
from frd_assets.core.validation import unready_reason
from frd_assets.defs.assets import SEED_ETAG, SEED_KEY
from frd_assets.defs.jobs import prepare_dataset_job, train_adapter_job
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource

SENSOR_INTERVAL = service_settings().sensor_interval


# Known uploads are looked up this many datasets to a query: a tick without its cursor (a reset sensor, a new
# deployment over a full bucket) sees every seed as fresh, and one query per dataset would take it past the
# sensor timeout at 100,000 datasets, so that it never advanced its cursor (issue 23).
LOOKUP_CHUNK = 500


def _chunks(items: list[str]):
    for i in range(0, len(items), LOOKUP_CHUNK):
        yield items[i:i + LOOKUP_CHUNK]


def _latest_seed_materializations(context: SensorEvaluationContext, uuids: list[str]) -> dict:
    """Dataset id -> its latest seed_dataset materialization record, for those that have one."""
    latest: dict = {}
    for chunk in _chunks(uuids):
        cursor = None
        while True:
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(SEED_DATASET), asset_partitions=chunk), limit=1000,
                cursor=cursor)
            for record in result.records:  # newest first
                latest.setdefault(record.partition_key, record)
            if not result.has_more:
                break
            cursor = result.cursor
    return latest


def _already_processed(record, info: ObjectInfo) -> bool:
    """This exact upload (key and ETag) is what the dataset's latest seed_dataset materialization read."""
    if record is None:
        return False
    meta = record.asset_materialization.metadata if record.asset_materialization else {}
    if SEED_ETAG in meta:
        return meta[SEED_ETAG].value == info.etag and meta[SEED_KEY].value == info.key
    # Materialized before seed_dataset recorded ETags: the old rule, by time.
    return record.timestamp > info.last_modified


def _in_flight(context: SensorEvaluationContext, uuids: list[str]) -> set[str]:
    """The datasets with a run queued or running (launched by a sensor, by hand or over GraphQL)."""
    busy: set[str] = set()
    for chunk in _chunks(uuids):
        runs = context.instance.get_runs(RunsFilter(tags={PARTITION_TAG: chunk}, statuses=IN_PROGRESS_RUN_STATUSES))
        busy.update(run.tags.get(PARTITION_TAG) for run in runs)
    return busy


def _read_cursor(raw: str | None) -> tuple[float, dict[str, str], dict[str, str]]:
    """(mark, key -> ETag of the objects at the mark, pending key -> ETag)."""
    if not raw:
        return 0.0, {}, {}
    cursor = json.loads(raw)
    return float(cursor["mark"]), dict(cursor["at_mark"]), dict(cursor["pending"])


def _is_fresh(info: ObjectInfo, mark: float, at_mark: dict[str, str]) -> bool:
    if info.last_modified > mark:
        return True
    if info.last_modified < mark:
        return False
    seen = at_mark.get(info.key)
    return seen is None or (seen != "" and seen != info.etag)


@sensor(job=prepare_dataset_job, minimum_interval_seconds=SENSOR_INTERVAL, default_status=DefaultSensorStatus.RUNNING)
def seed_upload_sensor(context: SensorEvaluationContext, store: StoreResource):
    """One prepare_dataset run per new or rewritten seed upload; other keys are skipped with a log line."""
    mark, at_mark, pending = _read_cursor(context.cursor)
    s = store.get_store()
    try:
        listing = list(s.list(SEEDS_BUCKET))  # boto3 pages through any number of keys
    except StoreError as exc:
        return SensorResult(skip_reason=SkipReason(f"store unreachable, nothing read: {exc}"), cursor=context.cursor)

    by_key = {i.key: i for i in listing}
    fresh = [i for i in listing if _is_fresh(i, mark, at_mark)]
    if listing:
        newest = max(i.last_modified for i in listing)
        if newest > mark:
            mark = newest
        at_mark = {i.key: i.etag for i in listing if i.last_modified == mark}

    # Retired ids, from their tombstones in the same listing (core/retirement.py): no extra request.
    retired = {r: i for i in listing if (r := retired_dataset_id(i.key)) is not None}
    # The newest upload per dataset among fresh ones and those held back while a run was in flight.
    candidates: dict[str, ObjectInfo] = {}
    skipped = of_retired = 0
    held = [by_key[k] for k in pending if k in by_key]
    for info in fresh + held:
        uuid = seed_dataset_id(info.key)
        if uuid is None and retired_dataset_id(info.key) is not None:
            continue  # a tombstone, not an upload
        if uuid is None:
            skipped += 1
            context.log.info(f"skipping {info.key!r} in bucket {SEEDS_BUCKET}: not named <uuid>.jsonl or <uuid>.json")
            continue
        if uuid in retired:
            of_retired += 1
            context.log.info(
                f"skipping {info.key!r}: dataset {uuid} was retired at {utc_iso(retired[uuid].last_modified)}; "
                f"upload it with `frd seed upload FILE --uuid {uuid} {RESTORE_FLAG}` to bring it back on purpose"
            )
            continue
        best = candidates.get(uuid)
        if best is None or (info.last_modified, info.key) > (best.last_modified, best.key):
            candidates[uuid] = info

    # Only known partitions can have been processed or have a run in flight, so a tick of 1,000 first
    # uploads asks the instance nothing per upload. Which candidates are known is one indexed lookup of
    # just those keys: listing every partition would cost each tick time in the size of the deployment.
    existing = (context.instance.get_existing_dynamic_partitions(dataset_partitions.name, sorted(candidates))
                if candidates else set())
    known = sorted(existing)
    busy = _in_flight(context, known) if known else set()
    latest = _latest_seed_materializations(context, sorted(existing - busy)) if known else {}
    new: dict[str, ObjectInfo] = {}
    pending = {}
    for uuid, info in candidates.items():
        if uuid in existing:
            if uuid in busy:
                pending[info.key] = info.etag  # looked at again once that run has ended
                continue
            if _already_processed(latest.get(uuid), info):
                continue
        new[uuid] = info
    next_cursor = json.dumps({"mark": mark, "at_mark": at_mark, "pending": pending}, sort_keys=True)
    if not new:
        waiting = f", {len(pending)} waiting for a run in flight" if pending else ""
        waiting += f", {of_retired} of retired datasets" if of_retired else ""
        return SensorResult(
            skip_reason=SkipReason(f"no new seed uploads ({skipped} other keys{waiting})"), cursor=next_cursor
        )
    to_add = sorted(set(new) - existing)
    context.log.info(f"{len(new)} new seed uploads, {len(to_add)} new partitions, {len(pending)} waiting")
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=uuid, run_key=f"{uuid}:{info.etag}:{info.last_modified}")
            for uuid, info in sorted(new.items())
        ],
        dynamic_partitions_requests=[dataset_partitions.build_add_request(to_add)] if to_add else [],
        cursor=next_cursor,
    )


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    request_job=train_adapter_job,
    minimum_interval_seconds=SENSOR_INTERVAL,
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
)
def adapter_on_ready_sensor(context: RunStatusSensorContext):
    """After a successful run that materialized validated_dataset: the adapter, if the verdict is READY."""
    run = context.dagster_run
    uuid = run.tags.get(PARTITION_TAG)
    if not is_dataset_id(uuid):
        return SkipReason(f"run {run.run_id} is not for a dataset partition (partition {uuid!r})")

    def latest_record(asset: str):
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[uuid]), limit=1
        ).records
        return records[0] if records else None

    def materialized_here(asset: str) -> bool:
        record = latest_record(asset)
        return record is not None and record.run_id == run.run_id

    # Read what the run did, not how it was selected: job runs carry no asset selection of their own.
    validated = latest_record(VALIDATED_DATASET)
    if validated is None or validated.run_id != run.run_id or materialized_here(LORA_ADAPTER):
        return SkipReason(f"run {run.run_id} did not validate {uuid} without training its adapter")
    meta = validated.asset_materialization.metadata if validated.asset_materialization else {}
    problem = unready_reason(uuid, {key: value.value for key, value in meta.items()})
    if problem:
        return SkipReason(f"{problem}: no adapter")
    return RunRequest(partition_key=uuid, run_key=f"adapter:{uuid}:{run.run_id}")
