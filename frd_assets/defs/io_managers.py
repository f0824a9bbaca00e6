"""The IO manager over the store: datasets as JSONL, adapters as folders of files; nothing pickled."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext

from frd_assets.core.records import dumps_jsonl, loads_jsonl
from frd_assets.core.store import ADAPTERS_BUCKET, DATASETS_BUCKET, adapter_prefix, dataset_object_key
from frd_assets.defs.resources import StoreResource


@dataclass(frozen=True)
class AdapterFolder:
    """A local folder of adapter files (adapter_config.json, adapter_model.safetensors, ...)."""

    path: Path


class StoreIOManager(ConfigurableIOManager):
    store: StoreResource

    @staticmethod
    def _is_adapter(asset_name: str) -> bool:
        return asset_name == "lora_adapter"

    def location(self, asset_name: str, partition_key: str) -> tuple[str, str]:
        """The one place that maps an asset partition to (bucket, key or prefix)."""
        if self._is_adapter(asset_name):
            return ADAPTERS_BUCKET, adapter_prefix(partition_key)
        return DATASETS_BUCKET, dataset_object_key(partition_key, asset_name)

    def handle_output(self, context: OutputContext, obj) -> None:
        name = context.asset_key.path[-1]
        bucket, key = self.location(name, context.asset_partition_key)
        store = self.store.get_store()
        if isinstance(obj, AdapterFolder):
            files = store.upload_folder(obj.path, bucket, key)
            context.add_output_metadata(
                {"uri": MetadataValue.path(store.uri(bucket, key)), "files": MetadataValue.json(sorted(files))}
            )
        elif isinstance(obj, list):
            data = dumps_jsonl(obj)
            store.put_bytes(bucket, key, data)
            context.add_output_metadata(
                {"uri": MetadataValue.path(store.uri(bucket, key)), "rows": len(obj), "bytes": len(data)}
            )
        else:
            raise TypeError(
                f"asset {name} returned {type(obj).__name__}; the store IO manager writes a list of JSON rows "
                "or an AdapterFolder"
            )

    def load_input(self, context: InputContext):
        name = context.upstream_output.asset_key.path[-1]
        bucket, key = self.location(name, context.asset_partition_key)
        store = self.store.get_store()
        if self._is_adapter(name):
            dest = Path(tempfile.mkdtemp(prefix=f"frd-{name}-"))
            return AdapterFolder(store.download_folder(bucket, key, dest))
        return loads_jsonl(store.get_bytes(bucket, key), store.uri(bucket, key))
