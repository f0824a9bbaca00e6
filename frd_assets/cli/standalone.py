"""The commands that run on files without Dagster: models prepare, seed upload, generate, validate, tune,
evaluate, export and dashboard.

Nothing here imports Dagster, the GraphQL client or the definitions, at module level or in a function: an
ML engineer runs these in a notebook's environment or a plain container (test_standalone.py imports this
module and checks that no `dagster` module was loaded). Heavy libraries (torch, transformers, optuna) are
still imported inside each command, so `frd --help` and the light commands start in a moment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import uuid as uuid_lib
from pathlib import Path
from typing import TYPE_CHECKING

from frd_assets.cli.common import EXIT_DELETED, bad_input, open_configured_store, shorten

if TYPE_CHECKING:
    from frd_assets.core.validation_report import ValidationReport

# The owner an output folder's marker names, so a re-run may replace its own output (core/output_dirs.py).
TUNE_COMMAND = "frd tune"
# Config field -> the flag (or setting) that sets it, for the refusals of core's config checks.
GENERATE_FLAGS = {"num_instructions": "--num", "prompts_per_round": "--prompts-per-round",
                  "max_rounds": "--max-rounds", "checkpoint_every": "--checkpoint-every",
                  "temperature": "--temperature", "seed": "--seed-value", "language": "--language"}
TUNE_FLAGS = {"n_trials": "--trials or LORA_N_TRIALS", "epochs": "--epochs", "batch_size": "--batch-size",
              "max_length": "--max-length", "n_workers": "--workers or LORA_N_WORKERS"}
EVALUATE_FLAGS = {"max_new_tokens": "--max-new-tokens", "limit": "--limit"}
EXPORT_FLAGS = {"prompts": "--prompts", "max_new_tokens": "--max-new-tokens"}


def from_flags(args, flags: dict[str, str]) -> dict:
    """{config field: the value of its flag} for the fields `flags` maps to a flag (argparse's dest is the
    flag's name with dashes as underscores)."""
    return {field: getattr(args, flag.removeprefix("--").replace("-", "_")) for field, flag in flags.items()}


def cmd_models_prepare(args) -> int:
    from frd_assets.core.models import prepare_default_model

    prepare_default_model()
    return 0


def upload_seed(path: Path, dataset_id: str | None, eval_path: Path | None = None, *,
                restore_retired: bool = False) -> str:
    """Checks the seed (and evaluation set) parse, then writes them, the evaluation set first so the run the
    seed upload starts sees it; the seed is the dataset's one seed object. Returns the dataset id.

    An id that was retired is refused (DatasetRetired, one line), unless restore_retired removes its
    tombstone on purpose (core/retirement.py)."""
    from frd_assets.core.datasets import SEED_SUFFIXES, check_dataset_id
    from frd_assets.core.evaluation import load_eval_tasks
    from frd_assets.core.records import check_seed_size, parse_seed
    from frd_assets.core.retirement import check_upload_allowed
    from frd_assets.core.seeds import write_eval_set, write_seed

    dataset_id = check_dataset_id(dataset_id, what="--uuid") if dataset_id is not None else str(uuid_lib.uuid4())
    suffix = path.suffix if path.suffix in SEED_SUFFIXES else ".jsonl"
    check_seed_size(path.stat().st_size, str(path))  # refuse a huge file before reading it
    data = path.read_bytes()
    parse_seed(data, str(path))  # fail here, naming the line, rather than in a run later
    eval_data = None
    if eval_path is not None:
        check_seed_size(eval_path.stat().st_size, str(eval_path))
        eval_data = eval_path.read_bytes()
        tasks, _skipped = load_eval_tasks(eval_data, str(eval_path))
        if not tasks:
            raise ValueError(f"{eval_path}: no task with a reference output; an evaluation set needs answers")
    store = open_configured_store()
    check_upload_allowed(store, dataset_id, restore=restore_retired)
    if eval_data is not None:
        write_eval_set(store, dataset_id, eval_data)
    # Replaces the other suffix's object too: one dataset id has one seed.
    write_seed(store, dataset_id, data, suffix)
    return dataset_id


def cmd_seed_upload(args) -> int:
    from frd_assets.core.store import StoreError

    try:
        print(upload_seed(Path(args.file), args.uuid, Path(args.eval) if args.eval else None,
                          restore_retired=args.restore_retired))
    # SeedFormatError, InvalidDatasetId and DatasetRetired are ValueErrors; OSError covers a missing or unreadable file;
    # StoreError a store that refuses the credentials or cannot be reached.
    except (ValueError, OSError, StoreError) as exc:
        return bad_input(exc)
    return 0


def cmd_generate(args) -> int:
    """Self-Instruct generation on local files, without Dagster; resumable through its checkpoint file."""
    from frd_assets.core.generation.checkpoint import StoreCheckpoint
    from frd_assets.core.generation.self_instruct import GenerationConfig, generate
    from frd_assets.core.generation.teachers import make_teacher
    from frd_assets.core.output_dirs import check_output_file
    from frd_assets.core.records import dumps_jsonl, parse_seed, records_to_rows
    from frd_assets.core.settings import secret, teacher_settings
    from frd_assets.core.store import LocalStore

    seed_path, out = Path(args.seed), Path(args.out)
    try:
        # The flags first, against the bounds the platform's run config has too: a refusal before any work.
        config = GenerationConfig(**from_flags(args, GENERATE_FLAGS))
        check_output_file(out, command="frd generate")
        seeds = parse_seed(seed_path.read_bytes(), str(seed_path))
    except (ValueError, OSError) as exc:  # SeedFormatError, ConfigError and OutputDirError are ValueErrors
        return bad_input(exc, GENERATE_FLAGS)
    try:
        s = teacher_settings()
        teacher = make_teacher(
            backend="openai" if args.teacher_url else s.backend,
            model=args.teacher_model or s.model,
            base_url=args.teacher_url or s.base_url,
            api_key=secret(s.api_key_var),
            batch_size=s.batch_size,
            max_concurrency=s.max_concurrency,
            timeout=s.timeout,
        )
    except ValueError as exc:  # ModelNotFound: a teacher model that is not there, or pickle-only
        return bad_input(exc)
    ckpt_path = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".checkpoint.json")
    # LocalStore gives the checkpoint the same atomic replace the platform's store uses.
    checkpoint = StoreCheckpoint(LocalStore(ckpt_path.parent), ".", ckpt_path.name)
    result = generate(seeds, teacher, config, checkpoint=checkpoint, log=print)
    LocalStore(out.parent).put_bytes(".", out.name, dumps_jsonl(records_to_rows(result.records)))
    checkpoint.clear()
    print(f"wrote {len(result.records)} records to {out}")
    return 0


def format_report(report: ValidationReport, source: str) -> str:
    invalid = report.records - report.valid_records
    lines = [
        f"{source}: {report.verdict}",
        f"records: {report.records}, kept: {report.valid_records}, dropped: {invalid}",
    ]
    for reason, count in sorted(report.invalid_records.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason}: {count}")
    lang = report.language
    lines.append(f"language: {lang.expected.note}; {lang.off_language} of {lang.checked} records off it"
                 if lang else "language: not determined (give --seed, or --config '{\"language\": \"ru\"}')")
    lines.append("gates:")
    for g in report.gates:
        lines.append(f"  {'pass' if g.passed else 'FAIL'}  {g.name} = {g.value:.4g} (threshold {g.threshold:g})")
    decon = report.decontamination
    if decon.note is None:
        lines.append(f"decontamination: {len(decon.contaminated)} records share a word {decon.ngram}-gram "
                     f"with the {decon.eval_tasks} evaluation tasks")
        lines += [f"  {shorten(c.instruction, 60)!r} ~ task {c.task_id}: {shorten(c.task_instruction, 60)!r}"
                  for c in decon.contaminated[:10]]
    else:
        lines.append(f"decontamination: {decon.note} (give --decontaminate FILE)")
    if report.judge is None:
        lines.append(f"judge: {report.judge_note} (give --judge-model, or JUDGE_MODEL)")
    else:
        j = report.judge
        dist = ", ".join(f"{k}: {v}" for k, v in j.distribution.items())
        lines.append(f"judge: {j.model}, {j.records_scored} of {j.records_judged} scored ({dist})")
    return "\n".join(lines)


def cmd_validate(args) -> int:
    """The validation gate on local files, without Dagster: 0 READY_FOR_FINE_TUNING, 3 DELETED, 2 bad input."""
    import json

    from frd_assets.core.config_checks import config_from_json
    from frd_assets.core.evaluation import judge_settings_from_env, load_eval_tasks, make_judge
    from frd_assets.core.generation.openai_teacher import TeacherError
    from frd_assets.core.records import check_seed_size, parse_seed
    from frd_assets.core.validation import READY, ValidationConfig, read_records, validate

    judge_settings = judge_settings_from_env()
    try:
        data = Path(args.data).read_bytes()
        seeds = parse_seed(Path(args.seed).read_bytes(), args.seed) if args.seed else []
        config = config_from_json(ValidationConfig, args.config or "{}", source="--config")
        eval_tasks = []
        for name in args.decontaminate or []:
            check_seed_size(Path(name).stat().st_size, name)  # refuse a huge file before reading it
            eval_tasks += load_eval_tasks(Path(name).read_bytes(), name)[0]
        judge = make_judge(base_url=args.judge_url or judge_settings["base_url"],
                           model=args.judge_model or judge_settings["model"], api_key=judge_settings["api_key"])
        rows, unreadable = read_records(data)
        report = validate(rows, seeds, config, eval_tasks=eval_tasks, judge=judge, unreadable=unreadable)
    # SeedFormatError, TaskFileError, ConfigError and ModelNotFound are ValueErrors; OSError covers a missing or
    # unreadable file; TeacherError a judge endpoint that refuses or cannot be reached.
    except (OSError, ValueError, TeacherError) as exc:
        return bad_input(exc)
    print(json.dumps(report.to_dict(), sort_keys=True) if args.json else format_report(report, args.data))
    return 0 if report.verdict == READY else EXIT_DELETED


def cmd_tune(args) -> int:
    """The LoRA search on a local JSONL file, without Dagster; re-running the same command continues it."""
    from frd_assets.core.config_checks import check_value
    from frd_assets.core.lora.search import N_TRIALS, SearchSettings, SearchSpace, run_search, study_name_for
    from frd_assets.core.lora.study_storage import study_storage_url
    from frd_assets.core.lora.trial import TrainingConfig
    from frd_assets.core.models import resolve_model
    from frd_assets.core.output_dirs import OutputDirError, check_output_dir, publish_output_dir, staging_dir
    from frd_assets.core.records import Record, loads_jsonl
    from frd_assets.core.settings import default_trials_dir, lora_settings
    from frd_assets.core.threads import apply_thread_budget, thread_budget

    data, out = Path(args.data), Path(args.out)
    try:
        # First: a refused --out costs nothing, and a folder of the user's is never touched.
        check_output_dir(out, command=TUNE_COMMAND)
        defaults = lora_settings()  # the LORA_* defaults lora_adapter's resource reads too
        base_model = args.base_model or defaults.base_model
        # FRD_TORCH_THREADS, default every core (a command has the machine to itself), split between workers.
        apply_thread_budget(thread_budget())
        content = data.read_bytes()
        rows = loads_jsonl(content, str(data))
        records = [Record.from_dict({"id": f"line-{i}", **row}) for i, row in enumerate(rows, start=1)]
        training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                                  micro_batch_size=args.micro_batch_size, precision=args.precision,
                                  quantization=args.quantization, gradient_checkpointing=args.gradient_checkpointing)
        n_workers = defaults.n_workers if args.workers is None else args.workers
        settings = SearchSettings(pruner=args.pruner, n_workers=n_workers)
        space = SearchSpace()  # no flags for it: the default space, named in the study's hash all the same
        n_trials = check_value("frd tune", "n_trials", defaults.n_trials if args.trials is None else args.trials,
                               N_TRIALS)
        resolve_model(base_model)  # ModelNotFound in seconds, before the study and the data are touched
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return bad_input(exc, TUNE_FLAGS)
    # Named as lora_adapter names its study: a hash of the data and the training config joins the file name,
    # so other data under the same name (or another --epochs) starts a study of its own, and the same
    # command on the same data continues its study.
    study = args.study or study_name_for(data.stem, base_model, inputs={
        "data_sha256": hashlib.sha256(content).hexdigest(), "training": dataclasses.asdict(training),
        "space": dataclasses.asdict(space)})
    # The adapter is built beside --out and renamed into it once the search is done (core/output_dirs.py).
    staging = staging_dir(out)
    try:
        result = run_search(
            records,
            base_model=base_model,
            n_trials=n_trials,
            storage_url=args.storage or study_storage_url(),
            study_name=study,
            work_dir=Path(args.work_dir) if args.work_dir else (defaults.trials_dir or default_trials_dir()) / study,
            out_dir=staging,
            training=training,
            space=space,
            settings=settings,
        )
        publish_output_dir(staging, out, command=TUNE_COMMAND)
    except OutputDirError as exc:  # a file put into --out while the search ran
        return bad_input(exc)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"best hyperparameters: {result.best_params}")
    print(f"eval loss: {result.best_eval_loss:.4f} (base model {result.base_eval_loss:.4f})")
    print(f"adapter: {out}")
    return 0


def cmd_evaluate(args) -> int:
    """Base model versus base + adapter on tasks with reference answers, without Dagster: 0 report, 2 bad input."""
    import json

    from frd_assets.core.evaluation import (
        EvaluationConfig,
        check_task_count,
        evaluate_adapter,
        judge_settings_from_env,
        load_eval_tasks,
        make_judge,
    )
    from frd_assets.core.generation.openai_teacher import TeacherError
    from frd_assets.core.lora.adapter import base_model_for_adapter, check_adapter_dir
    from frd_assets.core.models import resolve_model
    from frd_assets.core.threads import apply_thread_budget, thread_budget

    # With --json, stdout holds the one JSON object; progress goes to stderr.
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    judge_settings = judge_settings_from_env()
    judge_url = args.judge_url or judge_settings["base_url"]
    judge_model = args.judge_model or judge_settings["model"]
    try:
        tasks_path = Path(args.tasks)
        tasks, skipped = load_eval_tasks(tasks_path.read_bytes(), str(tasks_path))
        config = EvaluationConfig(max_new_tokens=args.max_new_tokens, limit=args.limit)
        check_task_count(len(tasks), config, source=str(tasks_path))  # hours of work only when asked for
        check_adapter_dir(args.adapter)
        base_model = args.base_model or base_model_for_adapter(args.adapter, print_fn=log)
        resolve_model(base_model)  # ModelNotFound in seconds, before anything is loaded
        judge = make_judge(base_url=judge_url, model=judge_model, api_key=judge_settings["api_key"])
        # FRD_TORCH_THREADS holds here as in every command that runs a model (all cores when unset).
        apply_thread_budget(thread_budget())
        report = evaluate_adapter(tasks, base_model=base_model, adapter_dir=args.adapter, config=config,
                                  judge=judge, skipped=skipped, print_fn=log)
    # TaskFileError, ConfigError, AdapterError and ModelNotFound are ValueErrors; OSError covers a missing or
    # unreadable file; TeacherError a judge endpoint that refuses or cannot be reached.
    except (OSError, ValueError, TeacherError) as exc:
        return bad_input(exc, EVALUATE_FLAGS)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=False))
        return 0
    print("\n".join(report.summary_lines()))  # names the judge, or says only reference metrics were computed
    for row in report.answers[:2]:
        print(f"\n[{row['id']}] {row['instruction']}" + (f"\n  input: {row['input']}" if row["input"] else ""))
        print(f"  reference: {row['reference']}")
        print(f"  base:      {row['base']}")
        print(f"  adapter:   {row['adapter']}" + (f"\n  verdict:   {row['verdict']}" if row["verdict"] else ""))
    return 0


def cmd_export(args) -> int:
    """A merged model from an adapter, without Dagster: 0 written and checked, 1 check failed, 2 bad input."""
    from frd_assets.core.lora.export import MergeMismatch, export_merged
    from frd_assets.core.threads import apply_thread_budget, thread_budget

    apply_thread_budget(thread_budget())
    try:
        result = export_merged(args.adapter, Path(args.out), base_model=args.base_model, n_prompts=args.prompts,
                               max_new_tokens=args.max_new_tokens)
    # AdapterError, ModelNotFound and ConfigError (--prompts) are ValueErrors; OSError a folder that cannot
    # be read or written.
    except (OSError, ValueError) as exc:
        return bad_input(exc, EXPORT_FLAGS)
    except MergeMismatch as exc:  # the merged model was not published: --out is as it was
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    print(result.check.summary())
    print(f"merged model: {result.out_dir}")
    return 0


def cmd_dashboard(args) -> int:
    """optuna-dashboard on the study storage lora_adapter and `frd tune` use, without Dagster; Ctrl-C stops it."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    import optuna_dashboard
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    from frd_assets.core.lora.study_storage import engine_kwargs, hide_password, redacted, study_storage_url

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        # The page fetches several API routes at once; Ctrl-C must not wait for them. Daemon threads alone
        # are not enough: server_close() joins every request thread unless block_on_close is off.
        daemon_threads = True
        block_on_close = False

    url = args.storage or study_storage_url()
    try:
        # RDBStorage, not optuna-dashboard's own guess from the URL: that one skips creating the tables, so a
        # storage no search has written to yet fails on every page instead of showing no studies.
        storage = RDBStorage(url, engine_kwargs=engine_kwargs(url))
        server = make_server(args.host, args.port, optuna_dashboard.wsgi(storage), server_class=ThreadingServer)
    # SQLAlchemyError: a URL that does not parse or a database that refuses; ImportError a missing driver;
    # RuntimeError a schema of another Optuna version; OSError a port in use. The message may quote the URL.
    except (SQLAlchemyError, ImportError, RuntimeError, ValueError, OSError) as exc:
        return bad_input(ValueError(f"optuna-dashboard on {redacted(url)}: {hide_password(str(exc), url)}"))
    print(f"optuna-dashboard on http://{args.host}:{server.server_port}/ for the studies in {redacted(url)}; "
          "Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
