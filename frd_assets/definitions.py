"""The Definitions that workspace.yaml, pyproject's [tool.dagster] and the tests load. It only assembles:
the assets, jobs, sensors and the retirement schedule from defs/, and the resources built from core/settings.py."""

from __future__ import annotations

import os
from typing import Mapping

from dagster import Definitions, IOManager, IOManagerDefinition, ResourceDefinition

from frd_assets.defs.assets import adapter_evaluation, generated_dataset, lora_adapter, seed_dataset, validated_dataset
from frd_assets.defs.io_managers import StoreIOManager
from frd_assets.defs.jobs import prepare_dataset_job, seed_to_adapter_job, train_adapter_job
from frd_assets.defs.resources import JudgeResource, LoraResource, StoreResource, TeacherResource
from frd_assets.defs.retirement import retire_datasets_job, retire_datasets_schedule
from frd_assets.defs.sensors import adapter_on_ready_sensor, seed_upload_sensor

ASSETS = [seed_dataset, generated_dataset, validated_dataset, lora_adapter, adapter_evaluation]


def build_resources(env: Mapping[str, str] | None = None) -> dict:
    """Every resource the assets name, from the environment (os.environ by default)."""
    env = os.environ if env is None else env
    store = StoreResource.from_env(env)
    return {
        "store": store,
        "io_manager": StoreIOManager(store=store),
        "teacher": TeacherResource.from_env(env),
        "judge": JudgeResource.from_env(env),
        "lora": LoraResource.from_env(env),
    }


def fixed(resources: Mapping[str, object]) -> dict[str, ResourceDefinition]:
    """The resources as they are, taking no run config: they are the deployment's settings (the store, the
    teacher's endpoint and key, the judge, the study storage). A configurable resource would let anyone
    who may launch a run point its worker at any folder or endpoint, and an override of one field would
    silently reset the others to their defaults. (The run coordinator also refuses a `resources` section.)
    Secrets stay EnvVar references, read where they are used (defs/resources.resolved)."""
    return {
        key: (IOManagerDefinition.hardcoded_io_manager(value) if isinstance(value, IOManager)
              else ResourceDefinition.hardcoded_resource(value))
        for key, value in resources.items()
    }


def build_definitions(env: Mapping[str, str] | None = None) -> Definitions:
    return Definitions(
        assets=ASSETS,
        jobs=[prepare_dataset_job, train_adapter_job, seed_to_adapter_job, retire_datasets_job],
        sensors=[seed_upload_sensor, adapter_on_ready_sensor],
        schedules=[retire_datasets_schedule],
        resources=fixed(build_resources(env)),
    )


defs = build_definitions()
