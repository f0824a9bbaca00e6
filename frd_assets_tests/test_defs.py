import dataclasses
import subprocess
import sys

import pytest
from dagster import AssetKey, EnvVar

from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.validation import ValidationConfig
from frd_assets.definitions import build_resources
from frd_assets.defs.config import GenerationRunConfig, ValidationRunConfig
from frd_assets.defs.resources import StoreResource


def test_definitions_load_with_five_partitioned_assets_job_and_sensor():
    from frd_assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter", "adapter_evaluation"}
    graph = defs.resolve_asset_graph()
    for key in keys:
        node = graph.get(AssetKey(key))
        assert node.partitions_def.name == "dataset_uuid"
    # lora_adapter reads the seed too: its seed tasks train and its validation tasks steer the search.
    assert graph.get(AssetKey("lora_adapter")).parent_keys == {AssetKey("validated_dataset"), AssetKey("seed_dataset")}
    assert graph.get(AssetKey("adapter_evaluation")).parent_keys == {AssetKey("lora_adapter"), AssetKey("seed_dataset")}
    train = defs.resolve_job_def("train_adapter")
    assert {k.to_user_string() for k in train.asset_layer.executable_asset_keys} == {"lora_adapter",
                                                                                      "adapter_evaluation"}
    assert defs.resolve_job_def("seed_to_adapter") is not None
    assert defs.resolve_sensor_def("seed_upload_sensor") is not None


def test_gpu_step_carries_the_gpu_queue_tag_and_others_cpu():
    from frd_assets.definitions import ASSETS

    tags = {a.key.to_user_string(): a.op.tags.get("frd/queue") for a in ASSETS}
    assert tags == {
        "seed_dataset": "cpu",
        "generated_dataset": "cpu",
        "validated_dataset": "cpu",
        "lora_adapter": "gpu",
        "adapter_evaluation": "gpu",
    }


def test_core_imports_without_dagster():
    code = (
        "import sys, importlib, pkgutil, frd_assets.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'frd_assets.core.'): importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "run_config, core", [(GenerationRunConfig, GenerationConfig), (ValidationRunConfig, ValidationConfig)]
)
def test_run_config_mirrors_core_config(run_config, core):
    defaults = run_config().model_dump()
    assert defaults == dataclasses.asdict(core())


def test_s3_settings_are_env_var_references_not_values():
    env = {"MINIO_ENDPOINT": "http://minio:9000", "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": "supersecret"}
    store = build_resources(env)["store"]
    assert isinstance(store, StoreResource)
    assert store.secret_key == EnvVar("MINIO_SECRET_KEY")
    assert "supersecret" not in repr(store)


def test_local_store_is_the_default():
    store = build_resources({"FRD_LOCAL_STORE": "/tmp/frd-x"})["store"]
    assert store.endpoint is None and store.local_root == "/tmp/frd-x"


def test_partial_s3_settings_fail_naming_the_missing_key():
    with pytest.raises(Exception, match="MINIO_SECRET_KEY"):
        build_resources({"MINIO_ENDPOINT": "http://minio:9000", "MINIO_ACCESS_KEY": "ak"})


def test_the_long_assets_retry_a_failed_step():
    """A store error in the middle of a search or a generation (a restarted S3 server, say) is retried
    rather than losing the run: both resume from what they stored (the study, the checkpoint)."""
    from dagster import Backoff

    from frd_assets.defs.assets import adapter_evaluation, generated_dataset, lora_adapter

    for asset in (generated_dataset, lora_adapter, adapter_evaluation):
        policy = asset.op.retry_policy
        assert policy is not None and policy.max_retries >= 2 and policy.backoff == Backoff.EXPONENTIAL, asset.key
