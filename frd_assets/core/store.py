"""One object-store abstraction with two backends: S3 (MinIO, any S3 endpoint) and a local folder."""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SEEDS_BUCKET = "seeds"
DATASETS_BUCKET = "datasets"
ADAPTERS_BUCKET = "lora-adapters"
BUCKETS = (SEEDS_BUCKET, DATASETS_BUCKET, ADAPTERS_BUCKET)

# Files peft's from_pretrained reads first; written last so a reader that sees it sees a whole adapter.
_WRITE_LAST = "adapter_config.json"


class StoreError(RuntimeError):
    """A store operation failed; the message names the bucket and key, never a credential."""


class ObjectNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True, order=True)
class ObjectInfo:
    last_modified: float  # seconds since the epoch; ordering by (time, key) makes a listing cursor
    key: str
    size: int
    etag: str


class Store(ABC):
    """Buckets of keyed byte objects. Writes are atomic: a reader sees the old object or the new one."""

    @abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None: ...

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...

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

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> list[str]:
        """Copies every file of folder under prefix; adapter_config.json last (see _WRITE_LAST)."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == _WRITE_LAST)
        keys = []
        for path in files:
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
            self.put_bytes(bucket, key, path.read_bytes())
            keys.append(key)
        return keys

    def download_folder(self, bucket: str, prefix: str, dest: Path) -> Path:
        prefix = prefix.rstrip("/") + "/"
        found = False
        for info in self.list(bucket, prefix):
            found = True
            target = Path(dest) / info.key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_bytes(bucket, info.key))
        if not found:
            raise ObjectNotFound(f"nothing stored under {self.uri(bucket, prefix)}")
        return Path(dest)


class LocalStore(Store):
    """A folder per bucket under root: the embedded default."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, bucket: str, key: str) -> Path:
        if not key or key.startswith("/") or ".." in Path(key).parts:
            raise StoreError(f"invalid key {key!r} in bucket {bucket!r}")
        return self.root / bucket / key

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: rename is atomic within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, bucket: str, key: str) -> bytes:
        path = self._path(bucket, key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {self.uri(bucket, key)}") from None

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        path.unlink(missing_ok=True)
        # Drop folders left empty so a deleted prefix leaves no trace.
        parent = path.parent
        bucket_dir = self.root / bucket
        while parent != bucket_dir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        bucket_dir = self.root / bucket
        if not bucket_dir.is_dir():
            return
        for path in sorted(bucket_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            key = path.relative_to(bucket_dir).as_posix()
            if key.startswith(prefix):
                st = path.stat()
                yield ObjectInfo(st.st_mtime, key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def uri(self, bucket: str, key: str = "") -> str:
        return str(self.root / bucket / key) if key else str(self.root / bucket)


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
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        return cls(client, endpoint=endpoint)

    def __repr__(self) -> str:  # never the credentials
        return f"S3Store({self.endpoint!r})"

    def _fail(self, action: str, bucket: str, key: str, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError

        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
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
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail("opening bucket", bucket, "", exc) from None
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as exc2:
                if exc2.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._fail("creating bucket", bucket, "", exc2) from None
        self._ready_buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.ensure_bucket(bucket)
        try:
            # A single PUT is atomic in S3: the object appears whole or not at all.
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("writing", bucket, key, exc) from None

    def get_bytes(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("reading", bucket, key, exc) from None

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

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

        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            err = self._fail("deleting", bucket, key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["LastModified"].timestamp(), obj["Key"], obj["Size"], obj.get("ETag", "").strip('"')
                    )
        except (ClientError, BotoCoreError) as exc:
            err = self._fail("listing", bucket, prefix, exc)
            if isinstance(err, ObjectNotFound):  # a missing bucket lists as empty
                return
            raise err from None

    def uri(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key}"


def default_local_root() -> Path:
    """$FRD_LOCAL_STORE, else .frd-store in a source checkout, else ~/.local/share/frd/store."""
    if os.environ.get("FRD_LOCAL_STORE"):
        return Path(os.environ["FRD_LOCAL_STORE"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".frd-store"
    return Path.home() / ".local" / "share" / "frd" / "store"


# Where each stage's objects live; every key carries the dataset UUID.
SEED_SUFFIXES = (".jsonl", ".json")


def dataset_object_key(uuid: str, asset_name: str) -> str:
    return f"{uuid}/{asset_name}.jsonl"


def generation_checkpoint_key(uuid: str) -> str:
    return f"{uuid}/generation_checkpoint.json"


def status_key(uuid: str) -> str:
    return f"{uuid}/status.json"


def validation_report_key(uuid: str) -> str:
    return f"{uuid}/validation_report.json"


def adapter_prefix(uuid: str) -> str:
    return uuid
