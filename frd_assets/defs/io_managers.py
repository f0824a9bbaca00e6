"""The IO manager over the store: every output is a new immutable version behind one pointer (core/versions).

Datasets are JSONL (plus any files stored beside them, such as the validation report), adapters are folders
of files; nothing is pickled. A reader gets exactly the version the pointer named when it read it.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dagster import ConfigurableIOManager, Failure, InputContext, MetadataValue, OutputContext

from frd_assets.core import versions
from frd_assets.core.datasets import InvalidDatasetId, asset_location, data_file_name
from frd_assets.core.names import LORA_ADAPTER
from frd_assets.core.records import dumps_jsonl, loads_jsonl
from frd_assets.core.store import Store, StoreFull
from frd_assets.defs.resources import StoreResource


@dataclass(frozen=True)
class AdapterFolder:
    """A local folder of adapter files (adapter_config.json, adapter_model.safetensors, ...)."""

    path: Path
    meta: Mapping[str, Any] = field(default_factory=dict)  # stored in the pointer (the base model, say)
    version: versions.Version | None = None  # set when loaded from the store


@dataclass(frozen=True)
class DatasetOutput:
    """Rows plus files published in the same version (a report, a card) and small facts for the pointer,
    so that the rows, their report and the verdict can never be read from two different writes."""

    rows: list[dict]
    files: Mapping[str, bytes] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


class DatasetRows(list):
    """The rows of one stored version, with that version (its meta holds e.g. the verdict)."""

    def __init__(self, rows, version: versions.Version):
        super().__init__(rows)
        self.version = version


class StoreIOManager(ConfigurableIOManager):
    store: StoreResource

    def location(self, asset_name: str, partition_key: str) -> tuple[str, str]:
        """(bucket, prefix) of an asset partition; a partition key that is not a dataset id never reaches
        the store (retrying cannot fix it, so the step fails at once)."""
        try:
            return asset_location(asset_name, partition_key)
        except InvalidDatasetId as exc:
            raise Failure(f"asset {asset_name}: partition {exc}", allow_retries=False) from None

    def handle_output(self, context: OutputContext, obj) -> None:
        with no_retry_when_full():
            self._write(context, obj)

    def _write(self, context: OutputContext, obj) -> None:
        name = context.asset_key.path[-1]
        bucket, prefix = self.location(name, context.asset_partition_key)
        store = self.store.get_store()
        if isinstance(obj, AdapterFolder):
            version = _publish(store, bucket, prefix, versions.folder_files(obj.path), obj.meta, context)
            context.add_output_metadata({**_version_metadata(store, version),
                                         "files": MetadataValue.json(sorted(version.files))})
            return
        if isinstance(obj, list):
            obj = DatasetOutput(obj)
        if not isinstance(obj, DatasetOutput):
            raise TypeError(
                f"asset {name} returned {type(obj).__name__}; the store IO manager writes a list of JSON rows, "
                "a DatasetOutput or an AdapterFolder"
            )
        data = dumps_jsonl(obj.rows)
        files = [(data_file_name(name), data), *obj.files.items()]
        version = _publish(store, bucket, prefix, files, obj.meta, context)
        context.add_output_metadata({**_version_metadata(store, version), "rows": len(obj.rows), "bytes": len(data)})

    def load_input(self, context: InputContext):
        name = context.upstream_output.asset_key.path[-1]
        bucket, prefix = self.location(name, context.asset_partition_key)
        store = self.store.get_store()
        version = versions.current(store, bucket, prefix)
        if name == LORA_ADAPTER:
            dest = Path(tempfile.mkdtemp(prefix=f"frd-{name}-"))
            return AdapterFolder(versions.download(store, version, dest), dict(version.meta), version)
        key = data_file_name(name)
        rows = loads_jsonl(versions.read(store, version, key), store.uri(bucket, version.key(key)))
        return DatasetRows(rows, version)


def _publish(store: Store, bucket: str, prefix: str, files, meta, context: OutputContext) -> versions.Version:
    try:
        return versions.publish(store, bucket, prefix, files, meta=meta, log=context.log.info)
    except versions.StaleVersion as exc:
        # Overtaken by a newer version of the same partition: a retry would only redo the work and then put
        # this older data over the newer (its new version id would sort later), so the step fails, once.
        raise Failure(str(exc), allow_retries=False) from None


@contextmanager
def no_retry_when_full():
    """A full store disk fails the step at once, in one line: the assets' retry policies would otherwise
    redo the whole step (a teacher round, a search) only to hit the same full disk."""
    try:
        yield
    except StoreFull as exc:
        raise Failure(str(exc), allow_retries=False) from None


def _version_metadata(store: Store, version: versions.Version) -> dict:
    return {
        "uri": MetadataValue.path(store.uri(version.bucket, version.folder)),
        "version": version.version,
    }
