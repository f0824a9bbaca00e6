"""One LoRA trial in this process: the trial worker that pool.py (or a Kubernetes pod's pool) starts per trial.

Why a fresh process per trial: a trial that leaks memory, fragments the CUDA allocator or crashes takes
only its own process with it, and the next trial starts clean. The study in RDB storage is the only state
the processes share: a worker loads the model, asks the study for a trial (TPE sees every finished one,
and with several workers at once treats the running ones as bad guesses so that they spread out), trains
it, reports every eval loss (the pruner compares across workers), saves its adapter to
work_dir/trial-N and exits. Each trial records its worker's machine and pid (WORKER_ATTR), so that the
pool can tell a trial whose process died from one still training.

Run: python -m frd_assets.core.lora.worker --spec WORK_DIR/search.json [--sampler-seed S]
It runs one trial and exits. The storage URL comes from the environment (OPTUNA_STORAGE), so a database
password never sits on a command line or in the spec file.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Callable

from frd_assets.core.lora.job import SearchJob
from frd_assets.core.lora.memory import peak_rss_bytes
from frd_assets.core.lora.study_storage import STORAGE_ENV
from frd_assets.core.lora.trial import Pruned, run_trial
from frd_assets.core.settings import optuna_storage
from frd_assets.core.threads import apply_thread_budget

WORKER_ATTR = "worker"  # trial user attribute: {"machine", "pid", "trial"} of the process running it
STARTED = "frd-worker: trial started"  # a worker's first line about its trial; the pool reads it


def machine_id() -> str:
    """This host and pid namespace: a pid means the same process only where both match."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: one namespace per host
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (since the trial began: see memory.PeakMemory)."""
    return peak_rss_bytes() / 2**20


def trial_states(study) -> tuple[int, list, int]:
    """(finished trials, the RUNNING trials, failed trials) from one read of the study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    return finished, [t for t in trials if t.state == TrialState.RUNNING], failed


def worker_of(trial) -> dict | None:
    """The trial's worker, when it recorded one for this very trial (a retried trial carries a copy of the
    dead one's attributes until its own worker overwrites them)."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    return worker if isinstance(worker, dict) and worker.get("trial") == trial.number else None


def recorded(running: list) -> list:
    """The RUNNING trials whose worker recorded itself. One without a record lost its process in the moment
    between the trial's creation and its parameters: nobody will finish it, and it may have no heartbeat to
    go stale either, so counting it as in flight could stop the search for good."""
    return [t for t in running if worker_of(t) is not None]


def trial_objective(trial, *, job: SearchJob, model, identity: dict, print_fn: Callable[[str], None]) -> float:
    """One trial of the study: suggest hyperparameters, train with pruning reports, record the result.

    Returns the validation loss where the job has validation tasks, else the eval loss; raises
    optuna.TrialPruned when pruned and RuntimeError when training failed (the study records a FAILED trial
    and the pool goes on)."""
    import optuna
    import torch

    # Parameters first: a trial that dies later is queued again with them (the retry callback copies them).
    hp = job.space.suggest(trial)
    trial.set_user_attr(WORKER_ATTR, {**identity, "trial": trial.number})
    trial.set_user_attr("torch_threads", torch.get_num_threads())
    print_fn(f"{STARTED} {trial.number}")
    save_dir = Path(job.work_dir) / f"trial-{trial.number}"
    print_fn(f"trial {trial.number}: rank={hp.rank} lora_alpha={hp.lora_alpha} learning_rate={hp.learning_rate:.2e}")

    def report(step: int, loss: float) -> None:
        trial.report(loss, step)
        if trial.should_prune():
            raise Pruned()

    result = run_trial(
        model, job.train, job.evals, hp, job.training, pad_id=job.pad_id, report=report, save_dir=save_dir,
        print_fn=print_fn, validation=job.validation,
    )
    for key, value in result.to_dict().items():
        if key != "eval_history":
            trial.set_user_attr(key, value)
    trial.set_user_attr("adapter_dir", str(save_dir))
    trial.set_user_attr("peak_rss_mb", round(peak_rss_mb(), 1))
    shown = f", validation loss {result.validation_loss}" if job.validation else ""
    print_fn(f"trial {trial.number}: {result.status}, eval loss {result.eval_loss}{shown}, "
             f"{result.tokens_per_second:.0f} train tok/s")
    if result.status == "pruned":
        raise optuna.TrialPruned()
    value = result.objective_loss
    if result.status != "ok" or value is None or not torch.isfinite(torch.tensor(value)):
        raise RuntimeError(f"trial {trial.number} {result.status}: {result.error or 'non-finite eval loss'}")
    return value


def run_one_trial(job: SearchJob, storage_url: str, *, sampler_seed: int, print_fn: Callable[[str], None] = print):
    """Asks the study for one trial (a queued retry first), trains, evaluates and reports it, saves its adapter."""
    import optuna
    from transformers.utils import logging as hf_logging

    from frd_assets.core.lora.precision import load_training_model
    from frd_assets.core.models import pick_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and constant_liar are marked experimental but are the documented way to run workers.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    hf_logging.disable_progress_bar()  # a progress bar per trial would flood the run's log
    settings = job.settings
    study = optuna.load_study(
        study_name=job.study_name,
        storage=settings.storage(storage_url),
        sampler=settings.make_sampler(job.n_trials, seed=sampler_seed),
        pruner=settings.make_pruner(),
    )
    # The pool's count (pool.py): a trial another pool or pod started meanwhile may leave none for this one.
    finished, running, _ = trial_states(study)
    in_flight = len(recorded(running))
    if finished + in_flight >= job.n_trials:
        print_fn(f"study {job.study_name} needs no more trials ({finished} finished, {in_flight} running)")
        return
    model = load_training_model(job.base_model, precision=job.training.precision,
                                quantization=job.training.quantization, device=pick_device())
    identity = {"machine": machine_id(), "pid": os.getpid()}
    objective = functools.partial(trial_objective, job=job, model=model, identity=identity, print_fn=print_fn)
    # optimize, not ask/tell: it runs the heartbeat thread and first fails other workers' stale trials.
    study.optimize(objective, n_trials=1, catch=(RuntimeError,))


def storage_url_from_env() -> str | None:
    """The study's storage URL a worker process was given (OPTUNA_STORAGE); None, after saying so on stderr,
    when it is not set."""
    url = optuna_storage()
    if not url:
        print(f"error: {STORAGE_ENV} is not set; a trial worker reads the study's storage URL from it",
              file=sys.stderr)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frd_assets.core.lora.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the search.json that run_search wrote")
    parser.add_argument("--sampler-seed", type=int, help="TPE's seed for this trial (default: from the study)")
    args = parser.parse_args(argv)
    storage_url = storage_url_from_env()
    if not storage_url:
        return 2
    job = SearchJob.read(args.spec)
    apply_thread_budget()  # FRD_TORCH_THREADS, which the pool set to this worker's share
    seed = args.sampler_seed if args.sampler_seed is not None else job.settings.seed
    run_one_trial(job, storage_url, sampler_seed=seed, print_fn=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
