"""The pool supervisor: keeps n_workers trial worker processes (worker.py) busy until the study is done.

On CPU each trial process is forked from a server that imported torch, transformers, peft and optuna once
(fork_server.py: about 5 s saved per trial); with GPUs it is a freshly exec'd interpreter
(`python -m frd_assets.core.lora.worker`), one GPU per worker slot.

How the trial of a worker that died is recovered, so that a kill loses that trial and nothing else:
- on this machine at once: every trial records its worker's machine and pid; the pool fails a RUNNING
  trial whose worker on this machine is gone (a child it reaped, or an orphan of a killed earlier pool)
  and queues it again once, with the same parameters (study_storage.requeue_once);
- anywhere else (a Kubernetes pod, another machine): the trial's heartbeat stops, and grace_period later
  the pool (or the next worker to start) fails it and queues it again (Optuna's RDBStorage heartbeat).

Run: python -m frd_assets.core.lora.pool --spec WORK_DIR/search.json --workers N
A Kubernetes worker pod runs this with N=1 (kubernetes.py). The storage URL comes from the environment
(OPTUNA_STORAGE), as for a trial worker.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from frd_assets.core.lora import fork_server, worker
from frd_assets.core.lora.job import SearchJob
from frd_assets.core.lora.study_storage import STORAGE_ENV, requeue_once
from frd_assets.core.threads import thread_env, threads_per_worker

_FAILED_STARTS = 3  # workers in a row that die before their first trial: something is broken, not unlucky


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid: alive, not ours to judge
        return True
    return True


def fail_dead_workers(study, print_fn: Callable[[str], None] = print) -> list[int]:
    """Fails each RUNNING trial whose worker process on this machine is gone and queues it again once; returns
    their numbers. Trials of other machines are left to the heartbeat."""
    from optuna.trial import TrialState

    me, failed = worker.machine_id(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = worker.worker_of(trial)
        if record is None or record.get("machine") != me or _alive(int(record["pid"])):
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile: by its heartbeat, or by another pool
            continue
        failed.append(trial.number)
        print_fn(f"trial {trial.number}: its worker (pid {record['pid']}) died; the trial is failed and, unless "
                 "it was a retry already, queued again")
        requeue_once(study, frozen)
    return failed


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen | fork_server.ForkedProcess
    reader: threading.Thread | None = None
    started: bool = False  # printed worker.STARTED: it holds a trial
    tail: deque = field(default_factory=lambda: deque(maxlen=40))


@dataclass
class PoolState:
    """What the pool keeps between polls of the study."""

    job: SearchJob
    spec: Path
    study: object  # optuna.Study
    n_workers: int
    print_fn: Callable[[str], None]
    threads: int  # torch threads per worker
    gpus: list[str]
    forked: bool  # CPU trials forked from the fork server, not exec'd
    base_env: dict[str, str]
    seed_offset: int
    launches: int  # workers started for this study so far: each gets its own sampler seed
    give_up_at: int  # failed trials in this call that stop the pool
    failed_before: int  # failed trials the study held when this call began
    workers: dict[int, _Worker] = field(default_factory=dict)
    lines: queue.Queue = field(default_factory=queue.Queue)  # workers' output, logged from the pool's thread
    # Set when a worker ends, so the pool starts the next trial at once rather than at its next poll: half a
    # poll per trial is a share of a short (pruned) trial's time, and of every trial a free slot waits for.
    ended: threading.Event = field(default_factory=threading.Event)
    failed_starts: int = 0  # workers in a row that ended before their first trial
    server: fork_server.ForkServer | None = None  # started with the first trial: a finished study needs none


@dataclass(frozen=True)
class Progress:
    """The study as one read found it."""

    finished: int  # COMPLETE or PRUNED
    failed: int  # FAILED since this call began
    running: list  # the RUNNING trials


def read_progress(pool: PoolState) -> Progress:
    finished, running, failed_now = worker.trial_states(pool.study)
    return Progress(finished, failed_now - pool.failed_before, running)


def _running_elsewhere(running: list, workers: dict[int, _Worker]) -> int:
    """RUNNING trials of live workers that are not this pool's: an earlier pool's orphans, other pods."""
    me, ours = worker.machine_id(), {w.process.pid for w in workers.values()}
    return sum(
        not (w.get("machine") == me and w.get("pid") in ours)
        for w in map(worker.worker_of, worker.recorded(running))
    )


def _launch(pool: PoolState, slot: int) -> _Worker:
    env = {**pool.base_env, **slot_env(slot, threads=pool.threads, gpus=pool.gpus)}
    seed = (pool.job.settings.seed + pool.seed_offset + pool.launches) % 2**32
    argv = ["--spec", str(pool.spec), "--sampler-seed", str(seed)]
    if pool.forked:  # forked from the server that imported the stack once (core/lora/fork_server.py)
        if pool.server is None:
            # Only a QLoRA job's trials need bitsandbytes; the others' server starts 0.7 s sooner without it.
            hidden = () if pool.job.training.quantization == "nf4" else ("bitsandbytes",)
            pool.server = fork_server.ForkServer(worker.main, hidden=hidden)
        process = pool.server.spawn(argv, env)
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", worker.__name__, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
    w = _Worker(slot, process)
    prefix = f"worker {slot}: " if pool.n_workers > 1 else ""

    def relay() -> None:
        # A thread per worker, so a chatty worker never blocks on a full pipe; the pool's loop logs the
        # lines (print_fn may be a Dagster logger, called from the step's own thread).
        for line in process.stdout:
            line = line.rstrip("\n")
            w.tail.append(line)
            if line.startswith(worker.STARTED):
                w.started = True
            else:
                pool.lines.put(prefix + line)
        # Its output ends with the process: wait for the exit status too, then wake the pool's loop.
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # it closed its output but runs on: the loop's polls will see it end
        pool.ended.set()

    w.reader = threading.Thread(target=relay, daemon=True)
    w.reader.start()
    return w


def start_workers(pool: PoolState, progress: Progress) -> None:
    """Starts workers in free slots while finished + in flight < n_trials, in flight counting this pool's
    workers and the RUNNING trials of live workers elsewhere."""
    wanted = (pool.job.n_trials - progress.finished - len(pool.workers)
              - _running_elsewhere(progress.running, pool.workers))
    for slot in range(pool.n_workers):
        if wanted <= 0:
            return
        if slot not in pool.workers:
            pool.workers[slot] = _launch(pool, slot)
            pool.launches += 1
            wanted -= 1


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def reap_finished(pool: PoolState) -> None:
    """Forgets the workers that ended, logging the last lines of any that failed; raises once _FAILED_STARTS
    workers in a row ended before their first trial."""
    for slot, w in list(pool.workers.items()):
        code = w.process.poll()
        if code is None:
            continue
        w.reader.join(timeout=10)
        del pool.workers[slot]
        if code != 0:
            pool.print_fn(f"worker {slot} (pid {w.process.pid}) ended with {_exit_reason(code)}; its last lines:\n"
                          + "\n".join(w.tail))
        pool.failed_starts = 0 if w.started else pool.failed_starts + (code != 0)
        if pool.failed_starts >= _FAILED_STARTS:
            raise RuntimeError(
                f"{pool.failed_starts} trial workers of study {pool.job.study_name} in a row ended before their "
                f"first trial; the last one said:\n" + "\n".join(w.tail)
            )


def requeue_dead(pool: PoolState) -> None:
    """Fails and queues again the trials of dead workers: this machine's at once, others' once their heartbeat
    is stale."""
    import optuna

    fail_dead_workers(pool.study, pool.print_fn)
    optuna.storages.fail_stale_trials(pool.study)


def log_lines(pool: PoolState) -> None:
    while not pool.lines.empty():
        pool.print_fn(pool.lines.get_nowait())


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


def shut_down(pool: PoolState) -> None:
    """Takes this pool's workers and fork server down, and queues their trials again so that the next run
    picks them up."""
    _stop(list(pool.workers.values()))
    if pool.server is not None:
        pool.server.close()
    log_lines(pool)
    fail_dead_workers(pool.study, pool.print_fn)


def _open_pool(spec: Path, job: SearchJob, *, storage_url: str, n_workers: int, print_fn: Callable[[str], None],
               seed_offset: int) -> PoolState:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=job.study_name, storage=job.settings.storage(storage_url))
    fail_dead_workers(study, print_fn)
    finished, _, failed_before = worker.trial_states(study)
    gpus = visible_gpus()
    pool = PoolState(
        job=job, spec=spec, study=study, n_workers=n_workers, print_fn=print_fn,
        threads=threads_per_worker(n_workers), gpus=gpus, forked=fork_server.available(gpus),
        base_env={**os.environ, STORAGE_ENV: storage_url, "PYTHONUNBUFFERED": "1"}, seed_offset=seed_offset,
        # Distinct sampler seeds: same-seeded workers would draw the same start points.
        launches=len(study.trials), give_up_at=max(1, job.n_trials - finished), failed_before=failed_before,
    )
    where = (f"GPUs {', '.join(gpus)}" if gpus else "CPU, each trial forked from a fork server" if pool.forked
             else "CPU")
    print_fn(f"study {job.study_name}: {finished}/{job.n_trials} finished; {n_workers} worker(s), {pool.threads} "
             f"torch thread(s) each, on {where}")
    return pool


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

    A new worker starts only while finished + in flight < n_trials (start_workers), so the study ends with
    exactly n_trials (unless another pool on another machine races this one). It stops early once as many
    trials have failed in this call as were left to finish, like the single-process search it replaces.
    """
    pool = _open_pool(spec, job, storage_url=storage_url, n_workers=n_workers, print_fn=print_fn,
                      seed_offset=seed_offset)
    try:
        while True:
            reap_finished(pool)
            log_lines(pool)
            requeue_dead(pool)
            progress = read_progress(pool)
            if progress.finished >= job.n_trials or progress.failed >= pool.give_up_at:
                if not pool.workers:
                    break
            else:
                start_workers(pool, progress)
            pool.ended.wait(poll_s)  # a worker's end, or the next poll (other pools' trials, dead workers)
            pool.ended.clear()
    finally:
        # Interrupted (the run was cancelled) or failing: this pool's workers go down with it.
        shut_down(pool)
    if progress.failed >= pool.give_up_at and progress.finished < job.n_trials:
        print_fn(f"study {job.study_name}: stopped after {progress.failed} failed trials in this run; "
                 f"{progress.finished}/{job.n_trials} finished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frd_assets.core.lora.pool", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the search.json that run_search wrote")
    parser.add_argument("--workers", type=int, metavar="N", default=1,
                        help="trial processes at once, until the study is done (default 1)")
    args = parser.parse_args(argv)
    storage_url = worker.storage_url_from_env()
    if not storage_url:
        return 2
    job = SearchJob.read(args.spec)
    # Pods of one Job all start with launch count 0: their host names keep their samplers apart.
    run_pool(args.spec, job, storage_url=storage_url, n_workers=args.workers,
             print_fn=lambda line: print(line, flush=True), seed_offset=zlib.crc32(socket.gethostname().encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
