"""The thin Dagster layer: partitions, resources, the IO manager, assets, checks and sensors."""
