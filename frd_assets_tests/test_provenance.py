"""Every version names the versions it was computed from (issue 18, Must 5), and `frd status` prints that
chain; the generation checkpoint is only continued by a run that reads the same seed version. The chain is
materialized for real (tiny model, local store) in one Dagster run."""

import pytest
from dagster import AssetKey, materialize

from frd_assets.cli.service import current_line
from frd_assets.core import versions
from frd_assets.core.datasets import asset_location, checkpoint_location
from frd_assets.core.generation.checkpoint import StoreCheckpoint
from frd_assets.core.provenance import INPUTS, digest
from frd_assets.core.store import SEEDS_BUCKET, LocalStore
from frd_assets.definitions import ASSETS, build_resources
from frd_assets.defs.partitions import dataset_partitions

GENERATION = {"num_instructions": 8, "max_rounds": 4, "prompts_per_round": 4, "seed": 0,
              "max_new_tokens_instructions": 96, "max_new_tokens_instance": 96}


@pytest.fixture
def chain(tiny_model_dir, dagster_instance, dataset_id, sample_seed_bytes, tmp_path, monkeypatch):
    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "TEACHER_MODEL": str(tiny_model_dir),
           "LORA_MODEL_NAME": str(tiny_model_dir), "LORA_N_TRIALS": "1",
           "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}", "FRD_TRIALS_DIR": str(tmp_path / "trials")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    store = LocalStore(env["FRD_LOCAL_STORE"])
    store.put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    ops = {"generated_dataset": {"config": GENERATION}, "lora_adapter": {"config": {"epochs": 1, "batch_size": 2}},
           "adapter_evaluation": {"config": {"max_new_tokens": 16, "bootstrap_samples": 100}}}
    result = materialize(ASSETS, partition_key=dataset_id, instance=dagster_instance, resources=build_resources(env),
                         run_config={"ops": ops})
    assert result.success
    return store, {name: versions.current(store, *asset_location(name, dataset_id)) for name in
                   ("seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter", "adapter_evaluation")}


def test_every_version_names_the_versions_it_was_computed_from(chain, dataset_id, tiny_model_dir, dagster_instance):
    store, current = chain
    inputs = {name: dict(v.meta[INPUTS]) for name, v in current.items()}
    assert inputs["seed_dataset"]["seed_upload"] == f"{dataset_id}.jsonl" and inputs["seed_dataset"]["etag"]
    assert inputs["generated_dataset"] == {"seed_dataset": current["seed_dataset"].version}
    assert inputs["validated_dataset"] == {"generated_dataset": current["generated_dataset"].version,
                                           "seed_dataset": current["seed_dataset"].version}
    # The adapter trains on the seed's own tasks and chooses on its validation tasks: the seed is an input too.
    assert inputs["lora_adapter"] == {"validated_dataset": current["validated_dataset"].version,
                                      "seed_dataset": current["seed_dataset"].version,
                                      "base_model": str(tiny_model_dir)}
    # The evaluation read the adapter version that lora_adapter published, which stays current: the evaluated
    # model card is the evaluation's own file.
    evaluated = inputs["adapter_evaluation"]
    assert evaluated["lora_adapter"] == current["lora_adapter"].version
    assert versions.version_ids(store, *asset_location("lora_adapter", dataset_id)) == [evaluated["lora_adapter"]]
    assert evaluated["base_model"] == str(tiny_model_dir)
    assert evaluated["seed_dataset"] == current["seed_dataset"].version
    answers = versions.read(store, current["adapter_evaluation"], "answers.jsonl")
    assert evaluated["tasks"].startswith("sha256:") and answers

    # `frd status` shows the chain, one line per asset: current <folder>  <- <input versions>, from the
    # asset's latest materialization.
    lines = {name: current_line(metadata(dagster_instance, name)) for name in current}
    assert lines["generated_dataset"] == (f"  current {store.uri(*_folder(current['generated_dataset']))}  "
                                          f"<- seed_dataset {current['seed_dataset'].version}")
    # (names in the pointer's order: sorted)
    assert lines["lora_adapter"].endswith(f"<- base_model {tiny_model_dir}, "
                                          f"seed_dataset {current['seed_dataset'].version}, "
                                          f"validated_dataset {current['validated_dataset'].version}")
    assert f", lora_adapter {evaluated['lora_adapter']}, seed_dataset " in lines["adapter_evaluation"]


def metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _folder(version):
    return version.bucket, version.folder


def test_a_checkpoint_made_from_another_seed_version_is_not_continued(local_store, dataset_id):
    made = StoreCheckpoint(local_store, *checkpoint_location(dataset_id), inputs={"seed_dataset": "v1"})
    made.save({"version": 2, "fingerprint": "f", "kept": ["an instruction"]})
    assert made.load()["kept"] == ["an instruction"]
    other = StoreCheckpoint(local_store, *checkpoint_location(dataset_id), inputs={"seed_dataset": "v2"})
    assert other.load() is None
    # A checkpoint from before inputs were recorded is not continued either: nothing says what it was made from.
    local_store.put_bytes(*checkpoint_location(dataset_id), b'{"version": 2, "fingerprint": "f", "kept": []}')
    assert other.load() is None


def test_the_digest_follows_the_content():
    assert digest([{"a": 1}]) == digest([{"a": 1}]) != digest([{"a": 2}])
