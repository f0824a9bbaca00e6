"""One LoRA trial per process: the trial worker, and the pool that keeps n_workers of them busy.

Why a fresh process per trial: a trial that leaks memory, fragments the CUDA allocator or crashes takes
only its own process with it, and the next trial starts clean. On CPU that process is forked from a server
that imported torch, transformers, peft and optuna once (fork_server.py: about 5 s saved per trial); with
GPUs it is a freshly exec'd interpreter. The study in RDB storage is the only state
the processes share: a worker loads the model, asks the study for a trial (TPE sees every finished one,
and with several workers at once treats the running ones as bad guesses so that they spread out), trains
it, reports every eval loss (the pruner compares across workers), saves its adapter to
work_dir/trial-N and exits.

How the trial of a worker that died is recovered, so that a kill loses that trial and nothing else:
- on this machine at once: every trial records its worker's machine and pid; the pool fails a RUNNING
  trial whose worker on this machine is gone (a child it reaped, or an orphan of a killed earlier pool)
  and queues it again once, with the same parameters;
- anywhere else (a Kubernetes pod, another machine): the trial's heartbeat stops, and grace_period later
  the next worker to start fails it and queues it again (Optuna's RDBStorage heartbeat callback).

Run: python -m frd_assets.core.lora.worker --spec WORK_DIR/search.json [--pool N]
Without --pool it runs one trial and exits; with it, it keeps N such processes busy until the study holds
its n_trials finished trials (a Kubernetes worker pod runs this with N=1). The storage URL comes from the
environment (OPTUNA_STORAGE), so a database password never sits on a command line or in the spec file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from frd_assets.core.lora import fork_server
from frd_assets.core.lora.data import Example
from frd_assets.core.lora.search import SearchSettings, SearchSpace, study_storage
from frd_assets.core.lora.study_storage import STORAGE_ENV
from frd_assets.core.lora.trial import Pruned, TrainingConfig, run_trial
from frd_assets.core.threads import apply_thread_budget, thread_env, threads_per_worker

WORKER_ATTR = "worker"  # trial user attribute: {"machine", "pid", "trial"} of the process running it
_STARTED = "frd-worker: trial started"  # a worker's first line about its trial; the pool reads it
_FAILED_STARTS = 3  # workers in a row that die before their first trial: something is broken, not unlucky


@dataclass(frozen=True)
class SearchJob:
    """What every trial worker needs besides the storage URL; run_search writes it once, as JSON."""

    study_name: str
    base_model: str  # as the user gave it: each worker resolves it on its own machine
    n_trials: int
    work_dir: str
    pad_id: int
    training: TrainingConfig
    space: SearchSpace
    settings: SearchSettings
    train: tuple[Example, ...]
    evals: tuple[Example, ...]
    # The user's validation tasks (core/lora/real_tasks.py): when given, their loss is the trial's value.
    validation: tuple[Example, ...] = ()

    def write(self, path: Path) -> None:
        # Written beside and renamed over: a worker starting meanwhile reads the old file or the new one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)))  # asdict recurses into the configs and the examples
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "SearchJob":
        data = json.loads(Path(path).read_text())
        return cls(
            **{k: data[k] for k in ("study_name", "base_model", "n_trials", "work_dir", "pad_id")},
            training=TrainingConfig(**data["training"]),
            space=SearchSpace(**data["space"]),
            settings=SearchSettings(**data["settings"]),
            train=tuple(Example(**e) for e in data["train"]),
            evals=tuple(Example(**e) for e in data["evals"]),
            validation=tuple(Example(**e) for e in data.get("validation", ())),
        )


class TrialWorkers(Protocol):
    """Starts trial workers somewhere and returns once the study holds job.n_trials finished trials (or the
    workers gave up). The default runs them as local processes (`run_pool`); KubernetesWorkers as pods."""

    def run_trials(self, spec: Path, job: SearchJob, *, storage_url: str, print_fn: Callable[[str], None]) -> None:
        ...


def machine_id() -> str:
    """This host and pid namespace: a pid means the same process only where both match."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: one namespace per host
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. VmHWM where there is /proc, not ru_maxrss: Linux carries
    the parent's peak into a child's ru_maxrss across fork and exec, so each worker would report at least
    the peak of the search that started it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid: alive, not ours to judge
        return True
    return True


def _trial_states(study) -> tuple[int, list, int]:
    """(finished trials, the RUNNING trials, failed trials) from one read of the study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    return finished, [t for t in trials if t.state == TrialState.RUNNING], failed


def _worker_of(trial) -> dict | None:
    """The trial's worker, when it recorded one for this very trial (a retried trial carries a copy of the
    dead one's attributes until its own worker overwrites them)."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    return worker if isinstance(worker, dict) and worker.get("trial") == trial.number else None


def _recorded(running: list) -> list:
    """The RUNNING trials whose worker recorded itself. One without a record lost its process in the moment
    between the trial's creation and its parameters: nobody will finish it, and it may have no heartbeat to
    go stale either, so counting it as in flight could stop the search for good."""
    return [t for t in running if _worker_of(t) is not None]


def _running_elsewhere(running: list, workers: dict) -> int:
    """RUNNING trials of live workers that are not this pool's: an earlier pool's orphans, other pods."""
    me, ours = machine_id(), {w.process.pid for w in workers.values()}
    return sum(
        not (w.get("machine") == me and w.get("pid") in ours) for w in map(_worker_of, _recorded(running))
    )


def fail_dead_workers(study, print_fn: Callable[[str], None] = print) -> list[int]:
    """Fails each RUNNING trial whose worker process on this machine is gone and queues it again once (the
    storage's retry callback); returns their numbers. Trials of other machines are left to the heartbeat."""
    from optuna.trial import TrialState

    me, failed = machine_id(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = _worker_of(trial)
        if worker is None or worker.get("machine") != me or _alive(int(worker["pid"])):
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile: by its heartbeat, or by another pool
            continue
        failed.append(trial.number)
        print_fn(f"trial {trial.number}: its worker (pid {worker['pid']}) died; the trial is failed and, unless "
                 "it was a retry already, queued again")
        retry = study._storage.get_heartbeat_stale_trial_callback()
        if retry is not None:
            retry(study, frozen)
    return failed


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
    print_fn(f"{_STARTED} {trial.number}")
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

    from frd_assets.core.models import load_causal_lm, pick_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and constant_liar are marked experimental but are the documented way to run workers.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    hf_logging.disable_progress_bar()  # a progress bar per trial would flood the run's log
    settings = job.settings
    study = optuna.load_study(
        study_name=job.study_name,
        storage=study_storage(storage_url, settings),
        sampler=settings.make_sampler(job.n_trials, seed=sampler_seed),
        pruner=settings.make_pruner(),
    )
    # The pool's count (run_pool): a trial another pool or pod started meanwhile may leave none for this one.
    finished, running, _ = _trial_states(study)
    in_flight = len(_recorded(running))
    if finished + in_flight >= job.n_trials:
        print_fn(f"study {job.study_name} needs no more trials ({finished} finished, {in_flight} running)")
        return
    model = load_causal_lm(job.base_model, device=pick_device())
    identity = {"machine": machine_id(), "pid": os.getpid()}
    objective = functools.partial(trial_objective, job=job, model=model, identity=identity, print_fn=print_fn)
    # optimize, not ask/tell: it runs the heartbeat thread and first fails other workers' stale trials.
    study.optimize(objective, n_trials=1, catch=(RuntimeError,))


def slot_env(slot: int, *, threads: int, gpus: list[str]) -> dict[str, str]:
    """A worker slot's environment: its share of the thread budget and, with GPUs, one GPU (round robin)."""
    env = thread_env(threads)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    named = [d.strip() for d in visible.split(",") if d.strip()]
    return named or [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen
    reader: threading.Thread | None = None
    started: bool = False  # printed _STARTED: it holds a trial
    tail: deque = field(default_factory=lambda: deque(maxlen=40))


def _launch(slot: int, spec: Path, env: dict[str, str], seed: int, lines: queue.Queue, prefix: str, *,
            server: fork_server.ForkServer | None) -> _Worker:
    argv = ["--spec", str(spec), "--sampler-seed", str(seed)]
    if server is not None:  # forked from the server that imported the stack once (core/lora/fork_server.py)
        process = server.spawn(argv, env)
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "frd_assets.core.lora.worker", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
    worker = _Worker(slot, process)

    def relay() -> None:
        # A thread per worker, so a chatty worker never blocks on a full pipe; the pool's loop logs the
        # lines (print_fn may be a Dagster logger, called from the step's own thread).
        for line in process.stdout:
            line = line.rstrip("\n")
            worker.tail.append(line)
            if line.startswith(_STARTED):
                worker.started = True
            else:
                lines.put(prefix + line)

    worker.reader = threading.Thread(target=relay, daemon=True)
    worker.reader.start()
    return worker


def _exit_reason(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _stop(workers: list[_Worker]) -> None:
    for w in workers:
        w.process.terminate()
    deadline = time.monotonic() + 10
    for w in workers:
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()


def run_pool(
    spec: Path,
    job: SearchJob,
    *,
    storage_url: str,
    n_workers: int,
    print_fn: Callable[[str], None] = print,
    seed_offset: int = 0,
    poll_s: float = 0.5,
) -> None:
    """Keeps up to n_workers trial processes running until the study holds job.n_trials finished trials.

    A new worker starts only while finished + in flight < n_trials, where in flight counts this pool's
    workers and the RUNNING trials of live workers elsewhere, so the study ends with exactly n_trials
    (unless another pool on another machine races this one). It stops early once as many trials have failed
    in this call as were left to finish, like the single-process search it replaces.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=job.study_name, storage=study_storage(storage_url, job.settings))
    fail_dead_workers(study, print_fn)
    finished, _, failed_before = _trial_states(study)
    give_up_at = max(1, job.n_trials - finished)
    threads = threads_per_worker(n_workers)
    gpus = visible_gpus()
    forked = fork_server.available(gpus)
    server: fork_server.ForkServer | None = None  # started with the first trial: a finished study needs none
    base_env = {**os.environ, STORAGE_ENV: storage_url, "PYTHONUNBUFFERED": "1"}
    where = f"GPUs {', '.join(gpus)}" if gpus else "CPU, each trial forked from a fork server" if forked else "CPU"
    print_fn(f"study {job.study_name}: {finished}/{job.n_trials} finished; {n_workers} worker(s), {threads} "
             f"torch thread(s) each, on {where}")
    launches = len(study.trials)  # distinct sampler seeds: same-seeded workers would draw the same start points
    lines: queue.Queue[str] = queue.Queue()
    workers: dict[int, _Worker] = {}
    failed_starts, failed = 0, 0
    try:
        while True:
            for slot, w in list(workers.items()):
                code = w.process.poll()
                if code is None:
                    continue
                w.reader.join(timeout=10)
                del workers[slot]
                if code != 0:
                    print_fn(f"worker {slot} (pid {w.process.pid}) ended with {_exit_reason(code)}; its last lines:\n"
                             + "\n".join(w.tail))
                failed_starts = 0 if w.started else failed_starts + (code != 0)
                if failed_starts >= _FAILED_STARTS:
                    raise RuntimeError(
                        f"{failed_starts} trial workers of study {job.study_name} in a row ended before their first "
                        f"trial; the last one said:\n" + "\n".join(w.tail)
                    )
            while not lines.empty():
                print_fn(lines.get_nowait())
            fail_dead_workers(study, print_fn)
            optuna.storages.fail_stale_trials(study)  # dead workers elsewhere, once their heartbeat is stale
            finished, running, failed_now = _trial_states(study)
            failed = failed_now - failed_before
            if finished >= job.n_trials or failed >= give_up_at:
                if not workers:
                    break
            else:
                wanted = job.n_trials - finished - len(workers) - _running_elsewhere(running, workers)
                for slot in range(n_workers):
                    if wanted <= 0:
                        break
                    if slot not in workers:
                        prefix = f"worker {slot}: " if n_workers > 1 else ""
                        env = {**base_env, **slot_env(slot, threads=threads, gpus=gpus)}
                        seed = (job.settings.seed + seed_offset + launches) % 2**32
                        if forked and server is None:
                            server = fork_server.ForkServer()
                        workers[slot] = _launch(slot, spec, env, seed, lines, prefix, server=server)
                        launches += 1
                        wanted -= 1
            time.sleep(poll_s)
    finally:
        # Interrupted (the run was cancelled) or failing: take this pool's workers down with it, and queue
        # their trials again so that the next run picks them up.
        _stop(list(workers.values()))
        if server is not None:
            server.close()
        while not lines.empty():
            print_fn(lines.get_nowait())
        fail_dead_workers(study, print_fn)
    if failed >= give_up_at and finished < job.n_trials:
        print_fn(f"study {job.study_name}: stopped after {failed} failed trials in this run; "
                 f"{finished}/{job.n_trials} finished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frd_assets.core.lora.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the search.json that run_search wrote")
    parser.add_argument("--pool", type=int, metavar="N",
                        help="keep N trial processes busy until the study is done (default: run one trial)")
    parser.add_argument("--sampler-seed", type=int, help="TPE's seed for this trial (default: from the study)")
    args = parser.parse_args(argv)
    storage_url = os.environ.get(STORAGE_ENV)
    if not storage_url:
        print(f"error: {STORAGE_ENV} is not set; a trial worker reads the study's storage URL from it",
              file=sys.stderr)
        return 2
    job = SearchJob.read(args.spec)
    if args.pool:
        # Pods of one Job all start with launch count 0: their host names keep their samplers apart.
        run_pool(args.spec, job, storage_url=storage_url, n_workers=args.pool,
                 print_fn=lambda line: print(line, flush=True), seed_offset=zlib.crc32(socket.gethostname().encode()))
        return 0
    apply_thread_budget()  # FRD_TORCH_THREADS, which the pool set to this worker's share
    seed = args.sampler_seed if args.sampler_seed is not None else job.settings.seed
    run_one_trial(job, storage_url, sampler_seed=seed, print_fn=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
