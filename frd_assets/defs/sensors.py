"""The seed-upload sensor: new <uuid>.jsonl/.json objects in the seeds bucket become partitions and runs."""

import json

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from frd_assets.core.store import SEED_SUFFIXES, SEEDS_BUCKET, ObjectInfo
from frd_assets.defs.jobs import seed_to_adapter_job
from frd_assets.defs.partitions import dataset_partitions, is_dataset_uuid
from frd_assets.defs.resources import StoreResource


def seed_uuid(key: str) -> str | None:
    """'<uuid>.jsonl' or '<uuid>.json' -> uuid; anything else -> None."""
    for suffix in SEED_SUFFIXES:
        if key.endswith(suffix) and is_dataset_uuid(key[: -len(suffix)]):
            return key[: -len(suffix)]
    return None


def _already_processed(context: SensorEvaluationContext, uuid: str, info: ObjectInfo) -> bool:
    """seed_dataset was materialized for this UUID after the object was last written."""
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("seed_dataset"), asset_partitions=[uuid]), limit=1
    )
    return bool(result.records) and result.records[0].timestamp >= info.last_modified


@sensor(job=seed_to_adapter_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.STOPPED)
def seed_upload_sensor(context: SensorEvaluationContext, store: StoreResource):
    """Lists the seeds bucket past the cursor (last-modified time, key); one run per new or rewritten seed."""
    cursor = json.loads(context.cursor) if context.cursor else {"last_modified": 0.0, "key": ""}
    mark = (cursor["last_modified"], cursor["key"])
    new: dict[str, ObjectInfo] = {}
    newest = mark
    for info in store.get_store().list(SEEDS_BUCKET):
        position = (info.last_modified, info.key)
        if position <= mark:
            continue
        newest = max(newest, position)
        uuid = seed_uuid(info.key)
        if uuid is None:
            context.log.info(f"skipping {info.key!r} in bucket {SEEDS_BUCKET}: not named <uuid>.jsonl or <uuid>.json")
            continue
        if _already_processed(context, uuid, info):
            continue
        new[uuid] = info
    next_cursor = json.dumps({"last_modified": newest[0], "key": newest[1]})
    if not new:
        return SensorResult(skip_reason=SkipReason("no new seed uploads"), cursor=next_cursor)
    existing = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    to_add = sorted(set(new) - existing)
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=uuid, run_key=f"{uuid}:{info.etag}:{info.last_modified}")
            for uuid, info in sorted(new.items())
        ],
        dynamic_partitions_requests=[dataset_partitions.build_add_request(to_add)] if to_add else [],
        cursor=next_cursor,
    )
