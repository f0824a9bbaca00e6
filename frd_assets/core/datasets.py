"""What a dataset id is, and the one function that builds a store key for a dataset.

A dataset id is a canonical lowercase UUID (``0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10``) and nothing else:
not uppercase, not braced, not with a trailing slash, dot or newline. Every layer that takes an id from
outside (partition keys, the sensor, the GraphQL client, the CLI) checks it here, and every store key for
a dataset is built by `dataset_key`, which checks it again. That is the rule that keeps one dataset's run
off another's objects: pathlib collapses ``A//x`` and S3 servers strip a leading ``/``, so a key built
from ``A/`` or ``/A`` would otherwise land on A's objects.
"""

from __future__ import annotations

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
# sensor lists the seeds bucket every tick anyway, so it learns which ids are retired at no extra cost.
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
