"""The five assets: each reads its input, calls core, and returns the output with metadata."""

import dataclasses
import json

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    Backoff,
    Failure,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)

from frd_assets.core import versions
from frd_assets.core.datasets import asset_location, checkpoint_location
from frd_assets.core.evaluation import JUDGE_PROMPT_VERSION, eval_tasks_from_records, evaluate_adapter, load_eval_tasks
from frd_assets.core.evaluation.card import evaluated_card
from frd_assets.core.generation.checkpoint import StoreCheckpoint
from frd_assets.core.generation.self_instruct import generate
from frd_assets.core.held_out import (
    Split,
    eval_records,
    is_test,
    partition,
    split_held_out,
    split_with_uploaded_test,
)
from frd_assets.core.language import SeedLanguage, detect_seed_language
from frd_assets.core.lora.search import StudyStorageError, history_markdown, run_search, study_name_for
from frd_assets.core.names import (
    ADAPTER_EVALUATION,
    BEATS_BASE_CHECK,
    BEATS_BASE_ON_HELD_OUT_CHECK,
    CARD_FILE,
    CPU_QUEUE,
    EVALUATION_REPORT_FILE,
    GENERATED_DATASET,
    GPU_QUEUE,
    LORA_ADAPTER,
    QUEUE_TAG,
    READY_CHECK,
    SEED_DATASET,
    VALIDATED_DATASET,
    VALIDATION_REPORT_FILE,
)
from frd_assets.core.provenance import INPUTS, digest
from frd_assets.core.quality.dataset_card import dataset_card
from frd_assets.core.records import SeedFormatError, parse_seed, records_to_rows, rows_to_records
from frd_assets.core.retirement import read_tombstone, refusal
from frd_assets.core.seeds import read_eval_set, read_seed
from frd_assets.core.store import SEEDS_BUCKET, ObjectNotFound
from frd_assets.core.threads import apply_thread_budget
from frd_assets.core.validation import READY, unready_reason, validate
from frd_assets.defs.config import (
    EvaluationRunConfig,
    GenerationRunConfig,
    LoraRunConfig,
    SeedRunConfig,
    ValidationRunConfig,
)
from frd_assets.defs.io_managers import AdapterFolder, DatasetOutput, DatasetRows, no_retry_when_full
from frd_assets.defs.partitions import dataset_partitions, partition_dataset_id
from frd_assets.defs.resources import JudgeResource, LoraResource, StoreResource, TeacherResource

CPU = {QUEUE_TAG: CPU_QUEUE}
GPU = {QUEUE_TAG: GPU_QUEUE}
# seed_dataset metadata naming the upload it read; the seed sensor reads them back.
SEED_KEY, SEED_ETAG = "seed_key", "seed_etag"


def _sample_table(rows: list[dict], n: int = 5) -> MetadataValue:
    lines = ["| instruction | input | output |", "| --- | --- | --- |"]
    for r in rows[:n]:
        cells = [
            str(r.get(k, ""))[:120].replace("|", "\\|").replace("\n", " ") for k in ("instruction", "input", "output")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))


def chain_asset(op_tags: dict, kind: str, **kwargs):
    """@asset for a stage of the chain: partitioned by dataset UUID, in group frd, with the op tags that send
    its run to the queue (and, for GPU, the capacity) it needs."""
    return asset(partitions_def=dataset_partitions, group_name="frd", op_tags=op_tags, kinds={kind}, **kwargs)


@chain_asset(CPU, "python")
def seed_dataset(context: AssetExecutionContext, config: SeedRunConfig, store: StoreResource) -> Output[DatasetOutput]:
    """The uploaded seed (seeds/<uuid>.jsonl or .json, the newest if both), parsed and normalised, with the
    tasks held out for adapter_evaluation marked (an uploaded <uuid>.eval.jsonl, else a seeded share)."""
    uuid = partition_dataset_id(context.partition_key, asset=SEED_DATASET)
    s = store.get_store()
    # A partition re-added by hand (UI, GraphQL) for a retired id: the run would mix with its old objects.
    stone = read_tombstone(s, uuid)
    if stone is not None:
        raise Failure(refusal(stone), allow_retries=False)
    try:
        data, info = read_seed(s, uuid)
    except ObjectNotFound as exc:
        raise Failure(str(exc), allow_retries=False) from None
    except SeedFormatError as exc:  # over the size limit: refused before download
        raise Failure(str(exc), metadata={"object": exc.object_name}, allow_retries=False) from None
    try:
        records = parse_seed(data, s.uri(SEEDS_BUCKET, info.key))
        split, held_out_source = _held_out_split(s, uuid, records, config)
    except SeedFormatError as exc:
        raise Failure(
            str(exc), metadata={"object": exc.object_name, "line": exc.line or 0}, allow_retries=False
        ) from None
    records = split.train + split.held_out
    rows = records_to_rows(records)
    formats = sorted({r.provenance.get("format", "") for r in records})
    inputs = {"seed_upload": info.key, "etag": info.etag}
    language = _detect_language(context, records)
    return Output(
        DatasetOutput(rows, meta={INPUTS: inputs}),
        metadata={
            "records": len(rows),
            "held_out": len(split.held_out),
            # Records of each part: validation steers lora_adapter's search, test is adapter_evaluation's.
            "validation_records": len(split.validation),
            "test_records": len(split.test),
            "held_out_note": split.note,
            "held_out_source": held_out_source,
            "formats": ", ".join(formats),
            "source": s.uri(SEEDS_BUCKET, info.key),
            # What the seed sensor compares with the bucket: this upload, exactly, was processed.
            SEED_KEY: info.key,
            SEED_ETAG: info.etag,
            INPUTS: MetadataValue.json(inputs),
            # Detected once here; generation, validation and evaluation read it back (_stored_language).
            **language,
            "sample": _sample_table(rows),
        },
    )


def _detect_language(context: AssetExecutionContext, records) -> dict:
    """The seed's language as seed_dataset metadata: every task's instruction votes, held-out ones too."""
    try:
        found = detect_seed_language([r.instruction for r in records])
    except ValueError as exc:  # no instruction with a letter: the runs' `language` must say
        context.log.warning(str(exc))
        return {"language_note": str(exc)}
    context.log.info(f"seed language: {found.note}")
    meta = found.metadata()
    return {**meta, "language_counts": MetadataValue.json(meta["language_counts"])}


def _seed_metadata(context: AssetExecutionContext, uuid: str) -> dict:
    """The metadata values of the seed_dataset materialization of this partition; {} when there is none."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(SEED_DATASET), asset_partitions=[uuid]), limit=1
    ).records
    mat = records[0].asset_materialization if records else None
    return {k: v.value for k, v in mat.metadata.items()} if mat is not None else {}


def _stored_language(context: AssetExecutionContext, uuid: str) -> SeedLanguage | None:
    """The language seed_dataset detected for this partition; None for a seed materialized before it did,
    whose language core then detects from the rows."""
    return SeedLanguage.from_metadata(_seed_metadata(context, uuid))


def _seed_source(context: AssetExecutionContext, uuid: str) -> str:
    """The seed object seed_dataset read for this partition, as its metadata recorded it."""
    return str(_seed_metadata(context, uuid).get("source", "the seed upload"))


def _held_out_split(s, uuid: str, records, config: SeedRunConfig) -> tuple[Split, str]:
    """The uploaded evaluation set as the test part when there is one (validation from the seed), else a
    seeded split of the seed into train, validation and test."""
    uploaded = read_eval_set(s, uuid)
    if uploaded is None:
        return split_held_out(records, config.core()), "split"
    data, info = uploaded
    name = s.uri(SEEDS_BUCKET, info.key)
    try:
        tasks, skipped = load_eval_tasks(data, name)
    except ValueError as exc:
        raise SeedFormatError(name, None, str(exc)) from None
    split = split_with_uploaded_test(records, eval_records(tasks, name), config.core())
    return dataclasses.replace(split, note=f"{split.note} ({skipped} without a reference skipped)"), name


@chain_asset(
    CPU,
    "python",
    # A retry continues from the checkpoint in the store instead of starting over.
    retry_policy=RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL),
)
def generated_dataset(
    context: AssetExecutionContext,
    config: GenerationRunConfig,
    teacher: TeacherResource,
    store: StoreResource,
    seed_dataset: DatasetRows,
) -> Output[DatasetOutput]:
    """Self-Instruct bootstrapping from the seed with the teacher model, novelty-filtered by ROUGE-L."""
    uuid = partition_dataset_id(context.partition_key, asset=GENERATED_DATASET)
    # An explicit torch thread count (FRD_TORCH_THREADS, default all cores): see core/threads.py.
    apply_thread_budget()
    gen_config = config.core()
    model = teacher.build()
    inputs = {SEED_DATASET: seed_dataset.version.version}
    # The checkpoint is only continued by a run that reads the same seed version (core/generation/checkpoint).
    checkpoint = StoreCheckpoint(store.get_store(), *checkpoint_location(uuid), inputs=inputs)
    # Held-out tasks are never shown to the teacher; they only join the novelty pool.
    seeds, held_out = partition(rows_to_records(seed_dataset))
    with no_retry_when_full():  # the checkpoint is written to the store after each round
        result = generate(seeds, model, gen_config, checkpoint=checkpoint, held_out=held_out,
                          seed_language_found=_stored_language(context, uuid), log=context.log.info)
    if not result.records:
        raise Failure(
            f"generation for dataset {uuid} kept no records after {result.rounds} rounds "
            f"(rejected: {dict(result.rejected)}); raise max_rounds or check the teacher model {model.name}"
        )
    rows = records_to_rows(result.records)
    # Done: the next materialization of this partition starts afresh rather than returning this set again.
    checkpoint.clear()
    return Output(
        DatasetOutput(rows, meta={INPUTS: inputs}),
        metadata={
            INPUTS: MetadataValue.json(inputs),
            "records": len(rows),
            "target": gen_config.num_instructions,
            "kept_instructions": result.kept_instructions,
            # Records per kept instruction; goal >= 0.8. "instances" says where they were read from
            # (constrained JSON, the text parser) and what was lost, and why JSON was not asked if not.
            "yield": round(result.instance_yield, 3),
            "instance_format": gen_config.instance_format,
            "instances": MetadataValue.json(result.instance_report()),
            "resumed_from": result.resumed_from,
            "proposed": result.proposed,
            "rejected": MetadataValue.json(dict(result.rejected)),
            # How words were counted and which languages the blacklist and "write a program" lists cover.
            "filters_signature": gen_config.filters_signature(),
            "rounds": result.rounds,
            "teacher": model.name,
            "teacher_tokens": result.teacher_tokens,
            "tokens_per_second": round(result.tokens_per_second, 2),
            "language": result.language.code if result.language else "",
            "language_note": result.language.note if result.language else "",
            "sample": _sample_table(rows),
        },
    )


@chain_asset(
    CPU,
    "python",
    check_specs=[
        AssetCheckSpec(
            READY_CHECK,
            asset=VALIDATED_DATASET,
            blocking=True,
            description="The verdict is READY_FOR_FINE_TUNING; blocks lora_adapter otherwise.",
        )
    ],
)
def validated_dataset(
    context: AssetExecutionContext,
    config: ValidationRunConfig,
    store: StoreResource,
    teacher: TeacherResource,
    judge: JudgeResource,
    seed_dataset: DatasetRows,
    generated_dataset: DatasetRows,
):
    """The gate: per-record checks, decontamination against the held-out tasks, MinHash near-duplicates,
    judge scores when a judge is configured, ROUGE-L and BLEU gates; verdict READY_FOR_FINE_TUNING or DELETED.

    The kept rows, the report, the dataset card and the verdict are one version in the store
    (DatasetOutput), so no reader sees a verdict from one run beside rows from another; DELETED also
    removes the generated version that was judged (and no other), after the verdict is stored."""
    uuid = partition_dataset_id(context.partition_key, asset=VALIDATED_DATASET)
    apply_thread_budget()
    _seeds, held_out = partition(rows_to_records(seed_dataset))
    report = validate(generated_dataset, seed_dataset, config.core(), eval_tasks=held_out, judge=judge.build(),
                      seed_language_found=_stored_language(context, uuid))
    summary = report.to_dict()  # the stored form: the metadata's JSON entries are its parts, as in the file
    card = dataset_card(report, dataset_id=uuid, seed_name=_seed_source(context, uuid), teacher_name=teacher.model)
    ready = report.verdict == READY
    inputs = {GENERATED_DATASET: generated_dataset.version.version, SEED_DATASET: seed_dataset.version.version}
    gates = {g.name: MetadataValue.float(float(g.value)) for g in report.gates}
    # Dagster stores this output before the generator resumes, so the deletion below follows the verdict.
    yield Output(
        DatasetOutput(
            report.valid_rows if ready else [],
            files={VALIDATION_REPORT_FILE: report.to_json().encode(), CARD_FILE: card.encode()},
            meta={"dataset": uuid, "verdict": report.verdict, "failed_gates": report.failed_gate_names,
                  INPUTS: inputs},
        ),
        metadata={
            INPUTS: MetadataValue.json(inputs),
            "verdict": report.verdict,
            "records": report.records,
            "valid_records": report.valid_records,
            "invalid_records": MetadataValue.json(report.invalid_records),
            "contaminated": MetadataValue.json(report.decontamination.to_dict()),
            "near_duplicates": MetadataValue.json(report.near_duplicates.to_dict()),
            "judge_scores": MetadataValue.json(report.judge.to_dict()) if report.judge else report.judge_note,
            "language": MetadataValue.json(summary["language"]),
            "failed_gates": MetadataValue.json(report.failed_gate_names),
            "report": MetadataValue.json(summary),
            **{f"gate/{k}": v for k, v in gates.items()},
        },
    )
    if not ready:
        # DELETED: the generated version judged goes, exactly that one: a version another run published
        # meanwhile was not judged and stays (with its pointer). The validated version with the report stays.
        judged = generated_dataset.version.version
        removed = versions.remove_version(store.get_store(), *asset_location(GENERATED_DATASET, uuid), judged,
                                          log=context.log.info)
        context.log.warning(f"dataset {uuid} DELETED: failed gates {report.failed_gate_names}; "
                            f"removed generated version {judged} ({removed} object(s))")
    yield AssetCheckResult(
        check_name=READY_CHECK,
        passed=ready,
        severity=AssetCheckSeverity.ERROR,
        metadata={"verdict": report.verdict, "failed_gates": MetadataValue.json(report.failed_gate_names)},
    )


@chain_asset(
    GPU,
    "pytorch",
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
    check_specs=[
        AssetCheckSpec(
            BEATS_BASE_CHECK,
            asset=LORA_ADAPTER,
            description="The best adapter's validation-task loss is below the base model's (its teacher-text "
            "eval loss where the seed gave no validation tasks, or objective teacher_text); a warning otherwise.",
        )
    ],
)
def lora_adapter(
    context: AssetExecutionContext,
    config: LoraRunConfig,
    lora: LoraResource,
    store: StoreResource,
    seed_dataset: DatasetRows,
    validated_dataset: DatasetRows,
):
    """peft LoRA tuned by an Optuna TPE search over rank, lora_alpha and learning rate; the best adapter.

    It trains on the validated records and the user's seed tasks that are not held out, and the search
    minimises the loss on the seed's validation tasks (core/lora/real_tasks.py); the base model is the
    candidate to beat.

    Store errors are retried (RetryPolicy): the study resumes from its database, so a retry only redoes
    the unfinished trial and the upload. A rejected dataset is not retried."""
    uuid = partition_dataset_id(context.partition_key, asset=LORA_ADAPTER)
    apply_thread_budget()
    # The verdict of the very version whose rows were loaded (one pointer read for both).
    problem = unready_reason(uuid, validated_dataset.version.meta)
    if problem:
        raise Failure(f"{problem}; no adapter is built from a rejected dataset", allow_retries=False)
    base_model = config.base_model or lora.base_model
    training, space, real_tasks = config.training(), config.space(), config.real_tasks()
    study = study_name_for(uuid, base_model, inputs={
        "data_version": validated_dataset.version.version, "training": dataclasses.asdict(training),
        "space": dataclasses.asdict(space), "seed_version": seed_dataset.version.version,
        "real_tasks": dataclasses.asdict(real_tasks)})
    work_dir = lora.trials_dir() / study
    # The study lives in RDB storage under a name made from the UUID, the base model and a hash of the data
    # version and the training config: a retried or re-launched materialization of the same data continues
    # it instead of starting over; new data starts a new study. Its trials run in n_workers
    # processes of this run's thread budget, or in Kubernetes pods when FRD_K8S_TRIAL_WORKERS says so.
    search_settings = config.settings(default_workers=lora.n_workers)
    try:
        result = run_search(
            rows_to_records(validated_dataset),
            base_model=base_model,
            n_trials=config.n_trials or lora.n_trials,
            storage_url=lora.storage_url(),
            study_name=study,
            work_dir=work_dir,
            out_dir=work_dir / "best",
            training=training,
            space=space,
            settings=search_settings,
            workers=lora.trial_workers(),
            print_fn=context.log.info,
            seed_records=rows_to_records(seed_dataset),
            real_tasks=real_tasks,
        )
    except StudyStorageError as exc:
        # A retry meets the same lost database; the message says what to fix, and a new launch resumes.
        raise Failure(str(exc), allow_retries=False) from None
    improvement = result.base_eval_loss - result.best_eval_loss
    if result.beats_base:
        context.log.info(result.verdict())
    else:
        context.log.warning(result.verdict())
    inputs = {VALIDATED_DATASET: validated_dataset.version.version, SEED_DATASET: seed_dataset.version.version,
              "base_model": base_model}
    yield Output(
        AdapterFolder(result.adapter_dir, meta={"base_model": base_model, "study": study, INPUTS: inputs,
                                                "beats_base_model": result.beats_base}),
        metadata={
            INPUTS: MetadataValue.json(inputs),
            "base_model": base_model,
            "study": study,
            "best_params": MetadataValue.json(result.best_params),
            "best_eval_loss": result.best_eval_loss,
            "base_eval_loss": result.base_eval_loss,
            "eval_loss_improvement": improvement,
            # What the search minimised, and the base model against the best adapter on the validation tasks.
            "objective": result.objective,
            "objective_note": result.objective_note,
            "base_validation_loss": _or_none(result.base_validation_loss),
            "best_validation_loss": _or_none(result.best_validation_loss),
            "beats_base_model": result.beats_base,
            "verdict": result.verdict(),
            "seed_task_records": result.seed_task_records,
            "validation_records": result.validation_records,
            "trials": MetadataValue.md(history_markdown(result.trials)),
            "n_trials": len(result.trials),
            "n_workers": search_settings.n_workers,
            "train_records": result.train_records,
            "eval_records": result.eval_records,
        },
    )
    yield AssetCheckResult(
        check_name=BEATS_BASE_CHECK,
        passed=result.beats_base,
        severity=AssetCheckSeverity.WARN,
        metadata={"objective": result.objective, "best": result.best_value, "base": result.base_value,
                  "verdict": result.verdict(), "best_eval_loss": result.best_eval_loss,
                  "base_eval_loss": result.base_eval_loss},
    )


def _or_none(value: float | None):
    """Dagster metadata takes no None float: "-" where there was no validation task to measure."""
    return "-" if value is None else value


@chain_asset(
    GPU,
    "pytorch",
    check_specs=[
        AssetCheckSpec(
            BEATS_BASE_ON_HELD_OUT_CHECK,
            asset=ADAPTER_EVALUATION,
            description="On the held-out tasks the adapter's judge win rate is above 0.5 (no judge: its mean "
            "ROUGE-L is above the base model's). WARN by default; ERROR with check_severity.",
        )
    ],
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
)
def adapter_evaluation(
    context: AssetExecutionContext,
    config: EvaluationRunConfig,
    judge: JudgeResource,
    lora: LoraResource,
    store: StoreResource,
    seed_dataset: DatasetRows,
    lora_adapter: AdapterFolder,
):
    """The adapter against its base model on the held-out seed tasks the teacher never saw: greedy answers
    from one model load (peft's disable_adapter for the base pass), ROUGE-L F to the references with a
    bootstrap interval, and a pairwise judge asked in both orders when one is configured."""
    uuid = partition_dataset_id(context.partition_key, asset=ADAPTER_EVALUATION)
    apply_thread_budget()
    # The test part only: the validation part chose the adapter, so its figure would flatter it.
    held_out = [r for r in rows_to_records(seed_dataset) if is_test(r)]
    if not held_out:
        raise Failure(
            f"dataset {uuid} has no held-out tasks to evaluate on (fewer than 10 seed tasks with a reference, "
            f"or held_out_fraction 0); upload an evaluation set: `frd seed upload SEED --eval EVAL_FILE --uuid {uuid}`",
            allow_retries=False,
        )
    base_model = config.base_model or lora_adapter.meta.get("base_model") or lora.base_model
    the_judge = judge.build()
    s = store.get_store()
    adapter_version = lora_adapter.version
    adapter_uri = s.uri(adapter_version.bucket, adapter_version.folder) if adapter_version else None
    card_path = lora_adapter.path / CARD_FILE
    adapter_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    report = evaluate_adapter(
        eval_tasks_from_records(held_out),
        base_model=base_model,
        adapter_dir=lora_adapter.path,
        adapter_name=adapter_uri,
        config=config.core(),
        judge=the_judge,
        print_fn=context.log.info,
        language=_stored_language(context, uuid),
    )
    figures = report.to_dict()
    judged = figures["judge"]
    # The tasks by content as well as by the seed version that holds them: an uploaded evaluation set
    # replaced under the same seed version would otherwise look the same.
    inputs = {LORA_ADAPTER: adapter_version.version if adapter_version else "-", "base_model": base_model,
              SEED_DATASET: seed_dataset.version.version, "tasks": digest(records_to_rows(held_out))}
    yield Output(
        DatasetOutput(
            report.answers,
            files={EVALUATION_REPORT_FILE: json.dumps(figures, indent=2, sort_keys=True).encode(),
                   CARD_FILE: evaluated_card(adapter_card, report, adapter_uri=adapter_uri).encode()},
            meta={"adapter_version": adapter_version.version if adapter_version else None,
                  "adapter_beats_base": report.adapter_beats_base, INPUTS: inputs},
        ),
        metadata={
            INPUTS: MetadataValue.json(inputs),
            "n": report.n,
            "base_model": base_model,
            "judge": judged["model"] if judged else "none: reference metrics only",
            "judge_prompt_version": JUDGE_PROMPT_VERSION if judged else "-",
            "rouge_l_base": figures["rouge_l"]["base"],
            "rouge_l_adapter": figures["rouge_l"]["adapter"],
            "rouge_l_diff": figures["rouge_l"]["diff"],
            "rouge_l_diff_ci": MetadataValue.json(figures["rouge_l"]["diff_ci"]),
            "rouge_l_signature": figures["rouge_l"]["signature"],
            **({"win_rate": judged["win_rate"], "win_rate_ci": MetadataValue.json(judged["win_rate_ci"]),
                "position_consistency": judged["position_consistency"]} if judged else {}),
            "base_words": figures["length"]["base_words"],
            "adapter_words": figures["length"]["adapter_words"],
            "tokens_per_second": round(report.tokens_per_second, 2),
            "figures": MetadataValue.md(report.markdown_table()),
            "samples": MetadataValue.md(report.samples_markdown(10)),
        },
    )
    yield AssetCheckResult(
        check_name=BEATS_BASE_ON_HELD_OUT_CHECK,
        passed=report.adapter_beats_base,
        severity=AssetCheckSeverity.ERROR if config.check_severity == "ERROR" else AssetCheckSeverity.WARN,
        metadata={
            "measure": "judge win rate" if judged else "mean ROUGE-L F vs base",
            "interval_excludes_no_difference": report.interval_excludes_no_difference,
            "n": report.n,
        },
    )
