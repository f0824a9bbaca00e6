"""What a dataset id is, and the one function that builds a store key for a dataset.

A dataset id is a canonical lowercase UUID (``0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10``) and nothing else:
not uppercase, not braced, not with a trailing slash, dot or newline. Every layer that takes an id from
outside (partition keys, the sensor, the GraphQL client, the CLI) checks it here, and every store key for
a dataset is built by `dataset_key`, which checks it again. That is the rule that keeps one dataset's run
off another's objects: pathlib collapses ``A//x`` and S3 servers strip a leading ``/``, so a key built
from ``A/`` or ``/A`` would otherwise land on A's objects.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from frd_assets.core.names import ADAPTER_EVALUATION, LORA_ADAPTER

_DATASET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EXAMPLE_DATASET_ID = "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"

# Seed uploads are '<id>.jsonl' or '<id>.json' in the seeds bucket; one id has one seed object. An
# evaluation set uploaded with it lies beside it as '<id>.eval.jsonl'.
SEED_SUFFIXES = (".jsonl", ".json")
EVAL_SUFFIX = ".eval.jsonl"
# A retired dataset's tombstone lies beside its seed as '<id>.retired.json' (core/retirement.py): the seed
# sensor's sweep of the seeds bucket sees it in the same listing (the shard of its id's first digit), and a journal
# tick looks it up beside the seed.
RETIRED_SUFFIX = ".retired.json"
# A path segment below a dataset id: letters, digits, '.', '_' and '-', never '.' or '..' alone.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


class InvalidDatasetId(ValueError):
    """A value used as a dataset id that is not a canonical lowercase UUID; the message says which and why."""


def is_dataset_id(value: Any) -> bool:
    return isinstance(value, str) and _DATASET_ID.fullmatch(value) is not None


def check_dataset_id(value: Any, *, what: str = "dataset id") -> str:
    """Returns value when it is a canonical lowercase UUID, else raises InvalidDatasetId naming it."""
    if is_dataset_id(value):
        return value
    hint = ""
    if isinstance(value, str) and is_dataset_id(value.strip().strip("/").strip().lower()):
        hint = f" (did you mean {value.strip().strip('/').strip().lower()!r}?)"
    raise InvalidDatasetId(
        f"{what} {value!r} is not a dataset id: use a canonical lowercase UUID such as {EXAMPLE_DATASET_ID}, "
        f"with no slashes, spaces, dots or capitals{hint}"
    )


def dataset_key(dataset_id: str, *parts: str, suffix: str = "") -> str:
    """The one builder of a store key for a dataset: '<id>/<part>/...' or, for a seed, '<id><suffix>'.

    Refuses a non-canonical id and any empty, '.' or '..' segment, so no key for one dataset can name
    another's objects or leave its prefix.
    """
    key = check_dataset_id(dataset_id)
    for part in parts:
        if not isinstance(part, str) or not _SEGMENT.fullmatch(part) or part in (".", ".."):
            raise ValueError(f"store key segment {part!r} for dataset {key} is not a plain name")
        key = f"{key}/{part}"
    if suffix and (parts or suffix not in (*SEED_SUFFIXES, EVAL_SUFFIX, RETIRED_SUFFIX)):
        raise ValueError(f"suffix {suffix!r} is only for keys of the seeds bucket: one of {', '.join(SEED_SUFFIXES)}, "
                         f"{EVAL_SUFFIX}, {RETIRED_SUFFIX}")
    return key + suffix


def seed_dataset_id(key: str) -> str | None:
    """'<id>.jsonl' or '<id>.json' -> id; any other key of the seeds bucket -> None."""
    for suffix in SEED_SUFFIXES:
        if key.endswith(suffix) and is_dataset_id(key[: -len(suffix)]):
            return key[: -len(suffix)]
    return None


def retired_dataset_id(key: str) -> str | None:
    """'<id>.retired.json' (a tombstone) -> id; any other key of the seeds bucket -> None."""
    if key.endswith(RETIRED_SUFFIX) and is_dataset_id(key[: -len(RETIRED_SUFFIX)]):
        return key[: -len(RETIRED_SUFFIX)]
    return None


# The upload journal: every seed upload the project makes (core/seeds.write_seed) also writes one empty object
# '_uploads/<YYYY-MM-DDTHH>/<20-digit ns>-<8 hex>-<seed key>' to the seeds bucket. The store has no
# notifications and S3 lists only in key order, so without it the seed sensor would list the whole bucket every
# tick; with it a tick lists one or two hour folders and looks up the seeds they name (defs/sensors.py). The
# name carries all of it (no read per entry); the hour folder keeps one listing small and lets an operator
# expire old entries by prefix. An upload made with another S3 tool writes no entry: the sensor's sweep, a listing
# of one shard of the bucket at a time, a full pass every FRD_SEED_SWEEP_SECONDS, finds those. The time is the
# uploader's clock: a late or skewed one only delays an upload to that sweep, never loses it.
JOURNAL_PREFIX = "_uploads/"
HOUR_NS = 3600 * 10**9
_JOURNAL_NAME = re.compile(r"(\d{20})-[0-9a-f]{8}-(.+)")


def journal_folder(time_ns: int) -> str:
    """'_uploads/<YYYY-MM-DDTHH>/': the hour folder (UTC) of the journal entries written at time_ns."""
    hour = datetime.datetime.fromtimestamp(time_ns // 10**9, datetime.timezone.utc).strftime("%Y-%m-%dT%H")
    return f"{JOURNAL_PREFIX}{hour}/"


def journal_key(seed_key: str, time_ns: int, token: str) -> str:
    """The one builder of a journal entry's key, for the seed object seed_key written at time_ns; token
    (8 hex digits, random) keeps two entries of one nanosecond apart."""
    if seed_dataset_id(seed_key) is None:
        raise ValueError(f"journal entry for {seed_key!r}: not a seed key '<id>.jsonl' or '<id>.json'")
    if not re.fullmatch(r"[0-9a-f]{8}", token) or not 0 <= time_ns < 10**20:
        raise ValueError(f"journal entry for {seed_key!r}: token {token!r} or time {time_ns} out of range")
    return f"{journal_folder(time_ns)}{time_ns:020d}-{token}-{seed_key}"


def journal_entry(key: str) -> tuple[int, str] | None:
    """A journal entry's key -> (time in ns, seed key); any other key -> None."""
    if not key.startswith(JOURNAL_PREFIX):
        return None
    folder, _, name = key[len(JOURNAL_PREFIX):].partition("/")
    match = _JOURNAL_NAME.fullmatch(name)
    if match is None or seed_dataset_id(match.group(2)) is None:
        return None
    time_ns = int(match.group(1))
    if journal_folder(time_ns) != f"{JOURNAL_PREFIX}{folder}/":
        return None
    return time_ns, match.group(2)


# Where each asset's versions live (see core/versions.py): the one mapping from asset and dataset to store.
SEEDS_BUCKET = "seeds"
DATASETS_BUCKET = "datasets"
ADAPTERS_BUCKET = "lora-adapters"
EVALUATIONS_BUCKET = "evaluations"


def asset_location(asset_name: str, dataset_id: str) -> tuple[str, str]:
    """(bucket, prefix) of an asset's versions for a dataset: adapters in lora-adapters/<id>, evaluations
    in evaluations/<id>, the datasets in datasets/<id>/<asset>."""
    if asset_name == LORA_ADAPTER:
        return ADAPTERS_BUCKET, dataset_key(dataset_id)
    if asset_name == ADAPTER_EVALUATION:
        return EVALUATIONS_BUCKET, dataset_key(dataset_id)
    return DATASETS_BUCKET, dataset_key(dataset_id, asset_name)


def data_file_name(asset_name: str) -> str:
    """The JSONL file of an asset's rows inside its version folder."""
    return "answers.jsonl" if asset_name == ADAPTER_EVALUATION else f"{asset_name}.jsonl"


def checkpoint_location(dataset_id: str) -> tuple[str, str]:
    """(bucket, key) of the generation checkpoint: one JSON object, rewritten by single atomic PUTs."""
    return DATASETS_BUCKET, dataset_key(dataset_id, "generation_checkpoint.json")
