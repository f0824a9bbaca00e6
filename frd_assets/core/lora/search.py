"""Optuna TPE search over LoRA rank, lora_alpha and learning rate, each trial in its own worker process
(worker.py), n_workers at once (pool.py) on one study in RDB storage; the best adapter goes to a folder.

The search's types (SearchSpace, SearchSettings, N_TRIALS) live in job.py and are importable from here too."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from frd_assets.core.config_checks import check_value
from frd_assets.core.held_out import is_validation
from frd_assets.core.lora.card import model_card
from frd_assets.core.lora.data import Example, split_records, tokenize_record
from frd_assets.core.lora.job import N_TRIALS, SearchJob, SearchSettings, SearchSpace, TrialWorkers
from frd_assets.core.lora.pool import run_pool
from frd_assets.core.lora.real_tasks import (
    REAL_TASKS,
    TEACHER_TEXT,
    RealTaskConfig,
    resolve_objective,
    seed_training_records,
)
from frd_assets.core.lora.study_storage import hide_password, redacted
from frd_assets.core.lora.trial import TrainingConfig, evaluate_loss
from frd_assets.core.names import CARD_FILE
from frd_assets.core.records import Record

__all__ = [
    "N_TRIALS", "SearchResult", "SearchSettings", "SearchSpace", "StudyStorageError", "history_markdown",
    "run_search", "study_name_for", "trial_table",
]

@dataclass
class SearchResult:
    study_name: str
    base_model: str
    best_params: dict
    best_eval_loss: float
    base_eval_loss: float
    trials: list[dict]
    adapter_dir: Path
    train_records: int
    eval_records: int
    # What the search minimised (core/lora/real_tasks.py) and the base model against the best adapter on it.
    objective: str = TEACHER_TEXT
    objective_note: str = ""
    seed_task_records: int = 0  # of train_records: the user's seed tasks (each copy counted)
    validation_records: int = 0
    best_validation_loss: float | None = None
    base_validation_loss: float | None = None

    @property
    def best_value(self) -> float:
        return self.best_validation_loss if self.objective == REAL_TASKS else self.best_eval_loss

    @property
    def base_value(self) -> float:
        return self.base_validation_loss if self.objective == REAL_TASKS else self.base_eval_loss

    @property
    def beats_base(self) -> bool:
        return self.best_value < self.base_value

    def verdict(self) -> str:
        """One line: does the best adapter beat its base model on what the search minimised?"""
        figure = "validation-task loss" if self.objective == REAL_TASKS else "teacher-text eval loss"
        if self.beats_base:
            return f"best adapter beats the base model on {figure}: {self.best_value:.4f} vs {self.base_value:.4f}"
        return (f"no trial beat the base model on {figure} (base {self.base_value:.4f}, best adapter "
                f"{self.best_value:.4f}): the adapter is stored but marked not better")


def study_name_for(dataset_id: str, base_model: str, *, inputs: Mapping[str, Any] | None = None) -> str:
    """The study of a dataset and base model; with `inputs` (what makes two trials comparable: the data
    version, the training config, the search space), a short hash of them too. A retry or a re-launch with
    the same inputs continues its study; new data or a changed config starts a fresh one, instead of
    returning the best adapter of trials that were trained on other data."""
    name = f"frd-{dataset_id}-{re.sub(r'[^A-Za-z0-9._-]+', '_', base_model.rstrip('/').split('/')[-1])}"
    if inputs:
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        name = f"{name}-{digest[:12]}"
    return name


class StudyStorageError(RuntimeError):
    """The study's database failed during a search (dropped, unreachable, out of space): one line naming
    the storage, without its password, and the study."""


def run_search(records: Sequence[Record], *, storage_url: str, study_name: str, **kwargs) -> SearchResult:
    """Runs (or continues) the study until it holds n_trials finished trials: see _search for the arguments.

    A study database lost mid-search surfaces from Optuna, SQLAlchemy and every trial worker as a stack
    of tracebacks whose last line says nothing of which database or study; this turns it into one line
    that does (StudyStorageError)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _search(records, storage_url=storage_url, study_name=study_name, **kwargs)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        root = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        lines = [line.strip() for line in str(root).splitlines() if line.strip()]
        reason = hide_password(lines[0] if lines else type(root).__name__, storage_url)
        raise StudyStorageError(
            f"study {study_name}: its storage {redacted(storage_url)} failed mid-search ({reason}); check that the "
            "database exists and is reachable, then launch again: the study resumes from the trials it stored"
        ) from None


def _search(
    records: Sequence[Record],
    *,
    base_model: str,
    n_trials: int,
    storage_url: str,
    study_name: str,
    work_dir: Path,
    out_dir: Path,
    training: TrainingConfig | None = None,
    space: SearchSpace | None = None,
    settings: SearchSettings | None = None,
    workers: TrialWorkers | None = None,
    print_fn: Callable[[str], None] = print,
    seed_records: Sequence[Record] = (),
    real_tasks: RealTaskConfig | None = None,
) -> SearchResult:
    """Runs (or continues) the study until it holds n_trials finished trials; writes the best adapter to out_dir.

    seed_records: seed_dataset's rows; its trainable tasks join the training data and its validation tasks
    are the objective, as real_tasks says (core/lora/real_tasks.py). Without them: records only, as before.

    Every trial runs in its own process (see worker.py): settings.n_workers at once, started as local
    processes (pool.py), or by `workers` (KubernetesWorkers: pods). This process only prepares the data, measures the
    base model once per study, and copies the best trial's adapter when the study is done.
    """
    import optuna

    from frd_assets.core.models import load_tokenizer

    training = training or TrainingConfig()
    space = space or SearchSpace()
    settings = settings or SearchSettings(seed=training.seed)
    check_value("LoRA search", "n_trials", n_trials, N_TRIALS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are marked experimental in Optuna 5 but are the documented way to recover dead trials.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    tokenizer = load_tokenizer(base_model)
    train_records, eval_records = split_records(records, eval_fraction=training.eval_fraction, seed=training.seed)
    # Seed tasks train only: the eval split stays teacher text, the second column of the trial table.
    real_tasks = real_tasks or RealTaskConfig()
    seed_train = seed_training_records(seed_records, real_tasks)
    validation_records = [r for r in seed_records if is_validation(r)]
    objective, objective_note = resolve_objective(real_tasks, len(validation_records))
    print_fn(f"{objective_note}; {len(seed_train)} seed-task records join {len(train_records)} generated ones "
             "in training")
    train = [tokenize_record(tokenizer, r, max_length=training.max_length) for r in train_records + seed_train]
    evals = [tokenize_record(tokenizer, r, max_length=training.max_length) for r in eval_records]
    validation = ([tokenize_record(tokenizer, r, max_length=training.max_length) for r in validation_records]
                  if objective == REAL_TASKS else [])
    pad_id = tokenizer.pad_token_id
    training = _memory_preflight(base_model, training, space, settings, train + evals + validation,
                                 local=workers is None, print_fn=print_fn)
    eval_batch = training.forward_batch_size  # what the pre-flight found to fit

    # No sampler or pruner here: they are not stored with the study, and only the trial workers ask it for
    # trials (worker.py loads it with both).
    study = optuna.create_study(
        study_name=study_name,
        storage=settings.storage(storage_url),
        direction="minimize",
        load_if_exists=True,
    )
    study.set_user_attr("base_model", base_model)
    base_eval_loss = _base_eval_loss(study, base_model, evals, batch_size=eval_batch, pad_id=pad_id,
                                     training=training)
    print_fn(f"base model eval loss {base_eval_loss:.4f} on {len(evals)} held-out records")
    base_validation_loss = None
    if validation:  # the base model is a candidate: measured once, kept in the study like the eval loss
        base_validation_loss = _base_eval_loss(study, base_model, validation, batch_size=eval_batch,
                                               pad_id=pad_id, attr="base_validation_loss", training=training)
        print_fn(f"base model validation loss {base_validation_loss:.4f} on {len(validation)} validation records")

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < n_trials:
        work_dir.mkdir(parents=True, exist_ok=True)
        job = SearchJob(
            study_name=study_name, base_model=base_model, n_trials=n_trials, work_dir=str(work_dir.resolve()),
            pad_id=pad_id, training=training, space=space, settings=settings, train=tuple(train), evals=tuple(evals),
            validation=tuple(validation),
        )
        spec = work_dir / "search.json"
        job.write(spec)
        if workers is None:
            run_pool(spec, job, storage_url=storage_url, n_workers=settings.n_workers, print_fn=print_fn)
        else:
            workers.run_trials(spec, job, storage_url=storage_url, print_fn=print_fn)
    else:
        print_fn(f"study {study_name} already holds {done} finished trials")

    try:
        best = study.best_trial
    except ValueError:  # no COMPLETE trial: every one failed or was pruned
        raise RuntimeError(
            f"study {study_name} has no completed trial; see the trial workers' log lines above for why"
        ) from None
    best_dir = Path(best.user_attrs.get("adapter_dir", ""))
    if not (best_dir / "adapter_config.json").exists():
        raise RuntimeError(
            f"best trial {best.number} of study {study_name} has no saved adapter at {best_dir}; "
            "it ran on another machine or its work folder was removed"
        )
    trials = trial_table(study)
    result = SearchResult(
        study_name=study_name,
        base_model=base_model,
        best_params=dict(best.params),
        best_eval_loss=float(best.user_attrs.get("eval_loss", best.value)),
        base_eval_loss=base_eval_loss,
        trials=trials,
        adapter_dir=out_dir,
        train_records=len(train),
        eval_records=len(evals),
        objective=objective,
        objective_note=objective_note,
        seed_task_records=len(seed_train),
        validation_records=len(validation),
        best_validation_loss=float(best.value) if objective == REAL_TASKS else best.user_attrs.get("validation_loss"),
        base_validation_loss=base_validation_loss,
    )
    _write_adapter(best_dir, out_dir, result)
    return result


def _memory_preflight(base_model: str, training: TrainingConfig, space: SearchSpace, settings: SearchSettings,
                      examples: Sequence[Example], *, local: bool, print_fn: Callable[[str], None]) -> TrainingConfig:
    """The training config whose trials fit in memory at the search space's largest rank (core/lora/memory.py):
    as given, or with a smaller micro-batch; MemoryPlanError (one line) when nothing does. The limit is
    FRD_TRIAL_MEMORY_GIB where set, else this machine's: a GPU's free memory, or the RAM available shared
    by the CPU workers. Trials elsewhere (Kubernetes pods) without a stated limit: the estimate is printed."""
    from frd_assets.core.lora.memory import GIB, available_memory, estimate_for_config, model_shape_of, plan_memory
    from frd_assets.core.models import pick_device
    from frd_assets.core.settings import trial_memory_gib

    device = pick_device()
    shape = model_shape_of(base_model)
    seq_len = min(training.max_length, max((len(e.input_ids) for e in examples), default=training.max_length))
    stated = trial_memory_gib()
    if stated is None and not local:
        estimate = estimate_for_config(shape, training, rank=space.rank_max, device_type=device, seq_len=seq_len)
        print_fn(f"memory pre-flight: estimated peak of a trial {estimate.describe()}; set FRD_TRIAL_MEMORY_GIB "
                 "to the trial workers' memory to have it checked")
        return training
    if stated is not None:
        available = int(stated * GIB)
    else:
        available = available_memory(device) // (settings.n_workers if device == "cpu" else 1)
    plan = plan_memory(shape, training, rank=space.rank_max, device=device, available=available, seq_len=seq_len,
                       print_fn=lambda _: None)
    print_fn(plan.note)
    return plan.config


def _base_eval_loss(study, base_model: str, evals: Sequence[Example], *, batch_size: int, pad_id: int,
                    attr: str = "base_eval_loss", training: TrainingConfig | None = None) -> float:
    """The base model's eval loss, kept in the study: a resumed search need not load the model here at all,
    and the trial workers never share a device with a model this process still holds. Loaded as the trials
    load it (precision, quantization): the adapters are measured on that base, and an 8B model in fp32
    would not fit the GPU its bf16 trials fit."""
    import gc

    import torch

    from frd_assets.core.lora.precision import load_training_model
    from frd_assets.core.models import pick_device

    # Keyed by model and eval tokens: a study continued on other data or another split measures again.
    key = hashlib.sha256(json.dumps([base_model, [e.input_ids for e in evals]]).encode()).hexdigest()[:16]
    attrs, key_attr = study.user_attrs, attr.replace("_loss", "_key")  # base_eval_key as studies stored it
    if attrs.get(key_attr) == key and attrs.get(attr) is not None:
        return float(attrs[attr])
    training = training or TrainingConfig()
    model = load_training_model(base_model, precision=training.precision, quantization=training.quantization,
                                device=pick_device())
    loss = evaluate_loss(model, evals, batch_size=batch_size, pad_id=pad_id)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    study.set_user_attr(attr, loss)
    study.set_user_attr(key_attr, key)
    return loss


def trial_table(study) -> list[dict]:
    """Every trial in order with the best complete value so far: the optimization history. "value" is what
    the search minimised (the validation-task loss, or the eval loss under objective teacher_text);
    "eval_loss" is always the loss on the generated records' eval split, the second column."""
    import optuna

    rows, best = [], None
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE and (best is None or t.value < best):
            best = t.value
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value,
                "eval_loss": t.user_attrs.get("eval_loss"),
                "validation_loss": t.user_attrs.get("validation_loss"),
                "stopped_early": t.user_attrs.get("stopped_early"),
                "best_so_far": best,
                "steps": t.user_attrs.get("steps"),
                "seconds": t.user_attrs.get("seconds"),
                "tokens_per_second": t.user_attrs.get("tokens_per_second"),
                # The setting ("all-linear", names, or None for peft's default) and the module kinds peft put
                # LoRA on.
                "target_modules": t.user_attrs.get("target_modules"),
                "adapted_modules": t.user_attrs.get("adapted_modules"),
                # How it trained, and the memory pre-flight's estimate of its peak against the peak measured
                # (MiB: the GPU's max_memory_allocated, or the trial process's peak RSS on a CPU).
                "weights": t.user_attrs.get("weights"),
                "gradient_checkpointing": t.user_attrs.get("gradient_checkpointing"),
                "micro_batch_size": t.user_attrs.get("micro_batch_size"),
                "memory_estimate_mb": t.user_attrs.get("memory_estimate_mb"),
                "peak_memory_mb": t.user_attrs.get("peak_memory_mb"),
            }
        )
    return rows


def history_markdown(trials: list[dict]) -> str:
    lines = [
        "| trial | state | rank | lora_alpha | learning_rate | validation loss | eval loss | best so far | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    for t in trials:
        p = t["params"]
        lines.append(
            f"| {t['number']} | {t['state']} | {p.get('rank', '-')} | {p.get('lora_alpha', '-')} | "
            f"{fmt(p.get('learning_rate'), '.2e')} | {fmt(t.get('validation_loss'), '.4f')}"
            f"{' (stopped early)' if t.get('stopped_early') else ''} | {fmt(t['eval_loss'], '.4f')} | "
            f"{fmt(t['best_so_far'], '.4f')} | "
            f"{fmt(t.get('seconds'), '.1f')} |"
        )
    return "\n".join(lines)


def _write_adapter(best_dir: Path, out_dir: Path, result: SearchResult) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(best_dir / name, out_dir / name)
    (out_dir / "trials.json").write_text(json.dumps(result.trials, indent=2))
    (out_dir / CARD_FILE).write_text(model_card(result))


