"""The memory pre-flight: an estimate of a trial's peak memory before any trial runs, what the device has
free, and what to do when one exceeds the other; and the measured peak of each trial, to compare.

Without it, the first sign that a model does not fit is a trial that dies of OOM, after the model loaded.
The estimate is the sum of what a LoRA trial holds at its peak (the backward pass of the first, longest
batch):

- the base weights: parameters x 2 bytes in bf16, 4 in fp32; in NF4 the decoder's linear weights take
  half a byte plus the double-quantized scales (1 byte per 64 weights, 4 per 64 x 256), and everything
  else (embeddings, norms, the output layer) is fp32 after peft's k-bit preparation;
- the LoRA parameters: fp32 weight, gradient and AdamW's two moments, 16 bytes each;
- the activations kept for the backward pass, per layer and token: about 14 x hidden + 5 x intermediate
  values in a Llama-style layer with LoRA on its linear layers (normed inputs, q/k/v, attention output,
  the MLP's gate, up, activation and product), plus LoRA dropout's copies of each adapted input. With
  gradient checkpointing each layer keeps only its input and one layer at a time is recomputed;
- the logits of the micro-batch and what the loss derives from them (their fp32 copy, log-softmax and
  its gradient): tokens x vocabulary x (activation bytes + 12);
- on a CPU the measured peak is the process's resident memory, so the Python runtime and its libraries
  count too (RUNTIME_BYTES); on a GPU a margin for the allocator's fragmentation and cuBLAS workspaces;
- on a CPU with checkpointing, what glibc's heap keeps of the recomputed layers: each layer's activations
  are allocated and freed again in the backward pass, in blocks under glibc's dynamic mmap threshold (up to
  32 MiB), and the freed blocks stay resident. Measured on SmolLM2-135M (batch 4 x 169 tokens): live peak
  1,479 MiB (with MALLOC_MMAP_THRESHOLD_ at 64 KiB, which returns every freed block but trains 40% slower),
  resident 2,161 to 2,747 MiB as the process runs by default, against 1,893 without this term: up to 0.57
  of what checkpointing saves on paper, so CPU_RECOMPUTE_SLACK of it is counted.

It is deliberately an upper bound on what it models: every sequence counted at the longest example's
length, as the first batch holds the longest examples (core/lora/data.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frd_assets.core.lora.precision import cuda_has_bf16, resolve_precision, uses_checkpointing

GIB = 2**30
# A CPU trial process's resident memory before any model: Python, torch, transformers and peft imported.
RUNTIME_BYTES = 700 * 2**20
GPU_MARGIN = 0.08  # of the estimate, plus GPU_FIXED_BYTES: allocator fragmentation, cuBLAS workspaces
GPU_FIXED_BYTES = 512 * 2**20
CPU_RECOMPUTE_SLACK = 0.6  # of the activations checkpointing saves on paper: glibc's retained heap (above)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weight, 8-bit absmax per block of 64, fp32 per 256 blocks


class MemoryPlanError(ValueError):
    """A search whose trials cannot fit the memory at hand, in one line: the estimate and what would fit."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from its config (never from its weights)."""

    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int
    n_params: int  # every parameter once (tied embeddings once)
    n_quantizable: int  # parameters of the decoder's linear layers: what NF4 stores in 4 bits
    linear_dims: tuple[tuple[str, int, int], ...]  # (name, in, out) of every linear layer but the output layer
    model_type: str = ""

    def lora_params(self, rank: int, target_modules) -> int:
        return rank * sum(i + o for name, i, o in self.adapted(target_modules))

    def adapted(self, target_modules) -> list[tuple[str, int, int]]:
        """The linear layers LoRA goes on: all of them ("all-linear"), those named, or peft's default."""
        if target_modules == "all-linear":
            return list(self.linear_dims)
        if target_modules is None:
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

            target_modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(self.model_type, ())
        names = {target_modules} if isinstance(target_modules, str) else set(target_modules)
        return [d for d in self.linear_dims if d[0].rsplit(".", 1)[-1] in names or d[0] in names]


@functools.lru_cache(maxsize=8)
def _shape_from_json(config_json: str) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    config = AutoConfig.for_model(**data)
    with torch.device("meta"):  # shapes only: an 8B model is built in a second and takes no memory
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    linear = [(n, m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and m is not output]
    text = config.get_text_config()
    return ModelShape(
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        heads=text.num_attention_heads,
        n_params=sum(p.numel() for p in model.parameters()),
        n_quantizable=sum(i * o for _, i, o in linear),
        linear_dims=tuple(linear),
        model_type=config.model_type,
    )


def model_shape(config) -> ModelShape:
    """The shape of a transformers config (a model's .config, or AutoConfig.from_pretrained)."""
    data = config.to_dict()
    data.pop("quantization_config", None)  # the shape of the model, however its weights are stored
    return _shape_from_json(json.dumps(data, sort_keys=True, default=str))


def model_shape_of(name_or_path: str | None) -> ModelShape:
    """The shape of a model by name or folder, from its config.json alone (no weights are read)."""
    from transformers import AutoConfig

    from frd_assets.core.models import resolve_model

    return model_shape(AutoConfig.from_pretrained(resolve_model(name_or_path), trust_remote_code=False))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at a trial's peak, by what holds them."""

    weights: int
    lora: int  # LoRA weights, gradients and AdamW state
    activations: int
    logits: int
    overhead: int
    device_type: str
    micro_batch_size: int
    seq_len: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.logits + self.overhead

    def describe(self) -> str:
        parts = ", ".join(f"{k} {getattr(self, k) / GIB:.2f}" for k in ("weights", "lora", "activations", "logits",
                                                                        "overhead"))
        return f"{self.total / GIB:.2f} GiB ({parts})"


def estimate_peak(
    shape: ModelShape,
    *,
    weights: str,  # "bf16", "fp32" or "nf4"
    compute_bf16: bool,
    rank: int,
    target_modules,
    seq_len: int,
    micro_batch_size: int,
    checkpointing: bool,
    lora_dropout: float = 0.0,
    device_type: str = "cpu",
    attention: str = "sdpa",
) -> MemoryEstimate:
    """The estimated peak of one trial (see the module's docstring for each term)."""
    if weights == "nf4":
        weight_bytes = shape.n_quantizable * NF4_BYTES + (shape.n_params - shape.n_quantizable) * 4
    else:
        weight_bytes = shape.n_params * (2 if weights == "bf16" else 4)
    lora_bytes = shape.lora_params(rank, target_modules) * 16
    act = 2 if compute_bf16 or weights == "bf16" else 4
    h, i = shape.hidden, shape.intermediate
    per_token = 14 * h + 5 * i
    if lora_dropout > 0:  # peft's dropout makes a copy of the input of every adapted layer
        adapted = shape.adapted(target_modules)
        per_token += sum(d[1] for d in adapted) // max(1, shape.layers)
    tokens = micro_batch_size * seq_len
    layer = per_token * tokens * act
    if attention == "eager":  # the attention weights and their softmax, per head
        layer += 2 * shape.heads * seq_len * seq_len * micro_batch_size * act
    activations = (shape.layers * tokens * h * act + layer) if checkpointing else shape.layers * layer
    logits = tokens * shape.vocab * (act + 12)
    core = int(weight_bytes + lora_bytes + activations + logits)
    if device_type == "cpu":
        retained = CPU_RECOMPUTE_SLACK * (shape.layers * layer - activations) if checkpointing else 0
        overhead = int(RUNTIME_BYTES + retained)
    else:
        overhead = int(GPU_MARGIN * core + GPU_FIXED_BYTES)
    return MemoryEstimate(int(weight_bytes), lora_bytes, int(activations), logits, overhead, device_type,
                          micro_batch_size, seq_len)


def estimate_for_model(model, config, *, rank: int, micro_batch_size: int, checkpointing: bool,
                       seq_len: int | None = None) -> MemoryEstimate:
    """The estimate for a loaded base model (its dtype and quantization as loaded) and a training config."""
    import torch

    from frd_assets.core.lora.precision import is_quantized

    device_type = next(model.parameters()).device.type
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    weights = "nf4" if is_quantized(model) else ("bf16" if dtype == torch.bfloat16 else "fp32")
    return estimate_peak(
        model_shape(model.config), weights=weights, compute_bf16=cuda_has_bf16(device_type) and weights != "fp32",
        rank=rank, target_modules=config.target_modules, seq_len=seq_len or config.max_length,
        micro_batch_size=micro_batch_size, checkpointing=checkpointing, lora_dropout=config.lora_dropout,
        device_type=device_type, attention=getattr(model.config, "_attn_implementation", "sdpa") or "sdpa",
    )


def estimate_for_config(shape: ModelShape, config, *, rank: int, device_type: str, seq_len: int | None = None,
                        micro_batch_size: int | None = None) -> MemoryEstimate:
    """The estimate for a training config on a device, before any model is loaded."""
    precision = resolve_precision(config.precision, device_type)
    weights = "nf4" if config.quantization == "nf4" else precision
    micro = micro_batch_size or config.forward_batch_size
    return estimate_peak(
        shape, weights=weights, compute_bf16=precision == "bf16", rank=rank, target_modules=config.target_modules,
        seq_len=seq_len or config.max_length, micro_batch_size=micro,
        checkpointing=uses_checkpointing(config.gradient_checkpointing, device_type),
        lora_dropout=config.lora_dropout, device_type=device_type,
    )


def _cgroup_free() -> int | None:
    """What this process's cgroup (v2) may still take: its memory.max less memory.current; None: no limit."""
    try:
        root = Path("/sys/fs/cgroup")
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory(device: str) -> int:
    """Bytes a trial may use: a GPU's free memory, or the RAM available to this process (the smaller of the
    kernel's MemAvailable and what the cgroup limit leaves)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    group = _cgroup_free()
    return min(free, group) if group is not None else free


@dataclass(frozen=True)
class MemoryPlan:
    config: object  # the TrainingConfig to train with: micro_batch_size lowered where that was needed
    estimate: MemoryEstimate
    available: int
    note: str


def plan_memory(shape: ModelShape, config, *, rank: int, device: str, available: int, seq_len: int | None = None,
                print_fn: Callable[[str], None] = print) -> MemoryPlan:
    """The training config whose trials fit `available` bytes: as given, or with a smaller micro-batch and
    more accumulation (the effective batch, batch_size, is kept). MemoryPlanError when even a micro-batch
    of 1 does not fit; it names the estimate and the first change that would fit."""
    device_type = device.split(":")[0]
    where = f"{available / GIB:.2f} GiB free on {device}"

    def estimate(cfg, micro=None):
        return estimate_for_config(shape, cfg, rank=rank, device_type=device_type, seq_len=seq_len,
                                   micro_batch_size=micro)

    first = estimate(config)
    if first.total <= available:
        return MemoryPlan(config, first, available, f"memory pre-flight: estimated peak {first.describe()}, {where}")
    micro = first.micro_batch_size
    while micro > 1:
        micro = max(1, micro // 2)
        shrunk = estimate(config, micro)
        if shrunk.total <= available:
            steps = math.ceil(config.batch_size / micro)
            note = (f"memory pre-flight: micro-batch {first.micro_batch_size} would need {first.total / GIB:.2f} GiB "
                    f"of the {where}; training {micro} examples a pass, {steps} passes a step (effective batch "
                    f"{config.batch_size} kept), estimated peak {shrunk.describe()}")
            print_fn(note)
            return MemoryPlan(dataclasses.replace(config, micro_batch_size=micro), shrunk, available, note)
    smallest = estimate(config, 1)
    tries = []
    if not uses_checkpointing(config.gradient_checkpointing, device_type):
        tries.append(("gradient_checkpointing true", dataclasses.replace(config, gradient_checkpointing=True)))
    if config.quantization != "nf4":
        tries.append(('quantization "nf4"', dataclasses.replace(config, quantization="nf4")))
        if tries[0][0].startswith("gradient"):
            tries.append(('gradient_checkpointing true and quantization "nf4"',
                          dataclasses.replace(config, gradient_checkpointing=True, quantization="nf4")))
    length = seq_len or config.max_length
    while length > 64:
        length //= 2
        tries.append((f"max_length {length}", dataclasses.replace(config, max_length=length)))
    fits = ""
    for label, cfg in tries:
        e = estimate_for_config(shape, cfg, rank=rank, device_type=device_type,
                                seq_len=min(seq_len or cfg.max_length, cfg.max_length), micro_batch_size=1)
        if e.total <= available:
            fits = f"; would fit: {label} (micro-batch 1, {e.total / GIB:.2f} GiB)"
            break
    raise MemoryPlanError(
        f"memory pre-flight: a trial at rank {rank}, micro-batch 1, {smallest.seq_len} tokens needs an estimated "
        f"{smallest.describe()}, more than the {where}{fits or '; nothing tried fits: use a smaller model'}"
    )


class PeakMemory:
    """The peak memory of what runs from its creation on: a GPU's max_memory_allocated, or on a CPU the
    process's peak resident memory (VmHWM, reset through /proc/self/clear_refs where Linux allows it, so
    that one process can measure trial after trial; else the process's peak so far)."""

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def measured(self) -> int:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM where there is /proc, not ru_maxrss: Linux carries the
    parent's peak into a child's ru_maxrss across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
