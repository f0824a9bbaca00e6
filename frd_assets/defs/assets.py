"""The four assets: each reads its input, calls core, and returns the output with metadata."""

import json

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Failure,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)

from frd_assets.core.generation.checkpoint import StoreCheckpoint
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.lora.search import history_markdown, run_search, study_name_for
from frd_assets.core.records import SeedFormatError, parse_seed, records_to_rows, rows_to_records
from frd_assets.core.store import (
    DATASETS_BUCKET,
    SEED_SUFFIXES,
    SEEDS_BUCKET,
    ObjectNotFound,
    dataset_object_key,
    generation_checkpoint_key,
    status_key,
    validation_report_key,
)
from frd_assets.core.validation import READY, ValidationConfig, validate
from frd_assets.defs.config import GenerationRunConfig, LoraRunConfig, ValidationRunConfig
from frd_assets.defs.io_managers import AdapterFolder
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import LoraResource, StoreResource, TeacherResource

CPU = {"frd/queue": "cpu"}
GPU = {"frd/queue": "gpu"}
READY_CHECK = "ready_for_fine_tuning"
BEATS_BASE_CHECK = "beats_base_model"


def _sample_table(rows: list[dict], n: int = 5) -> MetadataValue:
    lines = ["| instruction | input | output |", "| --- | --- | --- |"]
    for r in rows[:n]:
        cells = [
            str(r.get(k, ""))[:120].replace("|", "\\|").replace("\n", " ") for k in ("instruction", "input", "output")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))


@asset(partitions_def=dataset_partitions, op_tags=CPU, group_name="frd", kinds={"python"})
def seed_dataset(context: AssetExecutionContext, store: StoreResource) -> Output[list[dict]]:
    """The uploaded seed (seeds/<uuid>.jsonl or .json), parsed and normalised to canonical records."""
    uuid = context.partition_key
    s = store.get_store()
    for suffix in SEED_SUFFIXES:
        key = f"{uuid}{suffix}"
        try:
            data = s.get_bytes(SEEDS_BUCKET, key)
            break
        except ObjectNotFound:
            continue
    else:
        raise Failure(
            f"no seed upload for dataset {uuid}: expected {s.uri(SEEDS_BUCKET, uuid + '.jsonl')} "
            f"(or .json); upload it with `frd seed upload FILE --uuid {uuid}`"
        )
    try:
        records = parse_seed(data, s.uri(SEEDS_BUCKET, key))
    except SeedFormatError as exc:
        raise Failure(str(exc), metadata={"object": s.uri(SEEDS_BUCKET, key), "line": exc.line or 0}) from None
    rows = records_to_rows(records)
    formats = sorted({r.provenance.get("format", "") for r in records})
    return Output(
        rows,
        metadata={
            "records": len(rows),
            "formats": ", ".join(formats),
            "source": s.uri(SEEDS_BUCKET, key),
            "sample": _sample_table(rows),
        },
    )


@asset(
    partitions_def=dataset_partitions,
    op_tags=CPU,
    group_name="frd",
    kinds={"python"},
    # A retry continues from the checkpoint in the store instead of starting over.
    retry_policy=RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL),
)
def generated_dataset(
    context: AssetExecutionContext,
    config: GenerationRunConfig,
    teacher: TeacherResource,
    store: StoreResource,
    seed_dataset: list[dict],
) -> Output[list[dict]]:
    """Self-Instruct bootstrapping from the seed with the teacher model, novelty-filtered by ROUGE-L."""
    gen_config = GenerationConfig(**config.model_dump())
    model = teacher.build()
    checkpoint = StoreCheckpoint(store.get_store(), DATASETS_BUCKET, generation_checkpoint_key(context.partition_key))
    result = generate(rows_to_records(seed_dataset), model, gen_config, checkpoint=checkpoint, log=context.log.info)
    if not result.records:
        raise Failure(
            f"generation for dataset {context.partition_key} kept no records after {result.rounds} rounds "
            f"(rejected: {dict(result.rejected)}); raise max_rounds or check the teacher model {model.name}"
        )
    rows = records_to_rows(result.records)
    # Done: the next materialization of this partition starts afresh rather than returning this set again.
    checkpoint.clear()
    return Output(
        rows,
        metadata={
            "records": len(rows),
            "target": gen_config.num_instructions,
            "resumed_from": result.resumed_from,
            "proposed": result.proposed,
            "rejected": MetadataValue.json(dict(result.rejected)),
            "rounds": result.rounds,
            "teacher": model.name,
            "teacher_tokens": result.teacher_tokens,
            "tokens_per_second": round(result.tokens_per_second, 2),
            "sample": _sample_table(rows),
        },
    )


@asset(
    partitions_def=dataset_partitions,
    op_tags=CPU,
    group_name="frd",
    kinds={"python"},
    check_specs=[
        AssetCheckSpec(
            READY_CHECK,
            asset="validated_dataset",
            blocking=True,
            description="The verdict is READY_FOR_FINE_TUNING; blocks lora_adapter otherwise.",
        )
    ],
)
def validated_dataset(
    context: AssetExecutionContext,
    config: ValidationRunConfig,
    store: StoreResource,
    seed_dataset: list[dict],
    generated_dataset: list[dict],
):
    """The gate: per-record checks, ROUGE-L and BLEU against thresholds, verdict READY_FOR_FINE_TUNING or DELETED."""
    uuid = context.partition_key
    report = validate(
        generated_dataset, [r["instruction"] for r in seed_dataset], ValidationConfig(**config.model_dump())
    )
    s = store.get_store()
    status = {"dataset": uuid, **report.to_dict()}
    s.put_bytes(DATASETS_BUCKET, validation_report_key(uuid), report.to_json().encode())
    if report.verdict != READY:
        # DELETED: the generated data goes; the status record with the reasons stays.
        s.delete(DATASETS_BUCKET, dataset_object_key(uuid, "generated_dataset"))
        context.log.warning(f"dataset {uuid} DELETED: failed gates {status['failed_gates']}")
    s.put_bytes(DATASETS_BUCKET, status_key(uuid), json.dumps(status, indent=2).encode())
    gates = {g.name: MetadataValue.float(float(g.value)) for g in report.gates}
    yield Output(
        report.valid_rows if report.verdict == READY else [],
        metadata={
            "verdict": report.verdict,
            "records": report.records,
            "valid_records": report.valid_records,
            "invalid_records": MetadataValue.json(report.invalid_records),
            "failed_gates": MetadataValue.json(status["failed_gates"]),
            "report": MetadataValue.json(report.to_dict()),
            **{f"gate/{k}": v for k, v in gates.items()},
        },
    )
    yield AssetCheckResult(
        check_name=READY_CHECK,
        passed=report.verdict == READY,
        severity=AssetCheckSeverity.ERROR,
        metadata={"verdict": report.verdict, "failed_gates": MetadataValue.json(status["failed_gates"])},
    )


@asset(
    partitions_def=dataset_partitions,
    op_tags=GPU,
    group_name="frd",
    kinds={"pytorch"},
    check_specs=[
        AssetCheckSpec(
            BEATS_BASE_CHECK,
            asset="lora_adapter",
            description="The adapter's held-out eval loss is below the base model's (a warning otherwise).",
        )
    ],
)
def lora_adapter(
    context: AssetExecutionContext,
    config: LoraRunConfig,
    lora: LoraResource,
    store: StoreResource,
    validated_dataset: list[dict],
):
    """peft LoRA tuned by an Optuna TPE search over rank, lora_alpha and learning rate; the best adapter."""
    uuid = context.partition_key
    s = store.get_store()
    try:
        status = json.loads(s.get_bytes(DATASETS_BUCKET, status_key(uuid)))
    except ObjectNotFound:
        raise Failure(f"dataset {uuid} has no validation status; materialize validated_dataset first") from None
    if status.get("verdict") != READY:
        raise Failure(
            f"dataset {uuid} is {status.get('verdict')} (failed gates {status.get('failed_gates')}); "
            "no adapter is built from a rejected dataset"
        )
    base_model = config.base_model or lora.base_model
    study = study_name_for(uuid, base_model)
    work_dir = lora.trials_dir() / study
    # The study lives in RDB storage under a name made from the UUID and base model: a retried or
    # re-launched materialization continues it instead of starting over.
    result = run_search(
        rows_to_records(validated_dataset),
        base_model=base_model,
        n_trials=config.n_trials or lora.n_trials,
        storage_url=lora.storage_url(),
        study_name=study,
        work_dir=work_dir,
        out_dir=work_dir / "best",
        training=config.training(),
        space=config.space(),
        settings=config.settings(),
        print_fn=context.log.info,
    )
    improvement = result.base_eval_loss - result.best_eval_loss
    yield Output(
        AdapterFolder(result.adapter_dir),
        metadata={
            "base_model": base_model,
            "study": study,
            "best_params": MetadataValue.json(result.best_params),
            "best_eval_loss": result.best_eval_loss,
            "base_eval_loss": result.base_eval_loss,
            "eval_loss_improvement": improvement,
            "trials": MetadataValue.md(history_markdown(result.trials)),
            "n_trials": len(result.trials),
            "train_records": result.train_records,
            "eval_records": result.eval_records,
        },
    )
    yield AssetCheckResult(
        check_name=BEATS_BASE_CHECK,
        passed=improvement > 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"best_eval_loss": result.best_eval_loss, "base_eval_loss": result.base_eval_loss},
    )
