"""One dynamic partition per dataset id: the key that follows a seed through the whole graph.

Dagster accepts any string as a dynamic partition key (the UI, GraphQL's addDynamicPartition); what a
dataset id is lives in core/datasets.py, and every asset, the coordinator and the IO manager refuse any
other key before anything is written.
"""

from dagster import DynamicPartitionsDefinition, Failure

from frd_assets.core.datasets import InvalidDatasetId, check_dataset_id
from frd_assets.core.names import PARTITIONS_DEF

dataset_partitions = DynamicPartitionsDefinition(name=PARTITIONS_DEF)


def partition_dataset_id(partition_key: str, *, asset: str) -> str:
    """The dataset id of a run's partition, or a Failure naming the key (retrying cannot fix it)."""
    try:
        return check_dataset_id(partition_key, what=f"partition key of {asset}")
    except InvalidDatasetId as exc:
        raise Failure(str(exc), allow_retries=False) from None
