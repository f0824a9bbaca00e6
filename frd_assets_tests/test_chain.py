"""The whole chain on real parts: SeaweedFS over HTTP, a Dagster instance on disk, transformers, peft, optuna."""

import json

import pytest
from dagster import AssetCheckKey, AssetKey, materialize
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from frd_assets.core import versions
from frd_assets.core.datasets import asset_location, checkpoint_location
from frd_assets.core.evaluation.report import MAX_SAMPLES
from frd_assets.core.store import ADAPTERS_BUCKET, DATASETS_BUCKET, SEEDS_BUCKET, ObjectNotFound, S3Store
from frd_assets.definitions import ASSETS, build_resources
from frd_assets.defs.partitions import dataset_partitions

GENERATION = {
    "num_instructions": 10,
    "prompts_per_round": 4,
    "max_rounds": 6,
    "temperature": 1.0,
    "max_new_tokens_instructions": 96,
    "max_new_tokens_instance": 96,
}


@pytest.fixture
def chain_env(s3_server, tiny_model_dir, tmp_path, monkeypatch):
    env = {
        **s3_server.env(),
        "TEACHER_MODEL": str(tiny_model_dir),
        "LORA_MODEL_NAME": str(tiny_model_dir),
        "LORA_N_TRIALS": "2",
        "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}",
        "FRD_TRIALS_DIR": str(tmp_path / "trials"),
    }
    for k, v in env.items():  # the S3 keys reach the resources as EnvVar references, read at run time
        monkeypatch.setenv(k, v)
    return env


def metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def run_chain(instance, env, dataset_id, seed_bytes, validation=None):
    store = S3Store.connect(env["MINIO_ENDPOINT"], env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"])
    store.put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", seed_bytes)
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    ops = {"generated_dataset": {"config": GENERATION}, "lora_adapter": {"config": {"epochs": 2, "batch_size": 2}}}
    if validation:
        ops["validated_dataset"] = {"config": validation}
    result = materialize(
        ASSETS,
        partition_key=dataset_id,
        instance=instance,
        resources=build_resources(env),
        run_config={"ops": ops},
        raise_on_error=False,
    )
    return store, result


def test_seed_to_adapter_on_s3(chain_env, dagster_instance, dataset_id, sample_seed_bytes, tiny_model_dir, tmp_path):
    store, result = run_chain(dagster_instance, chain_env, dataset_id, sample_seed_bytes)
    assert result.success

    validated = versions.current(store, *asset_location("validated_dataset", dataset_id))
    assert validated.meta["verdict"] == "READY_FOR_FINE_TUNING", validated.meta
    assert json.loads(versions.read(store, validated, "validation_report.json"))["verdict"] == validated.meta["verdict"]
    for name in ("seed_dataset", "generated_dataset", "validated_dataset"):
        assert versions.read(store, versions.current(store, *asset_location(name, dataset_id)), f"{name}.jsonl")
    current = versions.current(store, ADAPTERS_BUCKET, dataset_id)
    assert sorted(current.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "trials.json"]

    adapter = metadata(dagster_instance, "lora_adapter")
    assert set(adapter["best_params"]) == {"rank", "lora_alpha", "learning_rate"}
    # One adapter version, the one lora_adapter wrote: the evaluation never writes the adapter's storage.
    assert adapter["uri"] == f"s3://{ADAPTERS_BUCKET}/{dataset_id}/versions/{adapter['version']}"
    assert versions.version_ids(store, ADAPTERS_BUCKET, dataset_id) == [adapter["version"]] == [current.version]
    assert "## Evaluation on held-out seed tasks" not in versions.read(store, current, "README.md").decode()
    assert adapter["base_eval_loss"] > 0 and adapter["best_eval_loss"] > 0
    generated = metadata(dagster_instance, "generated_dataset")
    assert generated["records"] >= 4 and generated["tokens_per_second"] > 0
    assert metadata(dagster_instance, "seed_dataset")["records"] == 118
    assert metadata(dagster_instance, "seed_dataset")["held_out"] == 24
    # The 94 seed tasks not held out trained beside the generated records; the 12 validation tasks chose.
    assert adapter["seed_task_records"] == 94 and adapter["validation_records"] == 12
    assert adapter["objective"] == "real_tasks" and isinstance(adapter["beats_base_model"], bool)
    assert "and 94 of the user's own seed tasks" in versions.read(store, current, "README.md").decode()

    # The stored adapter loads as it lies with peft and changes the base model's output.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = versions.download(store, current, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, folder)
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == adapter["best_params"]["rank"]

    # A re-launched lora_adapter continues the same study: two more trials, the first two untouched.
    first_trials = json.loads(versions.read(store, current, "trials.json"))
    again = materialize(ASSETS, partition_key=dataset_id, instance=dagster_instance,
                        resources=build_resources(chain_env), selection=["lora_adapter"],
                        run_config={"ops": {"lora_adapter": {"config": {"n_trials": 4, "batch_size": 2}}}})
    assert again.success
    second = versions.current(store, ADAPTERS_BUCKET, dataset_id)
    assert second.version > current.version and metadata(dagster_instance, "lora_adapter")["version"] == second.version
    # The earlier version stays whole beside the new one (pruning keeps the last three).
    assert versions.read(store, current, "adapter_model.safetensors")
    trials = json.loads(versions.read(store, second, "trials.json"))
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert [(t["params"], t["eval_loss"]) for t in trials[:2]] == [(t["params"], t["eval_loss"]) for t in first_trials]
    checks = [e for e in again.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [e.event_specific_data.check_name for e in checks] == ["beats_base_model"]

    # The held-out evaluation of the first run: report and answers in evaluations/<uuid>, the figures in
    # the metadata, the check at WARN by default.
    evaluation = versions.current(store, *asset_location("adapter_evaluation", dataset_id))
    assert sorted(evaluation.files) == ["README.md", "answers.jsonl", "report.json"]
    # The evaluated model card: the adapter's card, its YAML header kept, then the evaluation.
    evaluated_card = versions.read(store, evaluation, "README.md").decode()
    assert evaluated_card.startswith("---\n") and "library_name: peft" in evaluated_card
    assert evaluated_card.count("## Evaluation on held-out seed tasks") == 1
    assert versions.read(store, current, "README.md").decode().split("\n---\n", 1)[1].strip() in evaluated_card
    report = json.loads(versions.read(store, evaluation, "report.json"))
    assert set(report) == {"n", "skipped", "base_model", "adapter", "rouge_l", "judge", "length", "seconds",
                           "samples"}
    assert report["n"] == 12 and report["judge"] is None and len(report["samples"]) == MAX_SAMPLES  # test part
    assert len(versions.read(store, evaluation, "answers.jsonl").splitlines()) == 12
    evaluated = metadata(dagster_instance, "adapter_evaluation")
    assert evaluated["n"] == 12 and evaluated["judge"].startswith("none")
    first_check = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                   and e.event_specific_data.check_name == "adapter_beats_base"]
    assert [e.event_specific_data.severity.value for e in first_check] == ["WARN"]

    # Evaluated again with ERROR severity, against the adapter of the second search: the new evaluation's card
    # carries one evaluation section, the check its severity, and the adapter versions are lora_adapter's.
    strict = materialize(ASSETS, partition_key=dataset_id, instance=dagster_instance,
                         resources=build_resources(chain_env), selection=["adapter_evaluation"],
                         run_config={"ops": {"adapter_evaluation": {"config": {"check_severity": "ERROR",
                                                                               "max_new_tokens": 16}}}},
                         raise_on_error=False)
    [strict_check] = [e for e in strict.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert strict_check.event_specific_data.severity.value == "ERROR"
    again_evaluated = versions.current(store, *asset_location("adapter_evaluation", dataset_id))
    card = versions.read(store, again_evaluated, "README.md").decode()
    assert card.count("## Evaluation on held-out seed tasks") == 1
    assert again_evaluated.meta["inputs"]["lora_adapter"] == second.version
    assert versions.current(store, ADAPTERS_BUCKET, dataset_id).version == second.version
    assert second.meta["base_model"] == chain_env["LORA_MODEL_NAME"]

    # Secrets never reach run config or metadata.
    run = dagster_instance.get_run_by_id(result.run_id)
    dumped = json.dumps(run.run_config) + json.dumps(
        [str(metadata(dagster_instance, a)) for a in ("seed_dataset", "generated_dataset", "lora_adapter")]
    )
    assert chain_env["MINIO_SECRET_KEY"] not in dumped


def test_deleted_verdict_removes_data_and_blocks_the_adapter(
    chain_env, dagster_instance, dataset_id, sample_seed_bytes
):
    store, result = run_chain(
        dagster_instance, chain_env, dataset_id, sample_seed_bytes, validation={"max_self_bleu": 0.0}
    )
    validated = versions.current(store, *asset_location("validated_dataset", dataset_id))
    assert validated.meta["verdict"] == "DELETED" and "self_bleu" in validated.meta["failed_gates"]
    report = json.loads(versions.read(store, validated, "validation_report.json"))
    assert report["verdict"] == "DELETED" and report["failed_gates"] == validated.meta["failed_gates"]
    generated_bucket, generated_prefix = asset_location("generated_dataset", dataset_id)
    with pytest.raises(ObjectNotFound):
        versions.current(store, generated_bucket, generated_prefix)
    assert list(store.list(generated_bucket, generated_prefix + "/")) == []
    assert dagster_instance.get_latest_materialization_event(AssetKey("lora_adapter")) is None
    assert list(store.list(ADAPTERS_BUCKET, dataset_id)) == []
    check_key = AssetCheckKey(AssetKey("validated_dataset"), "ready_for_fine_tuning")
    check = dagster_instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]
    assert check.status == AssetCheckExecutionRecordStatus.FAILED
    # A failed blocking check fails the run and the adapter step never starts.
    assert not result.success
    assert [e for e in result.all_events if e.step_key == "lora_adapter"] == []


def test_bad_seed_fails_only_its_own_partition(chain_env, dagster_instance, dataset_id):
    store, result = run_chain(dagster_instance, chain_env, dataset_id, b'{"instruction": "x"}\n{oops\n')
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    message = failure.step_failure_data.error.message
    assert f"s3://seeds/{dataset_id}.jsonl line 1" in message and "unknown seed format" in message
    assert list(store.list(DATASETS_BUCKET, dataset_id)) == []


def test_a_relaunched_generation_continues_from_the_stored_checkpoint(tiny_model_dir, dagster_instance, dataset_id,
                                                                      sample_seed_bytes, tmp_path):
    from frd_assets.core.generation.checkpoint import StoreCheckpoint
    from frd_assets.core.generation.self_instruct import GenerationConfig, generate
    from frd_assets.core.generation.teachers import TransformersTeacher
    from frd_assets.core.held_out import HeldOutConfig, split_held_out
    from frd_assets.core.records import parse_seed
    from frd_assets.core.store import LocalStore

    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "TEACHER_MODEL": str(tiny_model_dir)}
    store = LocalStore(env["FRD_LOCAL_STORE"])
    store.put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    assert materialize(ASSETS[:1], partition_key=dataset_id, instance=dagster_instance,
                       resources=build_resources(env)).success
    seed_version = versions.current(store, *asset_location("seed_dataset", dataset_id)).version
    # An earlier attempt on this seed version that died after keeping 4 instructions left this checkpoint.
    checkpoint = StoreCheckpoint(store, *checkpoint_location(dataset_id), inputs={"seed_dataset": seed_version})
    earlier = GenerationConfig(**{**GENERATION, "num_instructions": 4})
    # Made with the same tasks held out as seed_dataset holds out (the default split), as the asset would.
    split = split_held_out(parse_seed(sample_seed_bytes, "s"), HeldOutConfig())
    generate(split.train, TransformersTeacher(str(tiny_model_dir)), earlier, checkpoint=checkpoint,
             held_out=split.held_out, log=lambda _: None)
    assert len(checkpoint.load()["kept"]) == 4

    result = materialize(ASSETS[:2], selection=ASSETS[1:2], partition_key=dataset_id, instance=dagster_instance,
                         resources=build_resources(env),
                         run_config={"ops": {"generated_dataset": {"config": GENERATION}}})
    assert result.success
    generated = metadata(dagster_instance, "generated_dataset")
    assert generated["resumed_from"] == 4
    assert checkpoint.load() is None  # cleared once the dataset is written


@pytest.mark.parametrize("validation, expect_adapter_run", [({}, True), ({"max_self_bleu": 0.0}, False)])
def test_the_verdict_sensor_requests_an_adapter_only_for_ready_data(tiny_model_dir, dagster_instance, dataset_id,
                                                                    sample_seed_bytes, tmp_path, validation,
                                                                    expect_adapter_run):
    from dagster import DagsterEventType, build_run_status_sensor_context

    from frd_assets.core.store import LocalStore
    from frd_assets.defs.resources import StoreResource
    from frd_assets.defs.sensors import adapter_on_ready_sensor

    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "TEACHER_MODEL": str(tiny_model_dir)}
    LocalStore(env["FRD_LOCAL_STORE"]).put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", sample_seed_bytes)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    ops = {"generated_dataset": {"config": GENERATION}, "validated_dataset": {"config": validation}}
    result = materialize(ASSETS[:3], partition_key=dataset_id, instance=dagster_instance,
                         resources=build_resources(env), run_config={"ops": ops}, raise_on_error=False)
    run = dagster_instance.get_run_by_id(result.run_id)
    [event] = [e.dagster_event for e in dagster_instance.all_logs(result.run_id)
               if e.dagster_event and e.dagster_event.event_type in (DagsterEventType.RUN_SUCCESS,
                                                                     DagsterEventType.RUN_FAILURE)]
    context = build_run_status_sensor_context(
        sensor_name="adapter_on_ready_sensor", dagster_instance=dagster_instance, dagster_run=run,
        dagster_event=event, resources={"store": StoreResource(local_root=env["FRD_LOCAL_STORE"])})
    outcome = adapter_on_ready_sensor(context)
    if expect_adapter_run:
        assert result.success
        assert outcome.partition_key == dataset_id and outcome.run_key.startswith(f"adapter:{dataset_id}:")
    else:
        # DELETED: the sensor would not even fire on a failed run, and asked anyway it declines.
        assert not result.success
        assert "DELETED" in outcome.skip_message
