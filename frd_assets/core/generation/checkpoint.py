"""Generation progress saved to the object store, so a retried run continues where the last one stopped."""

from __future__ import annotations

import json
from typing import Any, Protocol

from frd_assets.core.store import ObjectNotFound, Store


class Checkpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class StoreCheckpoint:
    """One JSON object; the store's atomic writes mean a crash leaves the previous checkpoint whole."""

    def __init__(self, store: Store, bucket: str, key: str):
        self.store, self.bucket, self.key = store, bucket, key

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_bytes(self.bucket, self.key))
        except ObjectNotFound:
            return None

    def save(self, state: dict[str, Any]) -> None:
        self.store.put_bytes(self.bucket, self.key, json.dumps(state, ensure_ascii=False).encode())

    def clear(self) -> None:
        self.store.delete(self.bucket, self.key)
