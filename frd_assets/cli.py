"""`frd`: prepare the default model, upload seeds, and run the whole chain once (`frd demo`)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import sys
import time
import uuid as uuid_lib
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Mapping

from frd_assets.core import names

EXIT_BAD_INPUT = 2
EXIT_DELETED = 3
# The owner an output folder's marker names, so a re-run may replace its own output (core/output_dirs.py).
TUNE_COMMAND = "frd tune"
# Config field -> the flag (or setting) that sets it, for the refusals of core's config checks.
GENERATE_FLAGS = {"num_instructions": "--num", "prompts_per_round": "--prompts-per-round",
                  "max_rounds": "--max-rounds", "checkpoint_every": "--checkpoint-every",
                  "temperature": "--temperature", "seed": "--seed-value"}
TUNE_FLAGS = {"n_trials": "--trials or LORA_N_TRIALS", "epochs": "--epochs", "batch_size": "--batch-size",
              "max_length": "--max-length", "n_workers": "--workers or LORA_N_WORKERS"}
EVALUATE_FLAGS = {"max_new_tokens": "--max-new-tokens", "limit": "--limit"}
EXPORT_FLAGS = {"prompts": "--prompts", "max_new_tokens": "--max-new-tokens"}


def _store():
    from frd_assets.core.store import open_store

    return open_store()


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME, else ./.dagster_home with the repository's dagster.yaml: a persistent instance."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = Path.cwd() / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and config.exists() and config.resolve() != (home / "dagster.yaml"):
        shutil.copy(config, home / "dagster.yaml")
    return home


def cmd_models_prepare(args) -> int:
    from frd_assets.core.models import prepare_default_model

    prepare_default_model()
    return 0


def upload_seed(path: Path, dataset_id: str | None, eval_path: Path | None = None) -> str:
    """Checks the seed (and evaluation set) parse, then writes them, the evaluation set first so the run the
    seed upload starts sees it; the seed is the dataset's one seed object. Returns the dataset id."""
    from frd_assets.core.datasets import SEED_SUFFIXES, check_dataset_id
    from frd_assets.core.evaluation import load_eval_tasks
    from frd_assets.core.records import check_seed_size, parse_seed
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
    store = _store()
    if eval_data is not None:
        write_eval_set(store, dataset_id, eval_data)
    # Replaces the other suffix's object too: one dataset id has one seed.
    write_seed(store, dataset_id, data, suffix)
    return dataset_id


def bad_input(exc: BaseException, flags: Mapping[str, str] | None = None) -> int:
    """Prints exc as one line on stderr (a message that spans lines is joined) and returns EXIT_BAD_INPUT.

    flags maps a config field to the flag that sets it (num_instructions -> --num): a ConfigError names the
    field, and the user needs the flag to fix it."""
    from frd_assets.core.config_checks import ConfigError

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if isinstance(exc, ConfigError) and flags and exc.field in flags:
        text += f" (set by {flags[exc.field]})"
    print(f"error: {text}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _integer(text: str) -> int:
    """An integer flag's value. 1e9 is read as the integer it writes, so that the field's bound refuses it
    by name with the allowed range (core/config_checks.py) rather than argparse as 'invalid int value'."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value.adjusted() > 18:  # 1e999999999 as an int would take the memory the bound is there to save
        raise argparse.ArgumentTypeError(f"{text!r} is far above any bound")
    return int(value)


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line, as every other refusal of `frd` (usage is in --help)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def cmd_seed_upload(args) -> int:
    from frd_assets.core.store import StoreError

    try:
        print(upload_seed(Path(args.file), args.uuid, Path(args.eval) if args.eval else None))
    # SeedFormatError and InvalidDatasetId are ValueErrors; OSError covers a missing or unreadable file;
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
        config = GenerationConfig(
            num_instructions=args.num,
            prompts_per_round=args.prompts_per_round,
            max_rounds=args.max_rounds,
            checkpoint_every=args.checkpoint_every,
            temperature=args.temperature,
            seed=args.seed_value,
            language=args.language,
        )
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


def format_report(report, source: str) -> str:
    invalid = report.records - report.valid_records
    lines = [
        f"{source}: {report.verdict}",
        f"records: {report.records}, kept: {report.valid_records}, dropped: {invalid}",
    ]
    for reason, count in sorted(report.invalid_records.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason}: {count}")
    lang = report.language
    lines.append(f"language: {lang['language_note']}; {lang['off_language']} of {lang['checked']} records off it"
                 if lang else "language: not determined (give --seed, or --config '{\"language\": \"ru\"}')")
    lines.append("gates:")
    for g in report.gates:
        lines.append(f"  {'pass' if g.passed else 'FAIL'}  {g.name} = {g.value:.4g} (threshold {g.threshold:g})")
    decon = report.decontamination
    if decon.get("eval_tasks"):
        lines.append(f"decontamination: {len(decon['contaminated'])} records share a word {decon['ngram']}-gram "
                     f"with the {decon['eval_tasks']} evaluation tasks")
        lines += [f"  {_short(c['instruction'], 60)!r} ~ task {c['task_id']}: {_short(c['task_instruction'], 60)!r}"
                  for c in decon["contaminated"][:10]]
    else:
        lines.append(f"decontamination: {decon.get('note', 'not run')} (give --decontaminate FILE)")
    if report.judge is None:
        lines.append(f"judge: {report.judge_note} (give --judge-model, or JUDGE_MODEL)")
    else:
        j = report.judge
        dist = ", ".join(f"{k}: {v}" for k, v in j["distribution"].items())
        lines.append(f"judge: {j['model']}, {j['records_scored']} of {j['records_judged']} scored ({dist})")
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
        training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length)
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


def cmd_launch(args) -> int:
    from frd_assets.client import FrdClient, FrdClientError
    from frd_assets.core.datasets import InvalidDatasetId, check_dataset_id

    try:
        check_dataset_id(args.uuid)
    except InvalidDatasetId as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    assets = [a.strip() for a in args.assets.split(",")] if args.assets else None
    try:
        print(FrdClient(args.host, args.port).launch(args.uuid, assets=assets, base_model=args.base_model))
    except FrdClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def held_out_summary(meta: dict) -> str:
    """One line of an adapter_evaluation's figures, for `frd status` and `frd demo`."""
    line = (f"held-out ROUGE-L base {meta['rouge_l_base']:.3f} adapter {meta['rouge_l_adapter']:.3f} "
            f"(diff {meta['rouge_l_diff']:+.3f}, 95% CI {_interval(meta.get('rouge_l_diff_ci'))}, n={meta['n']})")
    if "win_rate" in meta:
        line += (f"; judge win rate {meta['win_rate']:.2f} (95% Wilson {_interval(meta.get('win_rate_ci'))}, "
                 f"position consistency {meta['position_consistency']:.2f})")
    else:
        line += "; no judge configured: reference metrics only"
    return line


def _interval(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-"


def cmd_status(args) -> int:
    import datetime

    from frd_assets.client import FrdClient, FrdClientError

    try:
        statuses = FrdClient(args.host, args.port).status(args.uuid)
    except FrdClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    current, store_problem = _current_versions(args.uuid)
    print(f"dataset {args.uuid}")
    for s in statuses:
        when = (
            datetime.datetime.fromtimestamp(s.materialized_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if s.materialized_at
            else "never"
        )
        extra = ""
        if s.asset == names.VALIDATED_DATASET and "verdict" in s.metadata:
            extra = f"  verdict {s.metadata['verdict']}"
        if s.asset == names.LORA_ADAPTER and "best_eval_loss" in s.metadata:
            extra = f"  eval loss {s.metadata['best_eval_loss']:.4f}"
        if s.asset == names.ADAPTER_EVALUATION and "rouge_l_adapter" in s.metadata:
            extra = f"  {held_out_summary(s.metadata)}"
        if s.asset in current:
            extra += f"  current {current[s.asset]}"
        print(f"  {s.asset:<18} materialized {when:<19}  last run {s.run_status or '-':<9} {s.run_id or ''}{extra}")
    if store_problem:
        print(f"  (current versions not shown: {store_problem})")
    return 0


def _current_versions(dataset_id: str) -> tuple[dict[str, str], str | None]:
    """asset -> the folder its pointer names now and the input versions it was computed from
    ('<folder>  <- seed_dataset <version>'), read from the store as the IO manager reads it: Dagster's
    metadata names the version a run wrote, which a later run (the evaluation's model card, say) may have
    replaced. The store's problem, if it cannot be read from here, instead of an error: the GraphQL part
    of the status stands on its own."""
    from frd_assets.core import versions
    from frd_assets.core.datasets import asset_location
    from frd_assets.core.provenance import describe
    from frd_assets.core.store import ObjectNotFound, StoreError

    out: dict[str, str] = {}
    try:
        store = _store()
        for asset in names.ASSETS:
            bucket, prefix = asset_location(asset, dataset_id)
            try:
                version = versions.current(store, bucket, prefix)
            except ObjectNotFound:
                continue
            out[asset] = f"{store.uri(version.bucket, version.folder)}  {describe(version.meta)}"
    except (StoreError, ValueError) as exc:
        return out, str(exc).splitlines()[0]
    return out, None


def _step_seconds(instance, run_id: str) -> dict[str, float]:
    from dagster import DagsterEventType

    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type == DagsterEventType.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type in (
            DagsterEventType.STEP_SUCCESS,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.STEP_SKIPPED,
        ):
            ends[ev.step_key] = entry.timestamp
    return {k: ends[k] - starts[k] for k in starts if k in ends}


def _check_demo_flags(args) -> int | None:
    """The demo's two numbers against the bounds its run config is checked with, before Dagster is imported
    or a model prepared: EXIT_BAD_INPUT with one line, or None."""
    from frd_assets.core.config_checks import check_value
    from frd_assets.core.generation.self_instruct import GenerationConfig
    from frd_assets.core.lora.search import N_TRIALS

    try:
        GenerationConfig(num_instructions=args.instructions)  # what generated_dataset's run config builds
        check_value("frd demo", "n_trials", args.trials, N_TRIALS)
    except ValueError as exc:
        return bad_input(exc, {"num_instructions": "--instructions", "n_trials": "--trials or LORA_N_TRIALS"})
    return None


def cmd_demo(args) -> int:
    refused = _check_demo_flags(args)
    if refused is not None:
        return refused
    import json

    from dagster import AssetKey, DagsterInstance, materialize

    from frd_assets.core import versions
    from frd_assets.core.datasets import asset_location
    from frd_assets.core.models import prepare_default_model
    from frd_assets.core.seeds import sample_seed
    from frd_assets.core.threads import THREADS_ENV, available_cores
    from frd_assets.core.validation import READY
    from frd_assets.definitions import ASSETS, build_resources
    from frd_assets.defs.partitions import dataset_partitions

    home = ensure_dagster_home()
    # The demo is the only run on this machine: its steps may use every core (a run of the embedded instance
    # otherwise takes its share, since another queue's run may be beside it; core/threads.py).
    os.environ.setdefault(THREADS_ENV, str(available_cores()))
    prepare_default_model()
    with resources.as_file(sample_seed()) as path:
        dataset_id = upload_seed(Path(path), args.uuid)
    print(f"dataset {dataset_id}: sample seed uploaded; Dagster instance in {home}")
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    run_config = {
        # Progress lines (generation rounds, trials) without Dagster's per-event debug chatter.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        "ops": {
            names.GENERATED_DATASET: {"config": {"num_instructions": args.instructions}},
            names.LORA_ADAPTER: {"config": {"n_trials": args.trials}},
        },
    }
    t0 = time.perf_counter()
    result = materialize(
        ASSETS,
        partition_key=dataset_id,
        instance=instance,
        resources=build_resources(),
        run_config=run_config,
        raise_on_error=False,
    )
    total = time.perf_counter() - t0
    for step, secs in _step_seconds(instance, result.run_id).items():
        print(f"  {step}: {secs:.1f} s")
    print(f"  total: {total:.1f} s (run {result.run_id})")

    def meta(asset: str) -> dict:
        event = instance.get_latest_materialization_event(AssetKey(asset))
        mat = event.asset_materialization if event else None
        return {k: v.value for k, v in mat.metadata.items()} if mat and mat.partition == dataset_id else {}

    validated = meta(names.VALIDATED_DATASET)
    verdict = validated.get("verdict")
    print(f"verdict: {verdict}" + (f" (failed gates: {validated.get('failed_gates')})" if verdict != READY else ""))
    if verdict != READY:
        print("adapter: none")
        return EXIT_DELETED
    adapter = meta(names.LORA_ADAPTER)
    if not result.success or not adapter:
        print("error: the run failed; open the run in the Dagster UI (`make dev`) to see why", file=sys.stderr)
        return 1
    print(f"best hyperparameters: {adapter['best_params']}")
    print(f"eval loss: {adapter['best_eval_loss']:.4f} (base model {adapter['base_eval_loss']:.4f})")
    store = _store()
    evaluation = meta(names.ADAPTER_EVALUATION)
    if evaluation:
        print(held_out_summary(evaluation))
        report = json.loads(versions.read(store, versions.current(store, *asset_location(names.ADAPTER_EVALUATION,
                                                                                           dataset_id)), "report.json"))
        for i, sample in enumerate(report["samples"][:2], start=1):
            print(f"  sample {i}: {_short(sample['instruction'])}")
            for who in ("reference", "base", "adapter"):
                print(f"    {who:<9} {_short(sample[who])}")
    # The current version: adapter_evaluation republishes the adapter with the evaluation in its card.
    current = versions.current(store, *asset_location(names.LORA_ADAPTER, dataset_id))
    print(f"adapter: {store.uri(current.bucket, current.folder)}")
    return 0


def _short(text: str, width: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def build_parser() -> argparse.ArgumentParser:
    from frd_assets.core.settings import DEFAULT_N_TRIALS, lora_settings, service_settings

    # Defaults shown in --help come from the environment (core/settings.py), like the platform's own.
    service, lora = service_settings(), lora_settings()
    parser = _Parser(prog="frd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model preparation").add_subparsers(dest="models_command", required=True)
    models.add_parser("prepare", help="convert the packaged SmolLM2-135M-Instruct once into the model cache")
    models.choices["prepare"].set_defaults(func=cmd_models_prepare)

    seed = sub.add_parser("seed", help="seed uploads").add_subparsers(dest="seed_command", required=True)
    up = seed.add_parser("upload", help="check a seed file and upload it to the seeds bucket; prints its UUID")
    up.add_argument("file")
    up.add_argument("--uuid", help="dataset UUID (default: a new one)")
    up.add_argument("--eval", metavar="EVAL_FILE",
                    help="tasks with reference outputs to evaluate the adapter on, instead of holding out "
                    "a share of the seed (stored beside the seed as <uuid>.eval.jsonl)")
    up.set_defaults(func=cmd_seed_upload)

    gen = sub.add_parser("generate", help="Self-Instruct generation from a seed file to a JSONL file, resumable")
    gen.add_argument("seed", help="seed file (Self-Instruct, Alpaca or chat; JSONL or JSON array)")
    gen.add_argument("--out", required=True, help="output JSONL file")
    gen.add_argument("--num", type=_integer, default=20, help="instructions to keep (default 20)")
    gen.add_argument("--prompts-per-round", type=_integer, default=8)
    gen.add_argument("--max-rounds", type=_integer, default=10)
    gen.add_argument("--checkpoint-every", type=_integer, default=5)
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--seed-value", type=_integer, default=0, help="random seed")
    gen.add_argument("--language", default="",
                     help="ISO 639-1 code the teacher writes in, e.g. ru (default: the seed's majority language)")
    gen.add_argument("--teacher-model", help="model name or folder (default TEACHER_MODEL or the default model)")
    gen.add_argument("--teacher-url", help="OpenAI-compatible base URL; selects the HTTP teacher")
    gen.add_argument("--checkpoint", help="checkpoint file (default OUT.checkpoint.json)")
    gen.set_defaults(func=cmd_generate)

    val = sub.add_parser(
        "validate", help="run the validation gate on a JSONL file (exit 0 ready, 3 deleted, 2 bad input)"
    )
    val.add_argument("data", help="generated records, JSONL")
    val.add_argument("--seed", help="the seed file, for the novelty gates")
    val.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    val.add_argument("--config", help="JSON object of thresholds, e.g. '{\"max_self_bleu\": 50}'")
    val.add_argument("--decontaminate", action="append", metavar="FILE",
                     help="evaluation tasks (any seed format); records sharing a word n-gram with one are dropped "
                     "(repeatable)")
    val.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge (default JUDGE_BASE_URL)")
    val.add_argument("--judge-model", help="judge model: served at --judge-url, else local (default JUDGE_MODEL)")
    val.set_defaults(func=cmd_validate)

    tune = sub.add_parser("tune", help="Optuna LoRA search on a JSONL file; re-run the same command to continue it")
    tune.add_argument("data", help="records with instruction, input, output (JSONL)")
    tune.add_argument("--base-model", help="model name or folder (default LORA_MODEL_NAME or the default model)")
    tune.add_argument("--trials", type=_integer, help="finished trials the study should hold (default LORA_N_TRIALS)")
    tune.add_argument("--storage", help="Optuna storage URL (default OPTUNA_STORAGE or an SQLite file in .cache)")
    tune.add_argument("--study", help="study name (default from the data file's name and a hash of its content, the "
                      "base model and the training flags: other data starts a new study, the same data resumes)")
    tune.add_argument("--out", required=True, help="folder for the best adapter")
    tune.add_argument("--work-dir", help="folder for every trial's adapter (default in the cache)")
    tune.add_argument("--epochs", type=_integer, default=2)
    tune.add_argument("--batch-size", type=_integer, default=4)
    tune.add_argument("--max-length", type=_integer, default=256)
    tune.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    tune.add_argument("--workers", type=_integer,
                      help="trial processes at once, each trial in a fresh one (default LORA_N_WORKERS or 1). With "
                      "GPUs worker i uses GPU i mod count; on CPU they split FRD_TORCH_THREADS (default all cores)")
    tune.set_defaults(func=cmd_tune)

    ev = sub.add_parser(
        "evaluate", help="base model versus base + adapter on tasks with reference answers (ROUGE-L, optional judge)"
    )
    ev.add_argument("adapter", help="adapter folder (adapter_config.json and adapter_model.safetensors)")
    ev.add_argument("--tasks", required=True, help="tasks with reference outputs: any seed format, JSONL or JSON array")
    ev.add_argument("--base-model", help="model name or folder (default: the adapter's, else LORA_MODEL_NAME)")
    ev.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge (default JUDGE_BASE_URL)")
    ev.add_argument("--judge-model", help="judge model: served at --judge-url, else local (default JUDGE_MODEL)")
    ev.add_argument("--limit", type=_integer, help="evaluate only the first N tasks")
    ev.add_argument("--max-new-tokens", type=_integer, default=128, help="per answer (default 128)")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    ev.set_defaults(func=cmd_evaluate)

    exp = sub.add_parser(
        "export", help="merge an adapter into its base model and save it, checked against the adapter's greedy outputs"
    )
    exp.add_argument("adapter", help="adapter folder (adapter_config.json and adapter_model.safetensors)")
    exp.add_argument("--merge", action="store_true", required=True,
                     help="merge the LoRA weights into the base model's (the one export there is)")
    exp.add_argument("--out", required=True, help="new folder for the merged model and its tokenizer")
    exp.add_argument("--base-model", help="model name or folder (default: the adapter's, else LORA_MODEL_NAME)")
    exp.add_argument("--prompts", type=_integer, default=20,
                     help="sample-seed instructions whose greedy outputs must match the adapter's (default 20)")
    exp.add_argument("--max-new-tokens", type=_integer, default=32, help="per output compared (default 32)")
    exp.set_defaults(func=cmd_export)

    dash = sub.add_parser("dashboard", help="optuna-dashboard on the study storage of lora_adapter and `frd tune`")
    dash.add_argument("--storage", help="Optuna storage URL (default OPTUNA_STORAGE or the SQLite file in .cache)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: the dashboard has no login and can delete "
                      "studies, so listen elsewhere only behind an authenticating proxy)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    dash.set_defaults(func=cmd_dashboard)

    for name, helptext in (
        ("launch", "launch a materialization over the webserver's GraphQL API; prints the run id"),
        ("status", "per asset: latest materialization, run status, verdict (GraphQL)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("uuid", help="dataset UUID")
        p.add_argument("--host", default=service.webserver_host, help="default DAGSTER_WEBSERVER_HOST or 127.0.0.1")
        p.add_argument("--port", type=int, default=service.webserver_port,
                       help="default DAGSTER_WEBSERVER_PORT or 3000")
        if name == "launch":
            p.add_argument("--assets", help="comma-separated assets (default: all four)")
            p.add_argument("--base-model", help="base model of lora_adapter for this run")
        p.set_defaults(func=cmd_launch if name == "launch" else cmd_status)

    demo = sub.add_parser("demo", help="upload the sample seed and materialize the whole chain for it")
    demo.add_argument("--uuid", help="dataset UUID (default: a new one)")
    demo.add_argument("--instructions", type=_integer, default=24, help="instructions to generate (default 24)")
    demo.add_argument(
        "--trials",
        type=_integer,
        default=lora.n_trials,
        help=f"Optuna trials (default LORA_N_TRIALS or {DEFAULT_N_TRIALS})",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as exc:  # a malformed setting, e.g. LORA_N_TRIALS=four: name it, no traceback
        return bad_input(exc)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
