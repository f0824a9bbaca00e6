"""The job the sensor launches: the whole chain for one dataset partition."""

from dagster import AssetSelection, define_asset_job

seed_to_adapter_job = define_asset_job(
    "seed_to_adapter",
    selection=AssetSelection.assets("seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter"),
    description="Seed to LoRA adapter for one dataset UUID; the adapter step is skipped when validation fails.",
)
