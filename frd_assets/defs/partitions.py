"""One dynamic partition per dataset UUID: the key that follows a seed through the whole graph."""

import re

from dagster import DynamicPartitionsDefinition

dataset_partitions = DynamicPartitionsDefinition(name="dataset_uuid")

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_dataset_uuid(key: str) -> bool:
    return bool(UUID_RE.match(key))
