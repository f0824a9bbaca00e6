"""One object-store abstraction with two backends: S3 (MinIO, any S3 endpoint) and a local folder."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from frd_assets.core.datasets import ADAPTERS_BUCKET, DATASETS_BUCKET, EVALUATIONS_BUCKET, SEEDS_BUCKET
from frd_assets.core.settings import FRD_LOCAL_STORE, secret, store_settings

BUCKETS = (SEEDS_BUCKET, DATASETS_BUCKET, ADAPTERS_BUCKET, EVALUATIONS_BUCKET)
STAT_THREADS = 32  # S3 lookups in flight at once (S3Store.stat_many): a HEAD waits on latency, not on this CPU


class StoreError(RuntimeError):
    """A store operation failed; the message names the bucket and key, never a credential."""


class StoreFull(StoreError):
    """The store's disk has no room for an object: retrying the same write cannot succeed until space is freed."""


class ObjectNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PreconditionFailed(StoreError):
    """A conditional write or delete was refused: the object changed (or appeared, or went) since it was read."""


@dataclass(frozen=True, order=True)
class ObjectInfo:
    last_modified: float  # seconds since the epoch; ordering by (time, key) makes a listing cursor
    key: str
    size: int
    etag: str


def check_key(bucket: str, key: str) -> str:
    """A key names one object: no empty, '.' or '..' segment, no leading '/', no control characters.

    pathlib collapses 'a//b' and S3 servers strip a leading '/', so either would let two spellings name
    one object; both backends refuse them rather than guess."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"empty key in bucket {bucket!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or c == "\\" for c in key):
        raise StoreError(f"invalid key {key!r} in bucket {bucket!r}: empty, '.' or '..' segments and control "
                         "characters are refused")
    return key


class Store(ABC):
    """Buckets of keyed byte objects. Writes are atomic: a reader sees the old object or the new one."""

    @abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_bytes_if(self, bucket: str, key: str, data: bytes, *, etag: str | None) -> None:
        """Writes only while the object's ETag is still etag (None: only while there is no object), as one
        atomic step; PreconditionFailed otherwise. The compare-and-swap that keeps a pointer from going back."""

    @abstractmethod
    def delete_if(self, bucket: str, key: str, *, etag: str) -> None:
        """Deletes only while the object's ETag is still etag, as one atomic step; PreconditionFailed otherwise
        (a missing object included)."""

    @abstractmethod
    def get_object(self, bucket: str, key: str) -> tuple[bytes, ObjectInfo]:
        """The bytes and the facts (time, size, etag) of the one version that was read."""

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.get_object(bucket, key)[0]

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None: ...

    @abstractmethod
    def list(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """The objects whose key starts with prefix and sorts after start_after, in key order."""

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """The facts (time, size, etag) of one object; ObjectNotFound when there is none. Both backends look
        without reading the bytes; this fallback reads them."""
        return self.get_object(bucket, key)[1]

    def stat_many(self, bucket: str, keys: list[str]) -> dict[str, ObjectInfo]:
        """Key -> facts of those keys that name an object (the seed sensor's lookups: one per key, not a listing)."""
        found = {}
        for key in keys:
            try:
                found[key] = self.stat(bucket, key)
            except ObjectNotFound:
                continue
        return found

    @abstractmethod
    def uri(self, bucket: str, key: str = "") -> str: ...

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.get_bytes(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        infos = list(self.list(bucket, prefix))
        for info in infos:
            self.delete(bucket, info.key)
        return len(infos)


class LocalStore(Store):
    """A folder per bucket under root: the embedded default. Symlinks are never followed: a link dropped
    into a bucket would otherwise read (and echo in errors) a file outside the store."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, bucket: str, key: str) -> Path:
        check_key(bucket, key)
        if key.startswith("/"):
            raise StoreError(f"invalid key {key!r} in bucket {bucket!r}")
        path = self.root / bucket / key
        # root is resolved, so any difference after resolving is a symlink somewhere on the way.
        if path.resolve() != path:
            raise StoreError(f"{path} is or passes through a symlink; the local store does not follow links: "
                             "copy the file into the store instead")
        return path

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        self._write(bucket, key, path, data)

    @contextmanager
    def _bucket_lock(self, bucket: str) -> Iterator[None]:
        """An exclusive flock on the bucket's folder, for the compare-and-swap of the conditional writes.

        The bucket folder, not the key's: delete() removes a key's folders once empty, and a lock held on a
        removed folder would lock nothing. Conditional writes are one small file each (pointers), so one lock
        per bucket costs nothing measurable. flock binds every process on this machine; a store folder that
        machines share over a network filesystem gets no such promise (use S3 for that)."""
        import fcntl  # POSIX only, like the rest of the deployment; imported here so Windows can still read

        bucket_dir = self.root / bucket  # callers checked it with _path first
        bucket_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(bucket_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _etag(self, path: Path) -> str | None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _local_info("", st).etag if stat.S_ISREG(st.st_mode) else None

    def put_bytes_if(self, bucket: str, key: str, data: bytes, *, etag: str | None) -> None:
        path = self._path(bucket, key)
        with self._bucket_lock(bucket):
            found = self._etag(path)
            if found != etag:
                raise PreconditionFailed(f"{self.uri(bucket, key)} changed since it was read "
                                         f"({'absent' if found is None else 'present'} now); read it again")
            self._write(bucket, key, path, data)

    def delete_if(self, bucket: str, key: str, *, etag: str) -> None:
        path = self._path(bucket, key)
        with self._bucket_lock(bucket):
            if self._etag(path) != etag:
                raise PreconditionFailed(f"{self.uri(bucket, key)} changed since it was read; read it again")
            self.delete(bucket, key)

    def _write(self, bucket: str, key: str, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: rename is atomic within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                free = shutil.disk_usage(path.parent).free
                raise StoreFull(
                    f"no space left writing {self.uri(bucket, key)} ({len(data):,} bytes): {free:,} bytes free on "
                    f"the disk of {self.root}; free space there or point {FRD_LOCAL_STORE} at a larger disk"
                ) from None
            raise

    def get_object(self, bucket: str, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(bucket, key)
        try:
            # O_NOFOLLOW closes the window between the symlink check and the open.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}") from None
        except OSError as exc:
            if path.is_symlink():
                raise StoreError(f"{path} is a symlink; the local store does not follow links") from None
            if path.is_dir():
                raise ObjectNotFound(f"no object {self.uri(bucket, key)}") from None
            raise StoreError(f"reading {path} failed: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())  # the facts of the file that was opened, not of a later rename
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"no object {self.uri(bucket, key)}")
            data = f.read()
        return data, _local_info(key, st)

    def exists(self, bucket: str, key: str) -> bool:
        path = self._path(bucket, key)
        return path.is_file() and not path.is_symlink()

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        path.unlink(missing_ok=True)
        # Drop folders left empty so a deleted prefix leaves no trace.
        parent = path.parent
        bucket_dir = self.root / bucket
        while parent != bucket_dir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        check_key(bucket, key)
        try:
            path = self._path(bucket, key)
        except StoreError:  # a link on the way: no object, as the listing skips links
            raise ObjectNotFound(f"no object {self.uri(bucket, key)} (a symlink is not followed)") from None
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}")
        return _local_info(key, st)

    def stat_many(self, bucket: str, keys: list[str]) -> dict[str, ObjectInfo]:
        # One lstat per key at the top of a real bucket folder: the path checks of stat (pathlib, resolve) cost
        # ten times the lstat itself, and the seed sensor looks up two keys per journaled upload (issue 23).
        bucket_dir = self.root / bucket
        try:
            real = stat.S_ISDIR(os.lstat(bucket_dir).st_mode)
        except FileNotFoundError:
            return {}
        found = {}
        for key in keys:
            if not real or "/" in key:  # a linked bucket, or a key below a folder that could be a link
                found.update(super().stat_many(bucket, [key]))
                continue
            check_key(bucket, key)
            try:
                st = os.lstat(f"{bucket_dir}/{key}")
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISREG(st.st_mode):  # a link is no object, as in the listing
                found[key] = _local_info(key, st)
        return found

    def list(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        bucket_dir = self.root / bucket
        if not bucket_dir.is_dir() or bucket_dir.is_symlink():
            return
        # Walk only the folder the prefix names: listing one dataset's versions must not stat every file.
        start = bucket_dir
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if head:
            start = bucket_dir / head
            if not start.is_dir() or start.resolve() != start:
                return
        # scandir, one lstat per file and keys joined as strings: the seed sensor's sweep lists the whole seeds
        # bucket, and pathlib per file cost 3 s at 100,000 seeds (issue 23).
        found = []
        folders = [(str(start), f"{head}/" if head else "")]
        while folders:
            folder, key_prefix = folders.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):  # removed while listing
                continue
            for entry in entries:
                if entry.is_symlink():
                    continue
                key = key_prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        # Only a folder that can hold a key with the prefix: the seed sensor's shard listings
                        # ('a') must not walk the upload journal's hour folders.
                        if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                            folders.append((entry.path, key + "/"))
                    elif not entry.name.startswith(".tmp-") and key.startswith(prefix) and key > start_after:
                        found.append(_local_info(key, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:  # deleted while listing
                    continue
        yield from sorted(found, key=lambda i: i.key)

    def uri(self, bucket: str, key: str = "") -> str:
        return str(self.root / bucket / key) if key else str(self.root / bucket)


def _local_info(key: str, st: os.stat_result) -> ObjectInfo:
    # mtime in ns and size: every atomic replace makes a new file, so this changes with every write.
    return ObjectInfo(st.st_mtime, key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}")


def _s3_info(key: str, size: int, meta: dict) -> ObjectInfo:
    """The facts of an S3 object from a GET, HEAD or listing entry (each has LastModified and a quoted ETag)."""
    return ObjectInfo(meta["LastModified"].timestamp(), key, size, meta.get("ETag", "").strip('"'))


class S3Store(Store):
    """S3 over HTTP with boto3; buckets are created on first write when missing."""

    def __init__(self, client, *, endpoint: str = ""):
        self.client = client
        self.endpoint = endpoint
        self._ready_buckets: set[str] = set()

    @classmethod
    def connect(cls, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> "S3Store":
        import boto3
        from botocore.config import Config

        if not re.match(r"^https?://", endpoint):
            endpoint = f"http://{endpoint}"  # MinIO's habit: host:port means plain HTTP
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 4, "mode": "standard"},
                max_pool_connections=STAT_THREADS + 2,  # stat_many's lookups in parallel, and a listing beside
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        return cls(client, endpoint=endpoint)

    def __repr__(self) -> str:  # never the credentials
        return f"S3Store({self.endpoint!r})"

    def _fail(self, action: str, bucket: str, key: str, exc: Exception, *, conditional: bool = False) -> StoreError:
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
            return StoreError(
                f"{action} {self.uri(bucket, key)}: cannot reach the S3 server at {self.endpoint} "
                f"({type(exc).__name__}); start it, or fix MINIO_ENDPOINT"
            )
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        # 412, or 409 when AWS sees two conditional writes at once; a missing object fails an If-Match too.
        if conditional and code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                                    "NoSuchKey", "404", "NotFound"):
            return PreconditionFailed(f"{self.uri(bucket, key)} changed since it was read ({code}); read it again")
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
            return ObjectNotFound(f"no object {self.uri(bucket, key)}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StoreError(
                f"{action} {self.uri(bucket, key)} refused by {self.endpoint} ({code}): "
                "check MINIO_ACCESS_KEY and MINIO_SECRET_KEY"
            )
        return StoreError(f"{action} {self.uri(bucket, key)} at {self.endpoint} failed: {type(exc).__name__}: {exc}")

    def ensure_bucket(self, bucket: str) -> None:
        if bucket in self._ready_buckets:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except BotoCoreError as exc:
            raise self._fail("opening bucket", bucket, "", exc) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail("opening bucket", bucket, "", exc) from None
            try:
                self.client.create_bucket(Bucket=bucket)
            except BotoCoreError as exc2:
                raise self._fail("creating bucket", bucket, "", exc2) from None
            except ClientError as exc2:
                if exc2.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._fail("creating bucket", bucket, "", exc2) from None
        self._ready_buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self._put(bucket, key, data, {})

    def put_bytes_if(self, bucket: str, key: str, data: bytes, *, etag: str | None) -> None:
        # S3's conditional PUT (AWS since 2024; SeaweedFS 4.48 as the tests run it): the server compares
        # and writes in one step. A server that ignores the headers writes unconditionally; the caller's read
        # just before (core/versions.py) then still narrows the race to one round trip.
        self._put(bucket, key, data, {"IfNoneMatch": "*"} if etag is None else {"IfMatch": f'"{etag}"'})

    def _put(self, bucket: str, key: str, data: bytes, conditions: dict[str, str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        self.ensure_bucket(bucket)
        try:
            # A single PUT is atomic in S3: the object appears whole or not at all.
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **conditions)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("writing", bucket, key, exc, conditional=bool(conditions)) from None

    def get_object(self, bucket: str, key: str) -> tuple[bytes, ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            data = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("reading", bucket, key, exc) from None
        # The ETag and time of the version this GET returned, not of whatever a later listing shows.
        return data, _s3_info(key, len(data), response)

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except (ClientError, BotoCoreError) as exc:
            err = self._fail("checking", bucket, key, exc)
            if isinstance(err, ObjectNotFound):
                return False
            raise err from None

    def delete(self, bucket: str, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            err = self._fail("deleting", bucket, key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def delete_if(self, bucket: str, key: str, *, etag: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        try:
            # DeleteObject with If-Match (AWS, SeaweedFS 4.48 as the tests run it); a server that ignores it
            # deletes unconditionally, and the caller's read just before narrows the race to one round trip.
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("deleting", bucket, key, exc, conditional=True) from None

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(bucket, key)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("checking", bucket, key, exc) from None
        return _s3_info(key, head["ContentLength"], head)

    def stat_many(self, bucket: str, keys: list[str]) -> dict[str, ObjectInfo]:
        # One HEAD per key is one round trip each, so they go in parallel (boto3 clients are thread-safe; the
        # client's connection pool is sized for it in connect).
        from concurrent.futures import ThreadPoolExecutor

        if len(keys) < 2:
            return super().stat_many(bucket, keys)

        def one(key: str) -> ObjectInfo | None:
            try:
                return self.stat(bucket, key)
            except ObjectNotFound:
                return None

        with ThreadPoolExecutor(STAT_THREADS) as pool:
            return {info.key: info for info in pool.map(one, keys) if info is not None}

    def list(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            # StartAfter: S3 begins the listing there, so a cursor into a folder costs nothing for what lies before.
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **({"StartAfter": start_after}
                                                                             if start_after else {})):
                for obj in page.get("Contents", []):
                    yield _s3_info(obj["Key"], obj["Size"], obj)
        except (ClientError, BotoCoreError) as exc:
            err = self._fail("listing", bucket, prefix, exc)
            if isinstance(err, ObjectNotFound):  # a missing bucket lists as empty
                return
            raise err from None

    def uri(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key}"


def open_store(env=None) -> Store:
    """The configured store, for code that runs without Dagster (the CLI): S3 when MINIO_ENDPOINT is set,
    else the local folder (core/settings.py). The keys are read at this moment and kept only by the client."""
    s = store_settings(env)
    if s.endpoint:
        return S3Store.connect(s.endpoint, secret(s.access_key_var, env) or "", secret(s.secret_key_var, env) or "")
    return LocalStore(s.local_root)
