"""Generation progress saved to the object store, so a retried run continues where the last one stopped."""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol

from frd_assets.core.store import ObjectNotFound, Store

# The checkpoint's record of the input versions it was made from.
INPUTS = "inputs"


class Checkpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class StoreCheckpoint:
    """One JSON object; the store's atomic writes mean a crash leaves the previous checkpoint whole.

    inputs names the versions the generation reads (the seed_dataset version): a checkpoint saved from
    other inputs is not loaded. generate() also compares its fingerprint (the seed instructions, the
    teacher and the settings), but two seed versions with the same instructions and other outputs, or a
    run of another upload, share that fingerprint; the version does not."""

    def __init__(self, store: Store, bucket: str, key: str, *, inputs: Mapping[str, Any] | None = None):
        self.store, self.bucket, self.key = store, bucket, key
        self.inputs = dict(inputs or {})

    def load(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.store.get_bytes(self.bucket, self.key))
        except ObjectNotFound:
            return None
        if state.get(INPUTS) != self.inputs:
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        data = {**state, INPUTS: self.inputs}
        self.store.put_bytes(self.bucket, self.key, json.dumps(data, ensure_ascii=False).encode())

    def clear(self) -> None:
        self.store.delete(self.bucket, self.key)
