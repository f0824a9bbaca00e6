"""One LoRA training trial: a plain torch loop over a peft model, returning a result, never raising OOM."""

from __future__ import annotations

import gc
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from frd_assets.core.config_checks import SEED, Boolean, Integer, Names, Number, OneOf, _Refused, check_fields
from frd_assets.core.lora.data import Example, batches, collate, example_batches, loss_tokens
from frd_assets.core.lora.precision import (
    CHECKPOINT_KWARGS,
    cuda_has_bf16,
    is_quantized,
    resolve_precision,
    uses_checkpointing,
)


@dataclass(frozen=True)
class LoraHyperparams:
    rank: int
    lora_alpha: int
    learning_rate: float

    def __post_init__(self) -> None:
        check_fields(self, "LoRA hyperparameters", _HYPERPARAM_RULES)


# A rank above a model's hidden size adds nothing (the largest today's are 16,384 wide); alpha is usually
# one to two times the rank.
RANK = Integer(1, 16_384)
LORA_ALPHA = Integer(1, 65_536)

_HYPERPARAM_RULES = {
    "rank": RANK,
    "lora_alpha": LORA_ALPHA,
    "learning_rate": Number(0, 1, low_open=True, high_open=True),
}


ALL_LINEAR = "all-linear"  # peft's name for every linear layer except the output layer


@dataclass(frozen=True)
class _TargetModules:
    """peft's "all-linear", a non-empty list of module names (stored as a tuple), or None.

    ["all-linear"] is taken as "all-linear": a launchpad field typed as a list of names can carry it, and
    peft would read it as a module called "all-linear" and find none. Mixed with other names it is refused.
    """

    allowed = f'"{ALL_LINEAR}", a non-empty list of module names such as ["q_proj", "v_proj"], or null'

    def check(self, value):
        if value == ALL_LINEAR:
            return value
        try:
            names = Names('["q_proj", "v_proj"]', optional=True).check(value)
        except _Refused:
            raise _Refused(self.allowed) from None
        if names is not None and ALL_LINEAR in names:
            if len(names) > 1:
                raise _Refused(f'"{ALL_LINEAR}" alone or module names without it')
            return ALL_LINEAR
        return names


PRECISIONS = ("auto", "bf16", "fp32")
QUANTIZATIONS = ("none", "nf4")
LR_SCHEDULERS = ("cosine", "constant")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 2
    batch_size: int = 4  # examples per optimizer step: the effective batch
    # Examples per forward pass; batch_size / micro_batch_size passes accumulate into one step. None: all of
    # batch_size at once. The memory pre-flight (core/lora/memory.py) lowers it when a batch would not fit.
    micro_batch_size: int | None = None
    max_length: int = 256  # tokens per example, prompt and response together
    eval_fraction: float = 0.2
    evals_per_trial: int = 2  # eval-loss reports per trial, which the pruner reads
    lora_dropout: float = 0.05
    # Which layers get LoRA: "all-linear" (every linear layer but the output head; QLoRA, Dettmers et al.
    # 2023, found that needed to match full fine-tuning), a list of module names such as ["q_proj",
    # "v_proj"], or None for peft's per-architecture default (q_proj and v_proj on Llama).
    target_modules: str | tuple[str, ...] | None = ALL_LINEAR
    weight_decay: float = 0.0
    # Evaluations in a row without a new best validation loss before a trial stops (and takes back its best
    # weights: core/lora/early_stopping.py); 0: never. Only with validation tasks to read.
    early_stopping_patience: int = 2
    # The base weights' dtype: "auto" is bf16 on a GPU that has it, else fp32; the LoRA weights and the
    # optimizer state stay fp32 either way (core/lora/precision.py).
    precision: str = "auto"
    # Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant);
    # None: on for a GPU, off on a CPU.
    gradient_checkpointing: bool | None = None
    quantization: str = "none"  # "nf4": QLoRA's 4-bit base (bitsandbytes), NF4 with double quantization
    # Learning rate: a linear warmup over this share of the steps, then cosine decay to 0 (axolotl's and
    # LLaMA-Factory's recipe) or constant.
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    seed: int = 0

    @property
    def forward_batch_size(self) -> int:
        """Examples per forward pass: micro_batch_size where set (never above batch_size), else batch_size."""
        return min(self.micro_batch_size or self.batch_size, self.batch_size)

    def __post_init__(self) -> None:
        check_fields(self, "training config", _TRAINING_RULES)


_TRAINING_RULES = {
    "epochs": Integer(1, 1000),
    "batch_size": Integer(1, 4096),
    "max_length": Integer(8, 131_072),  # fewer tokens cannot hold a chat-formatted prompt and a response
    "eval_fraction": Number(0, 1, low_open=True, high_open=True),  # each split needs at least one record
    "evals_per_trial": Integer(1, 1000),
    "lora_dropout": Number(0, 1, high_open=True),
    "target_modules": _TargetModules(),
    "weight_decay": Number(0, 1),
    "early_stopping_patience": Integer(0, 1000),  # as evals_per_trial: more evaluations than that never happen
    "micro_batch_size": Integer(1, 4096, optional=True),
    "precision": OneOf(PRECISIONS),
    "gradient_checkpointing": Boolean(optional=True),
    "quantization": OneOf(QUANTIZATIONS),
    "lr_scheduler": OneOf(LR_SCHEDULERS),
    "warmup_ratio": Number(0, 1, high_open=True),
    "seed": SEED,
}


@dataclass
class TrialResult:
    status: Literal["ok", "pruned", "oom", "failed"]
    eval_loss: float | None
    steps: int = 0
    train_tokens: int = 0
    seconds: float = 0.0
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""
    target_modules: str | list[str] | None = None  # the setting, as TrainingConfig had it
    adapted_modules: list[str] = field(default_factory=list)  # what peft made of it: module names, sorted
    # With validation tasks: their loss (what the search minimises), its history, and early stopping's record.
    validation_loss: float | None = None
    validation_history: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False  # patience ran out before the last step
    best_step: int | None = None  # the step whose weights the trial kept (the best validation loss)
    # How it trained: base weights' dtype ("bf16", "fp32" or "nf4"), checkpointing, examples per forward pass.
    weights: str = ""
    gradient_checkpointing: bool = False
    micro_batch_size: int = 0
    # The memory pre-flight's estimate of this trial's peak and the peak measured (MiB): the GPU's
    # max_memory_allocated, or on a CPU the process's peak RSS (core/lora/memory.py).
    memory_estimate_mb: float | None = None
    peak_memory_mb: float | None = None

    @property
    def objective_loss(self) -> float | None:
        """What the search minimises: the validation loss where there are validation tasks, else the eval loss."""
        return self.validation_loss if self.validation_history else self.eval_loss

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def evaluate_loss(model, examples: Sequence[Example], *, batch_size: int, pad_id: int) -> float:
    """Mean cross-entropy per response token over the whole eval split.

    Each batch's mean is weighted by its response tokens, so the figure does not depend on how the split
    is cut into batches (length-sorted here, to pad less): only float rounding differs.
    """
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches(examples, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            n_tokens = int((batch["labels"][:, 1:] != -100).sum())
            if n_tokens == 0:
                continue
            loss = model(**batch).loss  # mean over this batch's response tokens
            total += float(loss) * n_tokens
            count += n_tokens
    model.train()
    return total / count if count else float("nan")


def _peft_target_modules(setting: str | tuple[str, ...] | None) -> str | list[str] | None:
    return list(setting) if isinstance(setting, tuple) else setting


def adapted_module_names(peft_model) -> list[str]:
    """The kinds of module LoRA was put on (q_proj, down_proj, ...), sorted: peft expands "all-linear" into
    every matching module's full path, one per layer, which says the same thing forty times."""
    expanded = peft_model.peft_config[peft_model.active_adapter].target_modules
    names = [expanded] if isinstance(expanded, str) else list(expanded or ())
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def warmup_steps(config: TrainingConfig, total_steps: int) -> int:
    """Warmup steps as HF Trainer counts them from a ratio: rounded up, so any ratio above 0 warms up."""
    return math.ceil(config.warmup_ratio * total_steps)


def make_optimizer(params, hp: LoraHyperparams, config: TrainingConfig, *, total_steps: int, device_type: str):
    """AdamW (fused into one kernel on a GPU, where torch has it) and the learning-rate schedule."""
    import torch
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    fused = {"fused": True} if device_type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=config.weight_decay, **fused)
    warmup = warmup_steps(config, total_steps)
    if config.lr_scheduler == "cosine":
        schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    else:
        schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return optimizer, schedule


def accumulate_gradients(model, examples: Sequence[Example], *, micro_batch_size: int, pad_id: int, device,
                         autocast_bf16: bool = False) -> float:
    """Forward and backward passes over one optimizer step's examples, micro_batch_size at a time, leaving
    the gradient of the whole batch's loss; returns that loss.

    The model's loss is a mean over each pass's response tokens, so each pass is weighted by its share of
    the batch's tokens: the sum is then the mean over the whole batch, the same loss (and gradient, within
    float rounding) as one pass over all of it, however unevenly the tokens fall between passes.
    """
    import torch

    total = sum(loss_tokens(e) for e in examples)
    batch_loss = 0.0
    for start in range(0, len(examples), micro_batch_size):
        part = examples[start : start + micro_batch_size]
        share = sum(loss_tokens(e) for e in part) / total if total else 0.0
        if share == 0:
            continue  # nothing of the loss here: a pass would add a NaN (mean of no tokens) to the gradient
        batch = {k: v.to(device) for k, v in collate(part, pad_id).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(**batch).loss * share
        loss.backward()
        batch_loss += float(loss.detach())
    return batch_loss


class Pruned(Exception):
    """Raised by a report callback to stop a trial early; the trial result says 'pruned'."""


def run_trial(
    base_model,
    train: Sequence[Example],
    evals: Sequence[Example],
    hp: LoraHyperparams,
    config: TrainingConfig,
    *,
    pad_id: int,
    report: Callable[[int, float], None] | None = None,
    save_dir: Path | None = None,
    print_fn: Callable[[str], None] = print,
    validation: Sequence[Example] = (),
) -> TrialResult:
    """Trains LoRA on base_model, evaluates, optionally saves the adapter, and leaves base_model unchanged.

    With validation examples (the user's validation tasks) each evaluation measures them too; `report` gets
    their loss instead of the eval loss, the trial stops early on it and keeps its best weights."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from frd_assets.core.lora.early_stopping import EarlyStopping
    from frd_assets.core.lora.memory import PeakMemory, estimate_for_model

    torch.manual_seed(config.seed)
    # peft calls a transformers property that transformers 5 renamed; the warning is theirs, not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    device = next(base_model.parameters()).device
    checkpointing = uses_checkpointing(config.gradient_checkpointing, device.type)
    quantized = is_quantized(base_model)
    micro_batch = config.forward_batch_size
    estimate = estimate_for_model(base_model, config, rank=hp.rank, micro_batch_size=micro_batch,
                                  checkpointing=checkpointing, seq_len=max(len(e.input_ids) for e in train))
    peak = PeakMemory(device)  # from here: what the trial adds to a process that holds the model already
    if quantized:
        # Casts the norms and embeddings to fp32 and makes the inputs require grads, as QLoRA needs.
        prepare_model_for_kbit_training(base_model, use_gradient_checkpointing=checkpointing,
                                        gradient_checkpointing_kwargs=CHECKPOINT_KWARGS)
    elif checkpointing:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINT_KWARGS)
        base_model.enable_input_require_grads()  # peft's frozen embeddings would give the checkpoints no grad
    lora_config = LoraConfig(
        r=hp.rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_peft_target_modules(config.target_modules),
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype (peft's default): LoRA weights in fp32 over a bf16 base, so their optimizer
    # state is fp32 too.
    model = get_peft_model(base_model, lora_config, autocast_adapter_dtype=True)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer, schedule = make_optimizer(params, hp, config, total_steps=total_steps, device_type=device.type)
    eval_every = max(1, total_steps // config.evals_per_trial)
    base_dtype = next((p.dtype for p in base_model.parameters() if p.is_floating_point() and not p.requires_grad),
                      torch.float32)
    result = TrialResult(
        status="ok",
        eval_loss=None,
        target_modules=_peft_target_modules(config.target_modules),
        adapted_modules=adapted_module_names(model),
        weights="nf4" if quantized else ("bf16" if base_dtype == torch.bfloat16 else "fp32"),
        gradient_checkpointing=checkpointing,
        micro_batch_size=micro_batch,
        memory_estimate_mb=round(estimate.total / 2**20, 1),
    )
    # bf16 autocast over a bf16 base (or an NF4 one computing in bf16) on a GPU: the fp32 LoRA matmuls run in
    # bf16 too.
    use_bf16 = cuda_has_bf16(device.type) and (
        base_dtype == torch.bfloat16 or (quantized and resolve_precision(config.precision, device.type) == "bf16"))
    stopper = EarlyStopping(config.early_stopping_patience)

    def measure(peft_model, step: int) -> float:
        """Evaluates at this step; returns the figure the search reads (validation loss where there is one)."""
        # Micro-batches: what the pre-flight found to fit (the loss does not depend on how the split is cut).
        ev = evaluate_loss(peft_model, evals, batch_size=micro_batch, pad_id=pad_id)
        result.eval_history.append((step, ev))
        if not validation:
            return ev
        val = evaluate_loss(peft_model, validation, batch_size=micro_batch, pad_id=pad_id)
        result.validation_history.append((step, val))
        stopper.update(peft_model, step, val)
        return val

    t0 = time.perf_counter()
    try:
        model.train()
        step = 0
        for epoch in range(config.epochs):
            if stopper.should_stop:
                break
            for group in example_batches(train, config.batch_size, shuffle_seed=config.seed + epoch):
                loss = accumulate_gradients(model, group, micro_batch_size=micro_batch, pad_id=pad_id,
                                            device=device, autocast_bf16=use_bf16)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.steps = step
                result.train_tokens += sum(len(e.input_ids) for e in group)
                if step % eval_every == 0 and step < total_steps:
                    figure = measure(model, step)
                    shown = f", validation loss {figure:.4f}" if validation else ""
                    print_fn(f"  step {step}/{total_steps}: train loss {loss:.4f}, "
                             f"eval loss {result.eval_history[-1][1]:.4f}{shown}")
                    if report:
                        report(step, figure)
                    if stopper.should_stop:
                        result.stopped_early = True
                        print_fn(f"  stopped early at step {step}: validation loss not below {stopper.best_loss:.4f} "
                                 f"(step {stopper.best_step}) for {stopper.patience} evaluations")
                        break
        result.seconds = time.perf_counter() - t0
        if not result.stopped_early:
            measure(model, step)
        result.eval_loss = result.eval_history[-1][1]
        if validation:
            # Keep the best evaluation's weights, and report that evaluation's figures: they are the adapter's.
            stopper.restore_best(model)
            result.best_step = stopper.best_step
            best = dict(result.validation_history)
            result.validation_loss = best.get(stopper.best_step, result.validation_history[-1][1])
            result.eval_loss = dict(result.eval_history).get(stopper.best_step, result.eval_loss)
        if save_dir is not None:
            model.save_pretrained(str(save_dir), safe_serialization=True)
    except Pruned:
        result.status = "pruned"
        result.eval_loss = result.eval_history[-1][1] if result.eval_history else None
        result.validation_loss = result.validation_history[-1][1] if result.validation_history else None
    except torch.OutOfMemoryError as exc:
        # Keep what was learned so far: the search records the trial as failed, not the whole run.
        result.status, result.error = "oom", str(exc)[:500]
    finally:
        result.seconds = result.seconds or time.perf_counter() - t0
        result.peak_memory_mb = round(peak.measured() / 2**20, 1)
        stopper.release()
        model.unload()  # takes the LoRA layers out again; base weights were never changed
        if checkpointing:
            base_model.gradient_checkpointing_disable()
            base_model.disable_input_require_grads()
        del model, optimizer, schedule, params
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result
