"""The torch thread budget: how many cores one run, or one trial worker, may use.

Torch, and OpenMP in every child process it starts, use every core they can see. Two runs, or two trial
workers, on one machine then each start as many threads as there are cores; they preempt each other's
threads mid-matmul and together finish later than one after the other. So every run and every trial
worker sets its thread count explicitly, from one setting: FRD_TORCH_THREADS. Unset, the budget is
- for `frd tune`, a trial pool and anything else that has the machine to itself: all the cores this process
  may use (its CPU affinity, capped by its container's CPU limit: in a pod limited to 4 CPUs on a 64-core
  node that is 4, where torch's own default would be 64);
- for a run of the embedded instance (`apply_thread_budget()` in each torch asset): its share of those cores.
  dagster.yaml lets one cpu-queue and one gpu-queue run through at once; without a GPU both compute on the
  same cores, so each gets half. With a GPU, or in a container with its own CPU limit, a run has its cores
  alone and gets all of them. A lone run on a 2-core machine so runs on 1 thread, not 2: slower alone,
  but a generation run beside one other all-cores torch process on 2 cores was measured at 1.6-2.3 teacher
  tok/s against 12-17 alone (issue 13), a far worse loss than half the cores.
A trial pool splits its budget evenly between its workers (threads_per_worker).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

from frd_assets.core import settings
from frd_assets.core.config_checks import Integer, check_value

THREADS_ENV = settings.FRD_TORCH_THREADS
# Read by the OpenMP and MKL runtimes when a process starts: set here, they reach every child process.
_CHILD_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Runs of the embedded instance that may compute on one machine's cores at once: dagster.yaml's
# tag_concurrency_limits, one cpu-queue and one gpu-queue run (a test holds the two equal).
EMBEDDED_CONCURRENT_RUNS = 2


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """Whole CPUs allowed by a cgroup v2 `cpu.max` line ("400000 100000" -> 4; "max 100000" -> None)."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def container_cpu_limit() -> int | None:
    """Whole CPUs this process's cgroup (its container) may use, or None where there is no such limit."""
    try:
        return cgroup_cpu_limit(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:  # not Linux, or cgroup v1: no limit we can read
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = container_cpu_limit()
    return min(cores, limit) if limit else cores


def runs_sharing_cores() -> int:
    """Runs of the embedded instance that may compute on this process's cores at once: both queues' runs
    on a machine without a GPU, else one (the GPU run computes on its GPU; a container's cores are its own)."""
    import torch

    if torch.cuda.is_available() or container_cpu_limit() is not None:
        return 1
    return EMBEDDED_CONCURRENT_RUNS


def thread_budget(env: Mapping[str, str] | None = None, *, shared: bool = False) -> int:
    """FRD_TORCH_THREADS when set; else every available core, or with shared=True (a run of the embedded
    instance, which another run may be beside) an even share of them (runs_sharing_cores)."""
    budget = settings.torch_threads(env)
    if budget is None:
        cores = available_cores()
        return max(1, cores // runs_sharing_cores()) if shared else cores
    return budget


def threads_per_worker(n_workers: int, budget: int | None = None) -> int:
    """An even share of the budget for each of n_workers processes, at least one thread each."""
    return max(1, (thread_budget() if budget is None else budget) // max(1, n_workers))


def thread_env(n: int) -> dict[str, str]:
    """The environment that gives a new process a budget of n threads, read before torch loads."""
    return {THREADS_ENV: str(n), **{var: str(n) for var in _CHILD_THREAD_VARS}}


def apply_thread_budget(n: int | None = None) -> int:
    """Sets torch's intra-op threads to n in this process, and the same budget in the environment its child
    processes inherit; returns n. Call it first thing in a run step or a worker. n defaults to a run's
    share, thread_budget(shared=True); a process that has the machine to itself passes thread_budget()."""
    n = thread_budget(shared=True) if n is None else check_value("thread budget", "n", n, Integer(1))
    # FRD_TORCH_THREADS too, so that a trial pool started from here splits this budget, not all cores.
    os.environ.update(thread_env(n))
    import torch

    torch.set_num_threads(n)
    return n
