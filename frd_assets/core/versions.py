"""Immutable versions behind one pointer: how every rewritten object (datasets, reports, adapters) is stored.

An adapter is several files, and S3 has no multi-object transaction: rewriting them in place means a crash
between two PUTs leaves the new weights beside the old config (a torn adapter that loads with the wrong
LoRA scale, or not at all), and the last good adapter is gone. So a writer never touches what a reader may
be reading:

    <prefix>/versions/<version>/<file>...   written first, never changed afterwards
    <prefix>/CURRENT.json                   one small object, written last, naming the version

A single PUT is atomic, so a reader that reads the pointer and then the files it lists sees one whole
version, and a write that dies half-way leaves the pointer on the last good one. The pointer lists every
file with its size and SHA-256, which readers check, so a version is also proof against a truncated copy.

Pruning rule: after a new pointer is written, versions older than the current one are deleted except the
newest `keep - 1` of them (default keep=3: the current version and two before it stay, so a reader that
read the previous pointer a moment ago still finds its files). Versions newer than the pointer (a writer
still at work) are never pruned; a version left by a crashed writer is older than the next pointer and is
pruned in its turn.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from frd_assets.core.store import ObjectNotFound, Store, StoreError

POINTER = "CURRENT.json"
VERSIONS = "versions"
KEEP_VERSIONS = 3


class StaleVersion(StoreError):
    """The pointer moved to another version while a derived version was being written."""


@dataclass(frozen=True)
class Version:
    """One published version: where it lives, its files with size and SHA-256, and small facts about it."""

    bucket: str
    prefix: str
    version: str
    files: Mapping[str, Mapping[str, Any]]  # name -> {"size": int, "sha256": str}
    meta: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""

    @property
    def folder(self) -> str:
        return f"{self.prefix}/{VERSIONS}/{self.version}"

    def key(self, name: str) -> str:
        if name not in self.files:
            raise ObjectNotFound(f"version {self.version} of {self.prefix} has no file {name!r}")
        return f"{self.folder}/{name}"

    def to_json(self) -> bytes:
        body = {"version": self.version, "created_at": self.created_at, "files": dict(self.files),
                "meta": dict(self.meta)}
        return json.dumps(body, indent=2, sort_keys=True).encode()


def new_version_id() -> str:
    """Sortable by time (for pruning), unique across writers (the random tail)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or name == POINTER:
        raise ValueError(f"file name {name!r} in a version must be a plain relative path")
    return name


def publish(
    store: Store,
    bucket: str,
    prefix: str,
    files: Iterable[tuple[str, bytes | Callable[[], bytes]]],
    *,
    meta: Mapping[str, Any] | None = None,
    keep: int = KEEP_VERSIONS,
    log: Callable[[str], None] = lambda _msg: None,
    if_current: str | None = None,
) -> Version:
    """Writes the files as a new version, then the pointer; returns the version now current.

    files yields (name, bytes) or (name, a callable returning bytes), so a folder of large files is read
    one file at a time. A failure before the pointer write leaves the previous version current.
    if_current: publish only if the pointer still names that version when the pointer is about to be
    written (a writer that derives its version from another must not put an older one back); otherwise
    StaleVersion, and the files written are pruned with the next publish."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    version_id = new_version_id()
    folder = f"{prefix}/{VERSIONS}/{version_id}"
    entries: dict[str, dict[str, Any]] = {}
    for name, content in files:
        data = content() if callable(content) else content
        store.put_bytes(bucket, f"{folder}/{_check_name(name)}", data)
        entries[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if not entries:
        raise ValueError(f"a version of {store.uri(bucket, prefix)} needs at least one file")
    version = Version(bucket, prefix, version_id, entries, dict(meta or {}),
                      datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if if_current is not None:
        # Not atomic with the PUT below (S3 has no compare-and-swap that every server offers), but it narrows
        # the window from the whole write to one round trip; the GPU queue's limit of one run closes it.
        now = current(store, bucket, prefix).version
        if now != if_current:
            raise StaleVersion(f"{store.uri(bucket, prefix)} is at version {now}, not {if_current}: "
                               "a newer version was published meanwhile and stays current")
    store.put_bytes(bucket, f"{prefix}/{POINTER}", version.to_json())
    try:
        pruned = prune(store, bucket, prefix, current_version=version_id, keep=keep)
        if pruned:
            log(f"pruned {len(pruned)} old version(s) of {store.uri(bucket, prefix)}")
    except StoreError as exc:  # the new version is whole and current; an old one left behind is harmless
        log(f"pruning old versions of {store.uri(bucket, prefix)} failed ({exc}); they stay until the next write")
    return version


def folder_files(folder: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """Every file under folder as (relative name, reader), for publish."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return [(p.relative_to(folder).as_posix(), p.read_bytes) for p in paths]


def current(store: Store, bucket: str, prefix: str) -> Version:
    """The version the pointer names; ObjectNotFound when nothing was ever published there."""
    try:
        raw = store.get_bytes(bucket, f"{prefix}/{POINTER}")
    except ObjectNotFound:
        raise ObjectNotFound(f"nothing published at {store.uri(bucket, prefix)} (no {POINTER})") from None
    try:
        body = json.loads(raw)
        return Version(bucket, prefix, str(body["version"]), dict(body["files"]), dict(body.get("meta") or {}),
                       str(body.get("created_at", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{store.uri(bucket, f'{prefix}/{POINTER}')} is not a version pointer ({exc})") from None


def read(store: Store, version: Version, name: str) -> bytes:
    """One file of a version, checked against the size and SHA-256 the pointer recorded."""
    data = store.get_bytes(version.bucket, version.key(name))
    expected = version.files[name]
    if len(data) != expected.get("size") or hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise StoreError(
            f"{store.uri(version.bucket, version.key(name))} does not match its version record "
            f"({len(data)} bytes); the object was changed after it was published"
        )
    return data


def download(store: Store, version: Version, dest: Path) -> Path:
    """Every file of a version into dest, each checked; returns dest."""
    dest = Path(dest)
    for name in sorted(version.files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read(store, version, name))
    return dest


def version_ids(store: Store, bucket: str, prefix: str) -> list[str]:
    """Every version folder under prefix (whole or not), oldest first."""
    root = f"{prefix}/{VERSIONS}/"
    return sorted({info.key[len(root):].split("/", 1)[0] for info in store.list(bucket, root)})


def prune(store: Store, bucket: str, prefix: str, *, current_version: str, keep: int = KEEP_VERSIONS) -> list[str]:
    """Deletes versions older than current_version beyond the newest keep - 1 of them (see the module doc)."""
    older = [v for v in version_ids(store, bucket, prefix) if v < current_version]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for v in doomed:
        store.delete_prefix(bucket, f"{prefix}/{VERSIONS}/{v}/")
    return doomed


def remove(store: Store, bucket: str, prefix: str) -> int:
    """Removes the pointer first (so no reader is sent to a half-deleted version), then every version."""
    store.delete(bucket, f"{prefix}/{POINTER}")
    return store.delete_prefix(bucket, f"{prefix}/{VERSIONS}/")
