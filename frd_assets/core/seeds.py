"""Seed uploads in the seeds bucket: one object per dataset id, '<id>.jsonl' or '<id>.json'.

An upload replaces the object with the other suffix, so one id never has two seeds; while both exist (the
moment between the write and the delete, or after a user dropped both into the bucket by hand) the newest
one is the seed.
"""

from __future__ import annotations

import secrets
import time
from importlib import resources
from importlib.resources.abc import Traversable

from frd_assets.core.datasets import (
    EVAL_SUFFIX,
    HOUR_NS,
    JOURNAL_PREFIX,
    SEED_SUFFIXES,
    check_dataset_id,
    dataset_key,
    journal_entry,
    journal_key,
)
from frd_assets.core.records import check_seed_size
from frd_assets.core.store import SEEDS_BUCKET, ObjectInfo, ObjectNotFound, Store

SAMPLE_SEED = "sample_seed.jsonl"  # bundled in frd_assets/data: what `frd demo` uploads


def sample_seed() -> Traversable:
    """The project's bundled sample seed (a package resource: use resources.as_file for a path)."""
    return resources.files("frd_assets") / "data" / SAMPLE_SEED


def sample_seed_bytes() -> bytes:
    return sample_seed().read_bytes()


def seed_keys(dataset_id: str) -> list[str]:
    return [dataset_key(dataset_id, suffix=s) for s in SEED_SUFFIXES]


def write_seed(store: Store, dataset_id: str, data: bytes, suffix: str = ".jsonl") -> str:
    """Writes the seed object, then deletes the one with the other suffix, then journals the upload (core/
    datasets.py: the seed sensor reads the journal instead of listing the bucket); returns the key written.

    The journal entry comes last, so an entry the sensor lists always names a seed that is already there."""
    key = dataset_key(dataset_id, suffix=suffix)
    store.put_bytes(SEEDS_BUCKET, key, data)
    for other in seed_keys(dataset_id):
        if other != key:
            store.delete(SEEDS_BUCKET, other)
    store.put_bytes(SEEDS_BUCKET, journal_key(key, time.time_ns(), secrets.token_hex(4)), key.encode())
    return key


# Journal entries are needed until a sweep of the seed sensor has seen their seeds (FRD_SEED_SWEEP_SECONDS, 600 s by
# default); a day leaves room for a daemon that was down a while.
JOURNAL_KEEP_SECONDS = 86400


def expire_upload_journal(store: Store, now: float, *, keep_seconds: float = JOURNAL_KEEP_SECONDS) -> int:
    """Deletes the upload journal's entries (as write_seed names them: nothing else under the prefix) from hour
    folders that ended more than keep_seconds before now; returns how many. The daily retirement job calls it,
    so that the embedded store's journal stays a day long; on S3 a lifecycle rule on the prefix does the same."""
    cutoff_ns = int((now - keep_seconds) * 10**9)
    expired = [i.key for i in store.list(SEEDS_BUCKET, JOURNAL_PREFIX)
               if (entry := journal_entry(i.key)) is not None and entry[0] - entry[0] % HOUR_NS + HOUR_NS <= cutoff_ns]
    for key in expired:
        store.delete(SEEDS_BUCKET, key)
    return len(expired)


def current_seed(store: Store, dataset_id: str) -> ObjectInfo | None:
    """The newest seed object of the dataset, or None; ties in time go to the later key in sort order."""
    keys = set(seed_keys(dataset_id))
    infos = [i for i in store.list(SEEDS_BUCKET, f"{check_dataset_id(dataset_id)}.") if i.key in keys]
    return max(infos, key=lambda i: (i.last_modified, i.key)) if infos else None


def read_seed(store: Store, dataset_id: str) -> tuple[bytes, ObjectInfo]:
    """The newest seed's bytes with the ETag of exactly what was read; ObjectNotFound when there is none,
    SeedFormatError when it is over the seed size limit."""
    for _ in range(3):  # the object named by the listing can be replaced or removed before the GET
        info = current_seed(store, dataset_id)
        if info is None:
            break
        check_seed_size(info.size, store.uri(SEEDS_BUCKET, info.key))  # before downloading it
        try:
            return store.get_object(SEEDS_BUCKET, info.key)
        except ObjectNotFound:
            continue
    raise ObjectNotFound(
        f"no seed upload for dataset {dataset_id}: expected {store.uri(SEEDS_BUCKET, seed_keys(dataset_id)[0])} "
        f"(or .json); upload it with `frd seed upload FILE --uuid {dataset_id}`"
    )


def eval_key(dataset_id: str) -> str:
    return dataset_key(dataset_id, suffix=EVAL_SUFFIX)


def write_eval_set(store: Store, dataset_id: str, data: bytes) -> str:
    """Stores an evaluation set beside the seed; seed_dataset then holds out these tasks instead of a split.
    Written before the seed by `frd seed upload --eval`, so the run the seed upload starts sees it."""
    key = eval_key(dataset_id)
    store.put_bytes(SEEDS_BUCKET, key, data)
    return key


def read_eval_set(store: Store, dataset_id: str) -> tuple[bytes, ObjectInfo] | None:
    try:
        return store.get_object(SEEDS_BUCKET, eval_key(dataset_id))
    except ObjectNotFound:
        return None
