"""Per-run configuration in the Dagster launchpad; each mirrors a core dataclass field for field."""

from __future__ import annotations

from typing import Optional

from dagster import Config

from frd_assets.core.lora.search import SearchSettings, SearchSpace
from frd_assets.core.lora.trial import TrainingConfig


class GenerationRunConfig(Config):
    num_instructions: int = 20
    seed_tasks_per_prompt: int = 6
    generated_per_prompt: int = 2
    prompts_per_round: int = 8
    max_rounds: int = 10
    novelty_threshold: float = 0.7
    embedding_dedup_threshold: Optional[float] = None
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens_instructions: int = 160
    max_new_tokens_instance: int = 160
    min_words: int = 3
    max_words: int = 150
    checkpoint_every: int = 5
    seed: int = 0


class ValidationRunConfig(Config):
    min_valid_records: int = 4
    min_valid_share: float = 0.5
    max_seed_rouge_l: float = 0.7
    max_seed_bleu: float = 50.0
    max_self_bleu: float = 60.0
    max_pairwise_rouge_l: float = 0.5
    self_bleu_sample: int = 100
    max_instruction_words: int = 150
    max_output_chars: int = 8000
    seed: int = 0


class LoraRunConfig(Config):
    base_model: Optional[str] = None  # overrides LORA_MODEL_NAME for this run
    n_trials: Optional[int] = None  # overrides LORA_N_TRIALS for this run
    epochs: int = 2
    batch_size: int = 4
    max_length: int = 256
    eval_fraction: float = 0.2
    evals_per_trial: int = 2
    lora_dropout: float = 0.05
    target_modules: Optional[list[str]] = None
    rank_min: int = 4
    rank_max: int = 64
    alpha_min: int = 4
    alpha_max: int = 128
    lr_min: float = 1e-5
    lr_max: float = 5e-3
    pruner: str = "median"
    n_startup_trials: Optional[int] = None
    seed: int = 0

    def training(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            eval_fraction=self.eval_fraction,
            evals_per_trial=self.evals_per_trial,
            lora_dropout=self.lora_dropout,
            target_modules=tuple(self.target_modules) if self.target_modules else None,
            seed=self.seed,
        )

    def space(self) -> SearchSpace:
        return SearchSpace(self.rank_min, self.rank_max, self.alpha_min, self.alpha_max, self.lr_min, self.lr_max)

    def settings(self) -> SearchSettings:
        return SearchSettings(pruner=self.pruner, n_startup_trials=self.n_startup_trials, seed=self.seed)
