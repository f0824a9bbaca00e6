"""The Definitions that workspace.yaml, pyproject's [tool.dagster] and the tests load. It only assembles."""

from dagster import Definitions

from frd_assets.defs.assets import generated_dataset, lora_adapter, seed_dataset, validated_dataset
from frd_assets.defs.jobs import seed_to_adapter_job
from frd_assets.defs.resources import build_resources
from frd_assets.defs.sensors import seed_upload_sensor

ASSETS = [seed_dataset, generated_dataset, validated_dataset, lora_adapter]


def build_definitions(env=None) -> Definitions:
    return Definitions(
        assets=ASSETS,
        jobs=[seed_to_adapter_job],
        sensors=[seed_upload_sensor],
        resources=build_resources(env),
    )


defs = build_definitions()
