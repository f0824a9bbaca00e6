"""Sensors that run the chain with nobody clicking.

- seed_upload_sensor: new or rewritten <uuid>.jsonl/.json objects in the seeds bucket become partitions
  and `prepare_dataset` runs (CPU). The store has no notifications (SeaweedFS has no bucket-notification
  API), so it lists from a cursor: the newest last-modified time seen plus the keys seen at exactly that
  time (S3 times have one-second resolution, so a key alone cannot order two uploads in one second).
- adapter_on_ready_sensor: a run-status sensor. When a run that materialized validated_dataset succeeds
  and the partition's status record says READY_FOR_FINE_TUNING, it requests `train_adapter` (GPU) for it.
  A run-status sensor rather than an automation condition because the trigger is a verdict, not freshness:
  the rule reads as code, runs once per finished run, and a DELETED verdict simply stops there.
"""

import json
import os

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

from frd_assets.core.store import DATASETS_BUCKET, SEED_SUFFIXES, SEEDS_BUCKET, ObjectInfo, ObjectNotFound, status_key
from frd_assets.core.validation import READY
from frd_assets.defs.jobs import prepare_dataset_job, train_adapter_job
from frd_assets.defs.partitions import dataset_partitions, is_dataset_uuid
from frd_assets.defs.resources import StoreResource

SENSOR_INTERVAL = int(os.environ.get("FRD_SENSOR_INTERVAL_SECONDS") or 30)


def seed_uuid(key: str) -> str | None:
    """'<uuid>.jsonl' or '<uuid>.json' -> uuid; anything else -> None."""
    for suffix in SEED_SUFFIXES:
        if key.endswith(suffix) and is_dataset_uuid(key[: -len(suffix)]):
            return key[: -len(suffix)]
    return None


def _processed_since(context: SensorEvaluationContext, uuids: list[str]) -> dict[str, float]:
    """uuid -> time of its latest seed_dataset materialization, for the UUIDs that have one."""
    seen: dict[str, float] = {}
    for uuid in uuids:
        result = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("seed_dataset"), asset_partitions=[uuid]), limit=1
        )
        if result.records:
            seen[uuid] = result.records[0].timestamp
    return seen


def _in_flight(context: SensorEvaluationContext, uuid: str) -> bool:
    """A run for this partition is already queued or running (launched by hand or over GraphQL)."""
    runs = context.instance.get_runs(
        RunsFilter(tags={"dagster/partition": uuid}, statuses=IN_PROGRESS_RUN_STATUSES), limit=1
    )
    return bool(runs)


@sensor(job=prepare_dataset_job, minimum_interval_seconds=SENSOR_INTERVAL, default_status=DefaultSensorStatus.RUNNING)
def seed_upload_sensor(context: SensorEvaluationContext, store: StoreResource):
    """One prepare_dataset run per new or rewritten seed upload; other keys are skipped with a log line."""
    cursor = json.loads(context.cursor) if context.cursor else {"last_modified": 0.0, "keys_at": []}
    mark, keys_at = cursor["last_modified"], set(cursor["keys_at"])
    fresh: list[ObjectInfo] = []
    skipped = 0
    for info in store.get_store().list(SEEDS_BUCKET):  # boto3 pages through any number of keys
        if info.last_modified < mark or (info.last_modified == mark and info.key in keys_at):
            continue
        fresh.append(info)
    if fresh:
        newest = max(i.last_modified for i in fresh)
        if newest > mark:
            mark, keys_at = newest, set()
        keys_at |= {i.key for i in fresh if i.last_modified == mark}
    next_cursor = json.dumps({"last_modified": mark, "keys_at": sorted(keys_at)})

    candidates: dict[str, ObjectInfo] = {}
    for info in fresh:
        uuid = seed_uuid(info.key)
        if uuid is None:
            skipped += 1
            context.log.info(f"skipping {info.key!r} in bucket {SEEDS_BUCKET}: not named <uuid>.jsonl or <uuid>.json")
            continue
        if uuid not in candidates or info.last_modified > candidates[uuid].last_modified:
            candidates[uuid] = info
    # A seed already turned into seed_dataset after it was written (by `frd demo`, a manual run or an
    # earlier cursor), or with a run in flight, is not new work. Only known partitions can be either, so a
    # tick of 1,000 first uploads asks the instance nothing per upload.
    existing = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    known = [u for u in candidates if u in existing]
    done = _processed_since(context, known)
    busy = {u for u in known if _in_flight(context, u)}
    new = {u: i for u, i in candidates.items() if done.get(u, -1.0) < i.last_modified and u not in busy}
    if not new:
        return SensorResult(skip_reason=SkipReason(f"no new seed uploads ({skipped} other keys)"), cursor=next_cursor)
    to_add = sorted(set(new) - existing)
    context.log.info(f"{len(new)} new seed uploads, {len(to_add)} new partitions")
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
def adapter_on_ready_sensor(context: RunStatusSensorContext, store: StoreResource):
    """After a successful run that materialized validated_dataset: the adapter, if the verdict is READY."""
    run = context.dagster_run
    uuid = run.tags.get("dagster/partition")
    if not uuid:
        return SkipReason("not a dataset partition run")

    def materialized_here(asset: str) -> bool:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[uuid]), limit=1
        ).records
        return bool(records) and records[0].run_id == run.run_id

    # Read what the run did, not how it was selected: job runs carry no asset selection of their own.
    if not materialized_here("validated_dataset") or materialized_here("lora_adapter"):
        return SkipReason(f"run {run.run_id} did not validate {uuid} without training its adapter")
    try:
        status = json.loads(store.get_store().get_bytes(DATASETS_BUCKET, status_key(uuid)))
    except ObjectNotFound:
        return SkipReason(f"dataset {uuid} has no status record")
    if status.get("verdict") != READY:
        return SkipReason(f"dataset {uuid} is {status.get('verdict')}: no adapter")
    return RunRequest(partition_key=uuid, run_key=f"adapter:{uuid}:{run.run_id}")
