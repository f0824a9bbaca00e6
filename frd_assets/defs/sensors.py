"""Sensors that run the chain with nobody clicking.

- seed_upload_sensor: new or rewritten <uuid>.jsonl/.json objects in the seeds bucket become partitions
  and `prepare_dataset` runs (CPU). The store has no notifications (SeaweedFS has no bucket-notification
  API) and S3 lists only in key order, so a tick that listed the bucket would cost time in its size (2-4 s at
  100,000 seeds, issue 23). Instead, every upload the project makes is journaled (core/seeds.write_seed
  writes `_uploads/<hour>/<ns>-<random>-<seed key>` after the seed), and a tick reads the journal: the hour
  folders from its cursor on, then one lookup of the seed key each entry names and of its dataset's tombstone. An
  upload made with another S3 tool has no entry: a sweep lists the bucket for those, one shard at a time so that
  no tick costs time in the size of the bucket. Seed keys and tombstones start with their dataset id, a canonical
  lowercase UUID, so the shards are the 16 first hex digits (a listing with that prefix); a sweep tick reads the
  journal and then lists the shard whose turn it is, one every FRD_SEED_SWEEP_SECONDS / 16 seconds and at most
  one a tick, so that a full pass, and with it the wait of an upload made with another tool, takes
  FRD_SEED_SWEEP_SECONDS (or 16 sensor intervals, when an interval is longer than a shard's turn); see
  _shards_due. A tick without its cursor (a reset) or on an older cursor starts the rotation with one shard, not
  the whole bucket: the journal gives it the uploads of the last two minutes, the rotation the rest within a
  pass. FRD_SEED_SWEEP_SECONDS=0 lists the whole bucket in one listing every tick instead (tests, small
  deployments). Keys outside the shards (README.txt, an id in capitals) are in no shard listing: only that
  whole listing reports them with a log line; a shard listing reports the odd keys in its shard. The newest
  upload of a dataset is processed exactly once after it was written:
  * each shard's cursor is the newest last-modified time its last listing saw plus the key -> ETag of every
    object at exactly that time (S3 times have one-second resolution, so time alone cannot order two writes in
    one second, and a same-second rewrite of one key is told apart by its ETag); a tick takes an upload only if
    the last sweep of its shard did not see that version and no tick took it since (`handled`, key -> ETag,
    emptied of a shard's keys by that shard's next listing, whose new mark covers them: a version a journal
    tick took existed before that listing), and reads each journal entry once (`seen`);
  * an upload is done when the dataset's latest seed_dataset materialization records that very key and
    ETag (seed_dataset stores them), not when some run happened later: a run may have read the older seed;
  * an upload whose dataset has a run in flight is held in the cursor's `pending` map and looked at again
    every tick until that run ends, instead of being skipped for good.
  With the store unreachable a tick skips, naming the endpoint, and keeps its cursor.
  An upload of a retired dataset (its tombstone `<uuid>.retired.json`: in its shard's listing, beside its seed,
  or looked up beside a journaled seed) is skipped with one log line: it gets no partition again until restored on
  purpose (core/retirement.py).
- adapter_on_ready_sensor: a run-status sensor. When a run that materialized validated_dataset succeeds
  with the verdict READY_FOR_FINE_TUNING, it requests `train_adapter` (GPU) for it. A run-status sensor
  rather than an automation condition because the trigger is a verdict, not freshness: the rule reads as
  code, runs once per finished run, and a DELETED verdict simply stops there. The verdict is read from
  that run's own materialization event (the same record the store's version pointer holds), so a store
  outage at that moment cannot lose the adapter: a run-status sensor never looks at a run twice.
"""

import json
import time
from dataclasses import dataclass, field

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

from frd_assets.core.datasets import (
    HOUR_NS,
    JOURNAL_PREFIX,
    is_dataset_id,
    journal_entry,
    journal_folder,
    retired_dataset_id,
    seed_dataset_id,
)
from frd_assets.core.names import LORA_ADAPTER, PARTITION_TAG, SEED_DATASET, VALIDATED_DATASET
from frd_assets.core.retirement import RESTORE_FLAG, tombstone_key, utc_iso
from frd_assets.core.settings import service_settings
from frd_assets.core.store import SEEDS_BUCKET, ObjectInfo, StoreError
from frd_assets.core.validation import unready_reason
from frd_assets.defs.assets import SEED_ETAG, SEED_KEY
from frd_assets.defs.jobs import prepare_dataset_job, train_adapter_job
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource

SENSOR_INTERVAL = service_settings().sensor_interval


# Known uploads are looked up this many datasets to a query: a tick without its cursor (a reset sensor, a new
# deployment over a full bucket) sees every seed of a shard as fresh, and one query per dataset would take it past
# the sensor timeout at 100,000 datasets, so that it never advanced its cursor (issue 23). 2,000 rather than 500:
# each query opens a PostgreSQL connection: a tick over 6,250 known seeds (a shard at 100,000) took 0.31 to 0.36 s
# instead of 0.44 to 0.56 s (PostgreSQL, 2-core machine under load 5, three of each, by hand).
LOOKUP_CHUNK = 2000


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


# A journal entry is read if it lists within this long of its writer's clock reading: the gap between reading the
# clock and the PUT landing, and the skew between an uploader's clock and the sensor's. Older entries that show
# up late are the sweep's (FRD_SEED_SWEEP_SECONDS), like an upload made with another S3 tool.
JOURNAL_LOOKBACK_NS = 120 * 10**9

# The sweep's shards: seed keys and tombstones start with their dataset id, a canonical lowercase UUID, so by its
# first hex digit. One shard is one listing with that prefix (on S3 a sixteenth of the bucket's list requests);
# the journal's keys ('_uploads/') are in none. OTHER groups the keys outside the shards (README.txt, uppercase
# ids): only a full listing (FRD_SEED_SWEEP_SECONDS=0) sees them.
SHARDS = "0123456789abcdef"
OTHER = "other"


def _shard_of(key: str) -> str:
    return key[0] if key and key[0] in SHARDS else OTHER


@dataclass
class ShardMark:
    """Where the last listing of one shard left it."""

    mark: float = 0.0  # the newest last-modified time in that listing
    at_mark: dict[str, str] = field(default_factory=dict)  # key -> ETag of its objects at exactly that time


@dataclass
class SeedCursor:
    """What the seed sensor keeps between ticks (as JSON)."""

    shards: dict[str, ShardMark] = field(default_factory=dict)  # shard (first hex digit, or OTHER) -> its mark
    next_shard: int = 0  # the index in SHARDS of the shard the next sweep lists
    pending: dict[str, str] = field(default_factory=dict)  # key -> ETag of uploads waiting for a run in flight
    swept_at: float = 0.0  # the sweep's clock (see _shards_due); 0: never (no cursor, or one from before the journal)
    since_ns: int = 0  # the journal is read from here (ns since the epoch)...
    seen: set[str] = field(default_factory=set)  # ...but for these entries (names in their hour folder), read already
    handled: dict[str, str] = field(default_factory=dict)  # key -> ETag journal ticks took since its shard's sweep

    def shard(self, name: str) -> ShardMark:
        return self.shards.setdefault(name, ShardMark())

    def dumps(self) -> str:
        return json.dumps({"shards": {k: {"mark": v.mark, "at_mark": v.at_mark} for k, v in self.shards.items()},
                           "next_shard": self.next_shard, "pending": self.pending,
                           "swept_at": self.swept_at, "handled": self.handled,
                           "journal": {"since_ns": self.since_ns, "seen": sorted(self.seen)}}, sort_keys=True)


def _read_cursor(raw: str | None) -> SeedCursor:
    """The cursor. Two older formats read too, so that an upgraded deployment loses no upload and processes none
    twice: one mark for the whole bucket (mark, at_mark, pending; with swept_at, handled and journal once the
    journal existed) becomes that mark for every shard, each keeping the at_mark keys of its own."""
    if not raw:
        return SeedCursor()
    cursor = json.loads(raw)
    journal = cursor.get("journal") or {}
    if "shards" in cursor:
        shards = {k: ShardMark(float(v["mark"]), dict(v["at_mark"])) for k, v in cursor["shards"].items()}
    else:
        mark, at_mark = float(cursor["mark"]), dict(cursor["at_mark"])
        shards = {name: ShardMark(mark, {k: e for k, e in at_mark.items() if _shard_of(k) == name})
                  for name in (*SHARDS, OTHER)}
    return SeedCursor(shards, int(cursor.get("next_shard", 0)) % len(SHARDS), dict(cursor["pending"]),
                      float(cursor.get("swept_at", 0.0)), int(journal.get("since_ns", 0)),
                      set(journal.get("seen", [])), dict(cursor.get("handled", {})))


def _is_fresh(info: ObjectInfo, mark: float, at_mark: dict[str, str]) -> bool:
    if info.last_modified > mark:
        return True
    if info.last_modified < mark:
        return False
    seen = at_mark.get(info.key)
    return seen is None or (seen != "" and seen != info.etag)


def _untaken(info: ObjectInfo, cursor: SeedCursor) -> bool:
    """Neither the last sweep of its shard saw this version nor a journal tick since took it."""
    shard = cursor.shards.get(_shard_of(info.key)) or ShardMark()
    return _is_fresh(info, shard.mark, shard.at_mark) and cursor.handled.get(info.key) != info.etag


def _shards_due(cursor: SeedCursor, now: float, sweep_seconds: int) -> list[str]:
    """The shards this tick lists, and the sweep's clock moved on: one shard each FRD_SEED_SWEEP_SECONDS / 16
    seconds, at most one a tick, so a full pass takes FRD_SEED_SWEEP_SECONDS (600 s: a shard every 37.5 s, four
    ticks in five at the 30 s sensor interval), or 16 ticks where the interval is longer than a shard's turn.
    The clock runs on from the previous turn, not from this tick, so ticks that come a little late do not
    stretch the pass; it owes at most one turn, so a daemon back from a long stop, a reset (no cursor) or a
    clock that went back sweeps one shard, not sixteen at once. 0: every tick lists the whole bucket (tests,
    small deployments)."""
    if sweep_seconds == 0:
        cursor.swept_at = now
        return list(SHARDS)
    step = sweep_seconds / len(SHARDS)
    if cursor.swept_at and 0 <= now - cursor.swept_at < step:
        return []
    fresh_start = not cursor.swept_at or now < cursor.swept_at
    cursor.swept_at = now if fresh_start else max(cursor.swept_at + step, now - step)
    shard = SHARDS[cursor.next_shard]
    cursor.next_shard = (cursor.next_shard + 1) % len(SHARDS)
    return [shard]


def _sweep(s, cursor: SeedCursor, shards: list[str], now_ns: int) -> tuple[list[ObjectInfo], dict[str, float], int]:
    """The listing of the given shards of the seeds bucket (all of them: the whole bucket in one listing): every
    upload in them, journaled or not. Returns the fresh and held objects, retired id -> tombstone time, and the
    count of other keys; moves those shards' marks past what it listed. After the whole bucket, the journal goes
    on from (nearly) now: every seed it names so far was in the listing."""
    whole = len(shards) == len(SHARDS)
    listing = list(s.list(SEEDS_BUCKET, "" if whole else shards[0]))  # boto3 pages through any number of keys
    objects = [i for i in listing if not i.key.startswith(JOURNAL_PREFIX)]
    fresh = [i for i in objects if _untaken(i, cursor)]
    by_shard: dict[str, list[ObjectInfo]] = {}
    for i in objects:
        by_shard.setdefault(_shard_of(i.key), []).append(i)
    for name, listed in by_shard.items():
        mark = cursor.shard(name)
        mark.mark = max(mark.mark, max(i.last_modified for i in listed))
        mark.at_mark = {i.key: i.etag for i in listed if i.last_modified == mark.mark}
    # Retired ids, from their tombstones in the same listing (core/retirement.py): no extra request; a
    # tombstone lies in the shard of its seed.
    retired = {r: i.last_modified for i in objects if (r := retired_dataset_id(i.key)) is not None}
    by_key = {i.key: i for i in objects}
    held = [by_key[k] for k in cursor.pending if k in by_key]
    if whole:
        cursor.since_ns = now_ns - JOURNAL_LOOKBACK_NS
        cursor.seen = {i.key.rsplit("/", 1)[1] for i in listing
                       if (entry := journal_entry(i.key)) is not None and entry[0] >= cursor.since_ns}
    others = sum(1 for i in fresh if seed_dataset_id(i.key) is None and retired_dataset_id(i.key) is None)
    return fresh + held, retired, others


def _journal_folders(since_ns: int, now_ns: int):
    """The hour folders from since_ns's to the one after now's (an uploader's clock may run a little ahead)."""
    hour = since_ns - since_ns % HOUR_NS
    while hour <= now_ns + HOUR_NS:
        yield hour, journal_folder(hour)
        hour += HOUR_NS


def _read_journal(s, cursor: SeedCursor, now_ns: int) -> tuple[list[ObjectInfo], dict[str, float], set[str]]:
    """The uploads journaled since the cursor (core/datasets.py), looked up one by one: a listing of an hour
    folder or two, then per dataset the seed key each entry names and the tombstone, whatever the size of the
    bucket. (The seed's other suffix is not looked up: write_seed deleted it, and one written by another tool
    is the sweep's, whose run then reads the newest of both.) Returns the current seeds of the journaled
    datasets that no tick took yet, with those held for a run in flight; the journaled datasets' retired ids ->
    tombstone time; and the journaled ids."""
    since = cursor.since_ns or now_ns - JOURNAL_LOOKBACK_NS
    named: dict[str, set[str]] = {}  # dataset id -> the seed keys to look up
    names: set[str] = set()
    for hour, folder in _journal_folders(since, now_ns):
        start_after = f"{folder}{since:020d}" if hour <= since else ""
        for info in s.list(SEEDS_BUCKET, folder, start_after):
            entry = journal_entry(info.key)
            name = info.key[len(folder):]
            if entry is None or entry[0] < since or name in cursor.seen:
                continue
            names.add(name)
            named.setdefault(seed_dataset_id(entry[1]), set()).add(entry[1])
    journaled = set(named)
    held_ids = set()
    for key in cursor.pending:
        if (u := seed_dataset_id(key)) is not None:
            held_ids.add(u)
            named.setdefault(u, set()).add(key)
    ids = sorted(named)
    keys = [k for u in ids for k in (*sorted(named[u]), tombstone_key(u))]
    found = s.stat_many(SEEDS_BUCKET, keys) if keys else {}

    cursor.since_ns = max(since, now_ns - JOURNAL_LOOKBACK_NS)
    cursor.seen = {n for n in cursor.seen | names if int(n[:20]) >= cursor.since_ns}
    retired = {u: found[tombstone_key(u)].last_modified for u in ids if tombstone_key(u) in found}
    uploads = []
    for u in ids:
        seeds = [found[k] for k in named[u] if k in found]
        if not seeds:
            continue  # deleted since it was journaled: nothing to run
        current = max(seeds, key=lambda i: (i.last_modified, i.key))  # as core/seeds.current_seed chooses
        if u in held_ids or _untaken(current, cursor):
            uploads.append(current)
    return uploads, retired, journaled


@sensor(job=prepare_dataset_job, minimum_interval_seconds=SENSOR_INTERVAL, default_status=DefaultSensorStatus.RUNNING)
def seed_upload_sensor(context: SensorEvaluationContext, store: StoreResource):
    """One prepare_dataset run per new or rewritten seed upload; other keys are skipped with a log line."""
    cursor = _read_cursor(context.cursor)
    s = store.get_store()
    now, now_ns = time.time(), time.time_ns()
    shards = _shards_due(cursor, now, service_settings().seed_sweep_seconds)
    whole = len(shards) == len(SHARDS)
    uploads: list[ObjectInfo] = []
    retired: dict[str, float] = {}
    journaled: set[str] = set()
    skipped = 0
    try:
        if whole:
            # The whole bucket in one listing sees every journaled seed too: the journal is skipped to its end.
            uploads, retired, skipped = _sweep(s, cursor, shards, now_ns)
        else:
            # The journal first, then the shard: a version the journal took existed before the shard's listing,
            # which so shows it (or a later one, preferred below) and its new mark covers it.
            uploads, retired, journaled = _read_journal(s, cursor, now_ns)
            if shards:
                swept, swept_retired, skipped = _sweep(s, cursor, shards, now_ns)
                listed = {i.key for i in swept}
                uploads = [i for i in uploads if i.key not in listed] + swept
                retired.update(swept_retired)
    except StoreError as exc:
        return SensorResult(skip_reason=SkipReason(f"store unreachable, nothing read: {exc}"), cursor=context.cursor)

    # The newest upload per dataset among fresh ones and those held back while a run was in flight.
    candidates: dict[str, ObjectInfo] = {}
    of_retired = 0
    for info in uploads:
        uuid = seed_dataset_id(info.key)
        if uuid is None:
            if retired_dataset_id(info.key) is None:  # a tombstone is not an upload, nor worth a line
                context.log.info(
                    f"skipping {info.key!r} in bucket {SEEDS_BUCKET}: not named <uuid>.jsonl or <uuid>.json")
            continue
        if uuid in retired:
            of_retired += 1
            cursor.handled[info.key] = info.etag  # one line per upload, not one per sweep
            context.log.info(
                f"skipping {info.key!r}: dataset {uuid} was retired at {utc_iso(retired[uuid])}; "
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
    cursor.pending = {}
    for uuid, info in candidates.items():
        if uuid in existing:
            if uuid in busy:
                cursor.pending[info.key] = info.etag  # looked at again once that run has ended
                continue
            if _already_processed(latest.get(uuid), info):
                if uuid in journaled:
                    cursor.handled[info.key] = info.etag
                continue
        new[uuid] = info
        cursor.handled[info.key] = info.etag  # a later sweep of its shard sees it past the mark, already taken
    # What this tick's listing covered needs no entry: its shards' new marks are past it (a version a journal
    # tick took existed before the listing, so the listing showed it, a later one, or none).
    swept_groups = (*shards, OTHER) if whole else shards
    cursor.handled = {k: e for k, e in cursor.handled.items() if _shard_of(k) not in swept_groups}
    next_cursor = cursor.dumps()
    if not new:
        waiting = f", {len(cursor.pending)} waiting for a run in flight" if cursor.pending else ""
        waiting += f", {of_retired} of retired datasets" if of_retired else ""
        return SensorResult(
            skip_reason=SkipReason(f"no new seed uploads ({skipped} other keys{waiting})"), cursor=next_cursor
        )
    to_add = sorted(set(new) - existing)
    how = ("full listing" if whole else f"upload journal, shard {shards[0]}" if shards else "upload journal")
    context.log.info(
        f"{len(new)} new seed uploads ({how}), {len(to_add)} new partitions, {len(cursor.pending)} waiting")
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
