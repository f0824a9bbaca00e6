"""Retiring datasets: which ones the retention policy names, what of them goes, and the tombstone that stays.

A retired dataset loses its dynamic partition (the Dagster side does that: defs/retirement.py), so the
partition count of a deployment follows its live datasets instead of every upload ever made. Its store
objects and its run history go only when the policy says `delete` (core/settings.py, FRD_RETENTION_*).

What always stays is a tombstone: one small JSON object `seeds/<id>.retired.json` saying when, why and
under which policy. A later upload under that id is refused (`frd seed upload`) and skipped by the seed
sensor, so it cannot silently mix with the old objects a `keep` policy left behind; `--restore-retired`
removes the tombstone on purpose. The tombstone lies in the seeds bucket beside the seed: the seed sensor's
sweep learns the retired ids from the same listing, and a journal tick looks up the tombstone of each
journaled id with its seed (defs/sensors.py).

Dagster-free; `choose_retirements` is a pure function of the rows the Dagster side reads.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from typing import Iterable

from frd_assets.core.datasets import (
    ADAPTERS_BUCKET,
    DATASETS_BUCKET,
    EVALUATIONS_BUCKET,
    RETIRED_SUFFIX,
    SEEDS_BUCKET,
    check_dataset_id,
    dataset_key,
)
from frd_assets.core.seeds import eval_key, seed_keys
from frd_assets.core.settings import DELETE, RetentionSettings
from frd_assets.core.store import ObjectNotFound, Store

DAY = 86400.0
RESTORE_FLAG = "--restore-retired"
BY_HAND = "frd retire by hand"


@dataclass(frozen=True)
class DatasetActivity:
    """What the policy looks at for one dataset partition. Times are seconds since the epoch; None: never."""

    dataset_id: str
    verdict: str | None = None  # the latest validated_dataset verdict
    verdict_at: float | None = None
    last_run_at: float | None = None  # the last status change of any run of the partition
    seed_uploaded_at: float | None = None  # the seed object's last-modified time; None when it is gone
    in_flight: bool = False  # a run of the partition is queued or running


@dataclass(frozen=True)
class Retirement:
    dataset_id: str
    reason: str


def last_activity(row: DatasetActivity) -> float | None:
    times = [t for t in (row.last_run_at, row.verdict_at, row.seed_uploaded_at) if t is not None]
    return max(times) if times else None


def choose_retirements(rows: Iterable[DatasetActivity], policy: RetentionSettings, now: float) -> list[Retirement]:
    """The datasets the policy retires, in id order:

    - verdict DELETED (with `retire_deleted`), unless a seed upload newer than that verdict waits for its run;
    - idle: no run, verdict or upload for `idle_days` (0: never idle). A dataset with no time at all (a
      partition added by hand and never run) is not idle: its age is unknown, not large;
    - never one with a run queued or running: retiring under a run would leave the run's output orphaned.
    """
    from frd_assets.core.validation import DELETED  # here: the gate's imports take most of a second

    chosen = []
    for row in sorted(rows, key=lambda r: r.dataset_id):
        if row.in_flight:
            continue
        newer_upload = (row.seed_uploaded_at is not None and row.verdict_at is not None
                        and row.seed_uploaded_at > row.verdict_at)
        if policy.retire_deleted and row.verdict == DELETED and not newer_upload:
            chosen.append(Retirement(row.dataset_id, f"verdict {row.verdict}"))
            continue
        last = last_activity(row)
        if policy.idle_days and last is not None and now - last >= policy.idle_days * DAY:
            chosen.append(Retirement(row.dataset_id, f"no run or upload for {int((now - last) // DAY)} days "
                                                     f"(policy: {policy.idle_days})"))
    return chosen


def tombstone_key(dataset_id: str) -> str:
    return dataset_key(dataset_id, suffix=RETIRED_SUFFIX)


@dataclass(frozen=True)
class Tombstone:
    dataset_id: str
    retired_at: str  # ISO 8601, UTC
    reason: str
    policy: dict  # the RetentionSettings it was retired under: what was deleted and what kept

    def line(self) -> str:
        return f"retired at {self.retired_at} ({self.reason})"


def utc_iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_tombstone(store: Store, dataset_id: str, *, reason: str, policy: RetentionSettings, now: float) -> Tombstone:
    """Written first when retiring: from then on the seed sensor skips the id, whatever happens next."""
    stone = Tombstone(check_dataset_id(dataset_id), utc_iso(now), reason, asdict(policy))
    store.put_bytes(SEEDS_BUCKET, tombstone_key(dataset_id), json.dumps(asdict(stone), sort_keys=True).encode())
    return stone


def read_tombstone(store: Store, dataset_id: str) -> Tombstone | None:
    """The dataset's tombstone, or None when it is not retired. An unreadable tombstone still retires the id
    (its object's time stands in for the record): refusing an upload wrongly is the safe side."""
    key = tombstone_key(dataset_id)
    try:
        data, info = store.get_object(SEEDS_BUCKET, key)
    except ObjectNotFound:
        return None
    try:
        fields = json.loads(data)
        return Tombstone(dataset_id, str(fields["retired_at"]), str(fields["reason"]), dict(fields["policy"]))
    except (ValueError, KeyError, TypeError):
        return Tombstone(dataset_id, utc_iso(info.last_modified), f"unreadable record {store.uri(SEEDS_BUCKET, key)}",
                         {})


def remove_tombstone(store: Store, dataset_id: str) -> None:
    store.delete(SEEDS_BUCKET, tombstone_key(dataset_id))


class DatasetRetired(ValueError):
    """An upload under a retired dataset id, refused; the message is one line naming the id, when, and the flag."""


def refusal(stone: Tombstone) -> str:
    return (f"dataset {stone.dataset_id} was {stone.line()}: an upload under its uuid would mix with what is left "
            f"of it; upload without --uuid for a new dataset, or add {RESTORE_FLAG} to bring it back on purpose")


def check_upload_allowed(store: Store, dataset_id: str, *, restore: bool) -> None:
    """Refuses an upload under a retired id (DatasetRetired), or with restore removes the tombstone: before the
    seed is written, so that the sensor never sees the new upload beside a tombstone and skips it."""
    stone = read_tombstone(store, dataset_id)
    if stone is None:
        return
    if not restore:
        raise DatasetRetired(refusal(stone))
    remove_tombstone(store, dataset_id)


def delete_dataset_objects(store: Store, dataset_id: str) -> int:
    """Deletes every object of this one dataset (its seed and evaluation set, its versions and checkpoint, its
    adapters and evaluations) and nothing else: each key and prefix comes from dataset_key, and each prefix
    ends in '/', so it names this id's folder only. The tombstone stays. Returns how many objects went."""
    count = 0
    for key in (*seed_keys(dataset_id), eval_key(dataset_id)):
        if store.exists(SEEDS_BUCKET, key):
            store.delete(SEEDS_BUCKET, key)
            count += 1
    prefix = dataset_key(dataset_id) + "/"
    for bucket in (DATASETS_BUCKET, ADAPTERS_BUCKET, EVALUATIONS_BUCKET):
        count += store.delete_prefix(bucket, prefix)
    return count


def deletes_objects(policy: RetentionSettings) -> bool:
    return policy.objects == DELETE


def deletes_runs(policy: RetentionSettings) -> bool:
    return policy.runs == DELETE
