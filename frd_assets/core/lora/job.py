"""What a LoRA search job is: its search space, its settings, and the job file every trial worker reads.

The search (search.py), the pool of trial processes (pool.py), each trial worker (worker.py) and the
Kubernetes pods (kubernetes.py) all need these types. Kept here, below all four, they let each of those
import downwards only: search and kubernetes above pool, pool above worker, worker above this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

from frd_assets.core.config_checks import SEED, Integer, Number, OneOf, check_fields, check_order
from frd_assets.core.lora.data import Example
from frd_assets.core.lora.study_storage import rdb_storage
from frd_assets.core.lora.trial import LORA_ALPHA, RANK, LoraHyperparams, TrainingConfig

# Finished trials a study should hold, wherever the number comes from (lora_adapter's run config, LORA_N_TRIALS,
# `frd tune --trials`): 20 hours of the tiny test model's trials at about 500 an hour, weeks of a real
# model's, so only a typo goes past it.
N_TRIALS = Integer(1, 10_000)


@dataclass(frozen=True)
class SearchSpace:
    """rank and lora_alpha are searched independently (free, not tied): alpha/rank is the LoRA scale."""

    rank_min: int = 4
    rank_max: int = 64
    alpha_min: int = 4
    alpha_max: int = 128
    lr_min: float = 1e-5
    lr_max: float = 5e-3

    def __post_init__(self) -> None:
        check_fields(self, "search space", _SPACE_RULES)
        check_order("search space", "rank_min", self.rank_min, "rank_max", self.rank_max)
        check_order("search space", "alpha_min", self.alpha_min, "alpha_max", self.alpha_max)
        check_order("search space", "lr_min", self.lr_min, "lr_max", self.lr_max)

    def suggest(self, trial) -> LoraHyperparams:
        return LoraHyperparams(
            rank=trial.suggest_int("rank", self.rank_min, self.rank_max, log=True),
            lora_alpha=trial.suggest_int("lora_alpha", self.alpha_min, self.alpha_max, log=True),
            learning_rate=trial.suggest_float("learning_rate", self.lr_min, self.lr_max, log=True),
        )


# The same ranges as LoraHyperparams: every point of the space must be a valid trial.
_SPACE_RULES = {
    "rank_min": RANK,
    "rank_max": RANK,
    "alpha_min": LORA_ALPHA,
    "alpha_max": LORA_ALPHA,
    "lr_min": Number(0, 1, low_open=True, high_open=True),
    "lr_max": Number(0, 1, low_open=True, high_open=True),
}


@dataclass(frozen=True)
class SearchSettings:
    """How the study searches: sampler warm-up, pruning, and how a dead worker's trial is recovered."""

    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = 2  # trials that finish unpruned before the median pruner judges others
    n_startup_trials: int | None = None  # TPE's random warm-up; None: n_trials // 3, between 1 and 10
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 30  # a RUNNING trial silent this long is failed (its process died) and retried once
    seed: int = 0
    # Trial processes at once; every trial runs in a fresh process. With GPUs, worker i gets GPU i mod count
    # (so: one per GPU); on CPU each gets an even share of the thread budget (FRD_TORCH_THREADS).
    n_workers: int = 1

    def __post_init__(self) -> None:
        check_fields(self, "search settings", _SETTINGS_RULES)
        check_order(
            "search settings", "heartbeat_interval", self.heartbeat_interval, "grace_period", self.grace_period,
            strict=True,
        )

    def storage(self, url: str):
        """The study's RDB storage with this search's heartbeat and grace period."""
        return rdb_storage(url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period)

    def make_pruner(self):
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup_trials, n_warmup_steps=0)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner()
        return optuna.pruners.NopPruner()

    def make_sampler(self, n_trials: int, *, seed: int):
        """TPE seeded with `seed`: each trial process gets its own, or every fresh process would draw the
        same random start points."""
        import optuna

        # TPE samples at random for n_startup_trials (10 by default): scale it down so a short search is
        # still Bayesian after its first few trials.
        startup = self.n_startup_trials if self.n_startup_trials is not None else max(1, min(10, n_trials // 3))
        return optuna.samplers.TPESampler(
            multivariate=True,
            seed=seed,
            n_startup_trials=startup,
            # With trials running side by side, count the running ones as bad results so that the workers
            # do not all sample next to the same promising point (Optuna's advice for parallel TPE).
            constant_liar=self.n_workers > 1,
        )


_SETTINGS_RULES = {
    "pruner": OneOf(("median", "hyperband", "none")),
    "pruner_startup_trials": Integer(0, N_TRIALS.high),
    "n_startup_trials": Integer(0, N_TRIALS.high, optional=True),
    "heartbeat_interval": Integer(1, 3600),
    "grace_period": Integer(1, 86_400),  # a day: a trial process silent longer than that is gone
    "seed": SEED,
    "n_workers": Integer(1, 1024),
}


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
            validation=tuple(Example(**e) for e in data["validation"]),
        )


class TrialWorkers(Protocol):
    """Starts trial workers somewhere and returns once the study holds job.n_trials finished trials (or the
    workers gave up). The default runs them as local processes (`run_pool`); KubernetesWorkers as pods."""

    def run_trials(self, spec: Path, job: SearchJob, *, storage_url: str, print_fn: Callable[[str], None]) -> None:
        ...
