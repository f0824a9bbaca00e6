"""Jobs the sensors launch: the CPU part of the chain, then the adapter once the data are READY."""

from dagster import AssetSelection, define_asset_job

from frd_assets.core.names import CPU_ASSETS, GPU_ASSETS, PREPARE_DATASET_JOB, SEED_TO_ADAPTER_JOB, TRAIN_ADAPTER_JOB

# What the seed sensor launches: runs on CPU capacity only (no GPU step in it).
prepare_dataset_job = define_asset_job(
    PREPARE_DATASET_JOB,
    selection=AssetSelection.assets(*CPU_ASSETS),
    description="Seed to validated dataset for one dataset UUID (CPU queue).",
)

# What the verdict sensor launches after a READY_FOR_FINE_TUNING verdict (GPU queue): the adapter, then its
# evaluation on the held-out tasks.
train_adapter_job = define_asset_job(
    TRAIN_ADAPTER_JOB,
    selection=AssetSelection.assets(*GPU_ASSETS),
    description="The LoRA search for one validated dataset UUID and its held-out evaluation (GPU queue).",
)

# Everything in one run, for a manual launch; routed to the GPU queue as a whole.
seed_to_adapter_job = define_asset_job(
    SEED_TO_ADAPTER_JOB,
    selection=AssetSelection.assets(*CPU_ASSETS, *GPU_ASSETS),
    description="Seed to LoRA adapter in one run; the adapter step is skipped when validation fails.",
)
