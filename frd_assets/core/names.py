"""The names the Dagster definitions, the run coordinator, the GraphQL client and the CLI share.

One home for each: a renamed asset or job breaks at import time everywhere instead of silently in the
client, which only sees names as strings over GraphQL. Dagster-free, so the client and the CLI's
standalone commands can use it.
"""

from __future__ import annotations

# Assets, in chain order.
SEED_DATASET = "seed_dataset"
GENERATED_DATASET = "generated_dataset"
VALIDATED_DATASET = "validated_dataset"
LORA_ADAPTER = "lora_adapter"
ADAPTER_EVALUATION = "adapter_evaluation"
ASSETS = (SEED_DATASET, GENERATED_DATASET, VALIDATED_DATASET, LORA_ADAPTER, ADAPTER_EVALUATION)
# The CPU part of the chain (the seed sensor's job) and the GPU part (the verdict sensor's job).
CPU_ASSETS = ASSETS[:3]
GPU_ASSETS = ASSETS[3:]

# Jobs, and the assets each one materializes (runs launched by job name carry no asset selection).
PREPARE_DATASET_JOB = "prepare_dataset"
TRAIN_ADAPTER_JOB = "train_adapter"
SEED_TO_ADAPTER_JOB = "seed_to_adapter"
JOB_ASSETS = {PREPARE_DATASET_JOB: CPU_ASSETS, TRAIN_ADAPTER_JOB: GPU_ASSETS, SEED_TO_ADAPTER_JOB: ASSETS}

# Retirement (core/retirement.py, defs/retirement.py): the job of one op that retires what the retention
# policy names, and its daily schedule.
RETIRE_JOB = "retire_datasets"
RETIRE_OP = "retire_by_policy"  # an op may not share its job's name
RETIRE_SCHEDULE = "retire_datasets_daily"

# The one dynamic partitions definition: a partition per dataset id.
PARTITIONS_DEF = "dataset_uuid"

# Asset checks.
READY_CHECK = "ready_for_fine_tuning"
BEATS_BASE_CHECK = "beats_base_model"
BEATS_BASE_ON_HELD_OUT_CHECK = "adapter_beats_base"

# The op tag that says which capacity a step needs, and the run tag the coordinator copies it to.
QUEUE_TAG = "frd/queue"
CPU_QUEUE, GPU_QUEUE = "cpu", "gpu"

# Files stored beside an asset's rows in its version (core/versions.py): the Hugging Face card of a
# dataset or model, the validation gate's report, the adapter evaluation's report.
CARD_FILE = "README.md"
VALIDATION_REPORT_FILE = "validation_report.json"
EVALUATION_REPORT_FILE = "report.json"

# The run tag Dagster puts on a run of one partition (the dataset id): the client, the sensors and the
# coordinator filter runs by it. Dagster's own constant is in a private module, so it is named here.
PARTITION_TAG = "dagster/partition"
