"""Per-run configuration in the Dagster launchpad; each mirrors a core dataclass field for field.

The defaults are read from the core dataclasses, and a model validator builds the core dataclass, so a
bad value is refused with core's message (config, field, value, allowed range) as soon as Dagster builds
the config, before an asset body runs. The assets take the checked dataclass from `core()` (and, for the
LoRA search, `training()`, `space()` and `settings()`).

`check_run_config` applies the same classes to a whole run config when the run is submitted (the run
coordinator calls it), so a value core refuses never queues, and refuses any `resources` section.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from dagster import Config
from pydantic import ValidationError, model_validator

from frd_assets.core.config_checks import OneOf, check_value
from frd_assets.core.evaluation import EvaluationConfig
from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.held_out import HeldOutConfig
from frd_assets.core.lora.real_tasks import RealTaskConfig
from frd_assets.core.lora.search import N_TRIALS, SearchSettings, SearchSpace
from frd_assets.core.lora.trial import TrainingConfig
from frd_assets.core.names import (
    ADAPTER_EVALUATION,
    GENERATED_DATASET,
    LORA_ADAPTER,
    SEED_DATASET,
    VALIDATED_DATASET,
)
from frd_assets.core.validation import ValidationConfig

_HELD_OUT = HeldOutConfig()
_EVALUATION = EvaluationConfig()
_GENERATION = GenerationConfig()
_VALIDATION = ValidationConfig()
_TRAINING = TrainingConfig()
_SPACE = SearchSpace()
_SETTINGS = SearchSettings()
_REAL_TASKS = RealTaskConfig()


class SeedRunConfig(Config):
    """How seed_dataset sets tasks aside for evaluation (ignored when an evaluation set was uploaded)."""

    held_out_fraction: float = _HELD_OUT.held_out_fraction
    validation_fraction: float = _HELD_OUT.validation_fraction
    seed: int = _HELD_OUT.seed

    @model_validator(mode="after")
    def check_with_core(self) -> "SeedRunConfig":
        self.core()
        return self

    def core(self) -> HeldOutConfig:
        return HeldOutConfig(**self.model_dump())


class GenerationRunConfig(Config):
    num_instructions: int = _GENERATION.num_instructions
    seed_tasks_per_prompt: int = _GENERATION.seed_tasks_per_prompt
    generated_per_prompt: int = _GENERATION.generated_per_prompt
    prompts_per_round: int = _GENERATION.prompts_per_round
    max_rounds: int = _GENERATION.max_rounds
    novelty_threshold: float = _GENERATION.novelty_threshold
    embedding_dedup_threshold: Optional[float] = _GENERATION.embedding_dedup_threshold
    temperature: float = _GENERATION.temperature
    top_p: float = _GENERATION.top_p
    max_new_tokens_instructions: int = _GENERATION.max_new_tokens_instructions
    max_new_tokens_instance: int = _GENERATION.max_new_tokens_instance
    min_words: int = _GENERATION.min_words
    max_words: int = _GENERATION.max_words
    checkpoint_every: int = _GENERATION.checkpoint_every
    # "json": instances as schema-constrained JSON where the teacher can enforce a schema, else as text;
    # "text": only the 'Input: ... Output: ...' prompt and its parser
    instance_format: str = _GENERATION.instance_format
    seed: int = _GENERATION.seed
    # ISO 639-1 code the teacher writes in ("ru"); "": the language seed_dataset detected in the seed
    language: str = _GENERATION.language

    @model_validator(mode="after")
    def check_with_core(self) -> "GenerationRunConfig":
        self.core()
        return self

    def core(self) -> GenerationConfig:
        return GenerationConfig(**self.model_dump())


class ValidationRunConfig(Config):
    min_valid_records: int = _VALIDATION.min_valid_records
    min_valid_share: float = _VALIDATION.min_valid_share
    max_seed_rouge_l: float = _VALIDATION.max_seed_rouge_l
    max_seed_bleu: float = _VALIDATION.max_seed_bleu
    max_self_bleu: float = _VALIDATION.max_self_bleu
    max_pairwise_rouge_l: float = _VALIDATION.max_pairwise_rouge_l
    self_bleu_sample: int = _VALIDATION.self_bleu_sample
    max_instruction_words: int = _VALIDATION.max_instruction_words
    max_output_chars: int = _VALIDATION.max_output_chars
    near_duplicate_threshold: float = _VALIDATION.near_duplicate_threshold
    shingle_size: int = _VALIDATION.shingle_size
    num_perm: int = _VALIDATION.num_perm
    decontamination_ngram: int = _VALIDATION.decontamination_ngram
    min_judge_score: int = _VALIDATION.min_judge_score
    min_judge_score_mean: float = _VALIDATION.min_judge_score_mean
    seed: int = _VALIDATION.seed
    # ISO 639-1 code the records must be in ("ru"); "": the language seed_dataset detected in the seed
    language: str = _VALIDATION.language

    @model_validator(mode="after")
    def check_with_core(self) -> "ValidationRunConfig":
        self.core()
        return self

    def core(self) -> ValidationConfig:
        return ValidationConfig(**self.model_dump())


class LoraRunConfig(Config):
    """TrainingConfig, SearchSpace, RealTaskConfig and the sampler/pruner/worker fields of SearchSettings, plus
    two overrides."""

    base_model: Optional[str] = None  # overrides LORA_MODEL_NAME for this run
    n_trials: Optional[int] = None  # overrides LORA_N_TRIALS for this run
    # Trial processes at once, each trial in a fresh one; overrides LORA_N_WORKERS (default 1) for this run.
    n_workers: Optional[int] = None
    epochs: int = _TRAINING.epochs
    batch_size: int = _TRAINING.batch_size
    max_length: int = _TRAINING.max_length
    eval_fraction: float = _TRAINING.eval_fraction
    evals_per_trial: int = _TRAINING.evals_per_trial
    lora_dropout: float = _TRAINING.lora_dropout
    # ["all-linear"] (the default, every linear layer but the output head), module names, or null for
    # peft's per-architecture default (q_proj and v_proj on Llama).
    target_modules: Optional[list[str]] = ["all-linear"]
    weight_decay: float = _TRAINING.weight_decay
    # Evaluations without a new best validation loss before a trial stops early; 0: never.
    early_stopping_patience: int = _TRAINING.early_stopping_patience
    # Examples per forward pass (batch_size is per optimizer step); null: batch_size, no accumulation.
    micro_batch_size: Optional[int] = _TRAINING.micro_batch_size
    # "auto" (bf16 on a GPU that has it, else fp32), "bf16" or "fp32": the base weights' dtype.
    precision: str = _TRAINING.precision
    # null: on for a GPU, off on a CPU.
    gradient_checkpointing: Optional[bool] = _TRAINING.gradient_checkpointing
    quantization: str = _TRAINING.quantization  # "none" or "nf4" (QLoRA)
    lr_scheduler: str = _TRAINING.lr_scheduler  # "cosine" or "constant", after the warmup
    warmup_ratio: float = _TRAINING.warmup_ratio
    # The user's seed tasks (not held out) join the training data, each seed_task_weight times.
    include_seed_tasks: bool = _REAL_TASKS.include_seed_tasks
    seed_task_weight: int = _REAL_TASKS.seed_task_weight
    # "real_tasks": the search minimises the validation tasks' loss (teacher text where the seed has none);
    # "teacher_text": the loss on a split of the generated records.
    objective: str = _REAL_TASKS.objective
    rank_min: int = _SPACE.rank_min
    rank_max: int = _SPACE.rank_max
    alpha_min: int = _SPACE.alpha_min
    alpha_max: int = _SPACE.alpha_max
    lr_min: float = _SPACE.lr_min
    lr_max: float = _SPACE.lr_max
    pruner: str = _SETTINGS.pruner
    pruner_startup_trials: int = _SETTINGS.pruner_startup_trials
    n_startup_trials: Optional[int] = _SETTINGS.n_startup_trials
    seed: int = _TRAINING.seed

    @model_validator(mode="after")
    def check_with_core(self) -> "LoraRunConfig":
        check_value("lora_adapter config", "n_trials", self.n_trials, dataclasses.replace(N_TRIALS, optional=True))
        self.training()
        self.space()
        self.settings()
        self.real_tasks()
        return self

    def training(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            eval_fraction=self.eval_fraction,
            evals_per_trial=self.evals_per_trial,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            weight_decay=self.weight_decay,
            early_stopping_patience=self.early_stopping_patience,
            micro_batch_size=self.micro_batch_size,
            precision=self.precision,
            gradient_checkpointing=self.gradient_checkpointing,
            quantization=self.quantization,
            lr_scheduler=self.lr_scheduler,
            warmup_ratio=self.warmup_ratio,
            seed=self.seed,
        )

    def real_tasks(self) -> RealTaskConfig:
        return RealTaskConfig(include_seed_tasks=self.include_seed_tasks, seed_task_weight=self.seed_task_weight,
                              objective=self.objective)

    def space(self) -> SearchSpace:
        return SearchSpace(
            rank_min=self.rank_min,
            rank_max=self.rank_max,
            alpha_min=self.alpha_min,
            alpha_max=self.alpha_max,
            lr_min=self.lr_min,
            lr_max=self.lr_max,
        )

    def settings(self, *, default_workers: int = _SETTINGS.n_workers) -> SearchSettings:
        """The search settings; n_workers is this run's, else default_workers (the resource's LORA_N_WORKERS)."""
        return SearchSettings(
            pruner=self.pruner,
            pruner_startup_trials=self.pruner_startup_trials,
            n_startup_trials=self.n_startup_trials,
            seed=self.seed,
            n_workers=default_workers if self.n_workers is None else self.n_workers,
        )


class EvaluationRunConfig(Config):
    """EvaluationConfig, plus the base-model override and how hard the adapter_beats_base check fails."""

    base_model: Optional[str] = None  # default: the base model lora_adapter recorded in its version
    max_new_tokens: int = _EVALUATION.max_new_tokens
    batch_size: int = _EVALUATION.batch_size
    bootstrap_samples: int = _EVALUATION.bootstrap_samples
    limit: Optional[int] = _EVALUATION.limit
    seed: int = _EVALUATION.seed
    # WARN reports an adapter that does not help; ERROR marks the check failed so a deployment can refuse to
    # publish it (a failed ERROR check blocks anything downstream of adapter_evaluation).
    check_severity: str = "WARN"

    @model_validator(mode="after")
    def check_with_core(self) -> "EvaluationRunConfig":
        self.core()
        check_value("evaluation run config", "check_severity", self.check_severity, OneOf(("WARN", "ERROR")))
        return self

    def core(self) -> EvaluationConfig:
        return EvaluationConfig(**self.model_dump(exclude={"base_model", "check_severity"}))


# The run config class of each asset (its `config` parameter; test_coordinator holds the two equal).
RUN_CONFIGS: dict[str, type[Config]] = {
    SEED_DATASET: SeedRunConfig,
    GENERATED_DATASET: GenerationRunConfig,
    VALIDATED_DATASET: ValidationRunConfig,
    LORA_ADAPTER: LoraRunConfig,
    ADAPTER_EVALUATION: EvaluationRunConfig,
}


class RunConfigRefused(ValueError):
    """A run config that must not run: it sets resources, or a value core refuses; the message says which."""


def check_run_config(run_config: Mapping[str, Any], *, run: str = "run") -> None:
    """Refuses a run config that sets any resource, or whose config for an asset core would refuse.

    Resources are the deployment's settings (store, teacher endpoint and key, judge, study storage, read
    from the code location's environment): a run config that set them could point a worker at any folder
    or endpoint it can reach, and an override of one field silently resets the resource's others. Each
    asset's config is checked by building the very class the asset builds, so every check core has, now
    or later, holds at submission and not hours later when the step starts."""
    resources = run_config.get("resources")
    if resources:
        raise RunConfigRefused(
            f"{run}: run config sets resources.{sorted(resources)[0]}; resources (store, teacher, judge, study "
            "storage) are the deployment's settings, not run config: remove the 'resources' section and set "
            "them in the code location's environment"
        )
    for op, body in (run_config.get("ops") or {}).items():
        cls = RUN_CONFIGS.get(op)
        if cls is None or not isinstance(body, Mapping):
            continue
        try:
            cls(**(body.get("config") or {}))
        except ValidationError as exc:
            error = exc.errors()[0]
            cause = (error.get("ctx") or {}).get("error")
            where = ".".join(str(part) for part in error.get("loc", ()))
            detail = str(cause) if cause is not None else f"{where}: {error['msg']}" if where else error["msg"]
            raise RunConfigRefused(f"{run}: ops.{op}.config refused: {detail}") from None
