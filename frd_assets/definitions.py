"""The Definitions that workspace.yaml, pyproject's [tool.dagster] and the tests load. It only assembles."""

from dagster import Definitions

from frd_assets.defs.assets import adapter_evaluation, generated_dataset, lora_adapter, seed_dataset, validated_dataset
from frd_assets.defs.jobs import prepare_dataset_job, seed_to_adapter_job, train_adapter_job
from frd_assets.defs.resources import build_resources
from frd_assets.defs.sensors import adapter_on_ready_sensor, seed_upload_sensor

ASSETS = [seed_dataset, generated_dataset, validated_dataset, lora_adapter, adapter_evaluation]


def build_definitions(env=None) -> Definitions:
    return Definitions(
        assets=ASSETS,
        jobs=[prepare_dataset_job, train_adapter_job, seed_to_adapter_job],
        sensors=[seed_upload_sensor, adapter_on_ready_sensor],
        resources=build_resources(env),
    )


defs = build_definitions()
