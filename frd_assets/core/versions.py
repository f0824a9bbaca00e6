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

Ordering: version ids sort by the time their writer started (new_version_id), and the pointer only moves
forward. Just before writing it, a writer reads the pointer; if it names a newer version, the writer was
overtaken and its publish fails with StaleVersion naming both (its files stay, to be pruned later). The
write itself is conditional on the pointer read (Store.put_bytes_if: S3's If-Match / If-None-Match, a flock
on the local store), so a pointer that moved between the read and the write sends the writer back to read
again instead of being overwritten. Version ids carry their writer's clock: writers on machines whose clocks
disagree by more than the time between two publishes can still be ordered wrongly.

Pruning rule: after a new pointer is written, versions older than the current one are deleted except the
newest `keep - 1` of them (default keep=3: the current version and two before it stay), and never one
younger than PRUNE_GRACE: a writer overtaken mid-write keeps its files until it learns it was overtaken, and a
reader that read an older pointer a moment ago still finds its files, however many publishes came between.
Versions newer than the pointer (a writer still at work) are never pruned; a version left by a crashed
writer is older than the next pointer and is pruned in its turn once past the grace period.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from frd_assets.core.store import ObjectNotFound, PreconditionFailed, Store, StoreError

POINTER = "CURRENT.json"
VERSIONS = "versions"
KEEP_VERSIONS = 3
# Far longer than any one upload of a dataset or an adapter takes, so pruning never deletes the folder of a
# writer that is still writing, nor the files of a version a reader has just been sent to by the pointer.
PRUNE_GRACE = timedelta(hours=1)
# Each failed conditional pointer write means another writer's pointer landed; a few rounds settle any
# realistic number of writers of one prefix (and most end in StaleVersion after one).
POINTER_ATTEMPTS = 10
_ID_TIME = "%Y%m%dT%H%M%S%fZ"


class StaleVersion(StoreError):
    """The pointer moved to a newer version while this version was being written; the pointer was left as
    it is."""


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
    """Sortable by time (for ordering and pruning), unique across writers (the random tail)."""
    return f"{datetime.now(timezone.utc).strftime(_ID_TIME)}-{secrets.token_hex(4)}"


def version_time(version_id: str) -> datetime | None:
    """When the writer of a version started; None for a folder name new_version_id did not make."""
    try:
        return datetime.strptime(version_id.split("-", 1)[0], _ID_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


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
    grace: timedelta = PRUNE_GRACE,
    log: Callable[[str], None] = lambda _msg: None,
) -> Version:
    """Writes the files as a new version, then the pointer; returns the version now current.

    files yields (name, bytes) or (name, a callable returning bytes), so a folder of large files is read
    one file at a time. A failure before the pointer write leaves the previous version current.
    StaleVersion when a newer version was published while the files were written (see the module doc);
    the files of a stale publish stay until pruning takes them."""
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
    _move_pointer(store, version)
    try:
        pruned = prune(store, bucket, prefix, current_version=version_id, keep=keep, grace=grace)
        if pruned:
            log(f"pruned {len(pruned)} old version(s) of {store.uri(bucket, prefix)}")
    except StoreError as exc:  # the new version is whole and current; an old one left behind is harmless
        log(f"pruning old versions of {store.uri(bucket, prefix)} failed ({exc}); they stay until the next write")
    return version


def _read_pointer(store: Store, bucket: str, prefix: str) -> tuple[str | None, str | None]:
    """(the version the pointer names, the pointer's ETag); (None, None) when there is no pointer. A pointer
    that is no JSON names no version but has an ETag, so a publish may still replace it (conditionally)."""
    try:
        raw, info = store.get_object(bucket, f"{prefix}/{POINTER}")
    except ObjectNotFound:
        return None, None
    try:
        return str(json.loads(raw)["version"]), info.etag
    except (ValueError, KeyError, TypeError):
        return None, info.etag


def _move_pointer(store: Store, version: Version) -> None:
    """Points the prefix at version unless the pointer names a newer one: read, compare,
    then a write conditional on what was read, so nothing written in between is overwritten."""
    bucket, prefix, uri = version.bucket, version.prefix, store.uri(version.bucket, version.prefix)
    for _ in range(POINTER_ATTEMPTS):
        now, etag = _read_pointer(store, bucket, prefix)
        if now is not None and now > version.version:
            raise StaleVersion(f"{uri} is at version {now}, newer than version {version.version} of this write, "
                               "which was overtaken and not published; materialize again if this data should win")
        try:
            store.put_bytes_if(bucket, f"{prefix}/{POINTER}", version.to_json(), etag=etag)
            return
        except PreconditionFailed:
            continue  # another writer's pointer landed between the read and the write: judge against that one
    raise StoreError(f"the pointer of {uri} changed {POINTER_ATTEMPTS} times while version {version.version} "
                     "was being published; materialize again")


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


def prune(store: Store, bucket: str, prefix: str, *, current_version: str, keep: int = KEEP_VERSIONS,
          grace: timedelta = PRUNE_GRACE) -> list[str]:
    """Deletes versions older than current_version beyond the newest keep - 1 of them, none younger than
    grace and none whose age cannot be read from its name (see the module doc)."""
    older = [v for v in version_ids(store, bucket, prefix) if v < current_version]
    cutoff = datetime.now(timezone.utc) - grace
    doomed = [v for v in older[: max(0, len(older) - (keep - 1))]
              if (started := version_time(v)) is not None and started < cutoff]
    for v in doomed:
        store.delete_prefix(bucket, f"{prefix}/{VERSIONS}/{v}/")
    return doomed


def remove_version(store: Store, bucket: str, prefix: str, version_id: str,
                   log: Callable[[str], None] = lambda _msg: None) -> int:
    """Removes one version: the pointer only while it names that version (a conditional delete, so a pointer
    to a version published meanwhile is never removed), then the version's files. Returns the number of
    objects deleted, the pointer included."""
    if not version_id or "/" in version_id or version_id in (".", ".."):
        raise ValueError(f"version id {version_id!r} must be one folder name under {store.uri(bucket, prefix)}")
    removed = 0
    for _ in range(POINTER_ATTEMPTS):
        now, etag = _read_pointer(store, bucket, prefix)
        if now != version_id or etag is None:
            if now is not None:
                log(f"{store.uri(bucket, prefix)} is at version {now}, which stays current")
            break
        try:
            # Pointer first: no reader is sent to a version whose files are going.
            store.delete_if(bucket, f"{prefix}/{POINTER}", etag=etag)
            removed += 1
            break
        except PreconditionFailed:
            continue  # the pointer moved meanwhile: read it again
    return removed + store.delete_prefix(bucket, f"{prefix}/{VERSIONS}/{version_id}/")
