"""Merges a LoRA adapter into its base model's weights, and publishes the merged model only once its greedy
outputs are shown to equal the adapter's.

`PeftModel.merge_and_unload` folds scale * B @ A into every adapted weight, so the merged model needs
neither peft nor the adapter at inference: vLLM, TGI or a GGUF conversion take it as a plain model. A merge
can go wrong without any error (a wrong scale, a layer merged twice, the wrong object saved, a base model
other than the adapter's), so the export proves itself, in two named phases:

1. `merge_to_staging`: load base + adapter, record the adapter's greedy outputs on N prompts, merge, and
   save the merged model and its tokenizer to a staging folder beside the target (same file system, so
   the final rename is atomic).
2. `publish_if_identical`: reload the staging folder from disk the way a user will, generate the same
   greedy outputs, compare them token for token, and only then rename staging to the target (which must
   be new, empty or an earlier export: core/output_dirs.py). On any
   mismatch the staging folder is deleted and MergeMismatch is raised: the target is never created, so
   no folder that looks exported exists unless it passed the check.

The prompts are the bundled sample seed's instructions in the very text the adapter was trained on
(`chat_format.prompt_text`). The merge is into the full-precision base, never a quantized one: an adapter
trained on a 4-bit NF4 base (QLoRA) merges into the bf16 base on a GPU that has bf16, else the fp32 one,
and the greedy check compares the merged model with the adapter on that same base; a base model stored
quantized is refused, since folding LoRA into 4-bit weights rounds it away. Reading and writing are
safetensors only, without remote code. This module never imports Dagster.
"""

from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from frd_assets.core.chat_format import prompt_text
from frd_assets.core.config_checks import MAX_NEW_TOKENS, Integer, check_value
from frd_assets.core.lora.adapter import AdapterError, base_model_for_adapter, check_adapter_dir, load_adapter
from frd_assets.core.output_dirs import check_output_dir, publish_output_dir, staging_dir
from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes

# The command whose --out the export writes: the owner its output folder's marker names (core/output_dirs.py).
EXPORT_COMMAND = "frd export"
# The check's defaults: sample-seed prompts whose greedy outputs must match, and new tokens compared per prompt.
CHECK_PROMPTS = 20
CHECK_MAX_NEW_TOKENS = 32


class MergeMismatch(RuntimeError):
    """The merged model answers differently from the adapter it came from; nothing was published."""


@dataclass(frozen=True)
class MergeCheck:
    """Greedy outputs of the merged model compared with the adapter's, prompt by prompt."""

    total: int
    mismatched: tuple[int, ...]  # indices of the prompts whose outputs differ
    first_difference: str = ""  # where the first mismatch parts ways, for the error message

    @property
    def identical(self) -> int:
        return self.total - len(self.mismatched)

    @property
    def passed(self) -> bool:
        return not self.mismatched

    def summary(self) -> str:
        return f"{self.identical}/{self.total} greedy outputs identical"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    base_model: str
    check: MergeCheck


def check_prompts(tokenizer, n: int) -> list[str]:
    """The first n instructions of the bundled sample seed, rendered as the adapter saw them in training."""
    records = parse_seed(sample_seed_bytes(), SAMPLE_SEED)
    check_value("merged export", "prompts", n, Integer(1, len(records)))
    return [prompt_text(tokenizer, r) for r in records[:n]]


def greedy_token_ids(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8
) -> list[list[int]]:
    """Each prompt's greedy continuation as token ids, up to and including the first end-of-sequence token.

    Token ids, not decoded text, so that two outputs decoding to the same string still count as different.
    Prompts are batched by length and padded on the left by hand (a decoder-only model must see its new
    tokens right after the prompt), so both sides of a comparison see exactly the same batches.
    """
    import torch

    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    out: list[list[int]] = [[] for _ in encoded]
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                # Greedy: whatever sampling settings the model's generation_config carries are not used.
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        for row, i in enumerate(idx):
            new = generated[row, width:].tolist()
            stop = new.index(eos_id) + 1 if eos_id in new else len(new)
            out[i] = new[:stop]
    return out


def check_merged(
    reference: Sequence[Sequence[int]],
    merged_model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> MergeCheck:
    """Compares a merged model's greedy outputs with the adapter's (reference), prompt by prompt."""
    if len(reference) != len(prompts):
        raise ValueError(f"reference holds {len(reference)} outputs for {len(prompts)} prompts; give one per prompt")
    candidate = greedy_token_ids(merged_model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    mismatched = tuple(i for i, (a, b) in enumerate(zip(reference, candidate, strict=True))
                       if list(a) != list(b))
    first = ""
    if mismatched:
        i = mismatched[0]
        a, b = list(reference[i]), candidate[i]
        # Not strict: when one output is a prefix of the other, they part ways where the shorter ends.
        at = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        first = f"prompt {i} parts ways at new token {at}: adapter {a[at:at + 3]} vs merged {b[at:at + 3]}"
    return MergeCheck(total=len(prompts), mismatched=mismatched, first_difference=first)


def merge_to_staging(
    adapter_dir: Path,
    base_model: str,
    staging: Path,
    prompts: Sequence[str],
    *,
    tokenizer,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    dtype=None,
) -> list[list[int]]:
    """Phase 1: the unmerged adapter's greedy outputs (the reference), then the merged model saved to staging."""
    model = load_adapter(base_model, adapter_dir, device=device, dtype=dtype)
    reference = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    merged = model.merge_and_unload()  # folds the LoRA weights into the base weights, in place
    merged.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    return reference


def publish_if_identical(
    staging: Path,
    out_dir: Path,
    reference: Sequence[Sequence[int]],
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    dtype=None,
) -> MergeCheck:
    """Phase 2: reload staging from disk, compare with the reference, then rename it to out_dir or delete it.

    Raises MergeMismatch (staging deleted, out_dir neither created nor changed) when any output differs.
    """
    from frd_assets.core.models import load_causal_lm, load_tokenizer

    try:
        # Reloaded, not the model still in memory: what a user gets is what was written, tokenizer included.
        model = load_causal_lm(str(staging), device=device, dtype=dtype)
        check = check_merged(reference, model, load_tokenizer(str(staging)), prompts,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
        del model
        if not check.passed:
            raise MergeMismatch(
                f"the merged model differs from the adapter: {check.summary()} ({check.first_difference}); "
                f"nothing was written to {out_dir}. Check that --base-model is the model the adapter was "
                "trained on, and report the adapter if it is"
            )
        publish_output_dir(staging, out_dir, command=EXPORT_COMMAND)
        return check
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def merge_dtype(device: str):
    """bf16 on a GPU that has it (what the model is served in), else fp32."""
    import torch

    from frd_assets.core.lora.precision import cuda_has_bf16

    return torch.bfloat16 if cuda_has_bf16(device.split(":")[0]) else torch.float32


def check_unquantized_base(folder: str, name: str) -> None:
    """Refuses a base model stored quantized (its config.json has a quantization_config): the LoRA update
    would be rounded into 4- or 8-bit weights, and the merged model would not be the adapter's."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method:
        raise AdapterError(
            f"base model {name!r} is stored quantized ({method}); a merge needs its full-precision weights: give "
            "the unquantized model with --base-model (an adapter trained on an NF4 base merges into it)"
        )


def export_merged(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base_model: str | None = None,
    n_prompts: int = CHECK_PROMPTS,
    max_new_tokens: int = CHECK_MAX_NEW_TOKENS,
    batch_size: int = 8,
    device: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> ExportResult:
    """Merges adapter_dir into its base model and writes the checked merged model to out_dir.

    base_model defaults to the adapter's own when this machine has it, else LORA_MODEL_NAME or the default
    model (the rule `frd evaluate` follows). ValueError (AdapterError, ModelNotFound, ConfigError) for bad
    input, before anything heavy is loaded where it can be; MergeMismatch when the check fails.
    """
    from frd_assets.core.models import load_tokenizer, pick_device, resolve_model

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_output_dir(out_dir, command=EXPORT_COMMAND)  # first: a folder of the user's is refused at once
    check_adapter_dir(adapter_dir)
    check_value("merged export", "max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
    base_model = base_model or base_model_for_adapter(adapter_dir, print_fn=print_fn)
    check_unquantized_base(resolve_model(base_model), base_model)  # ModelNotFound in seconds, before any load
    tokenizer = load_tokenizer(base_model)
    prompts = check_prompts(tokenizer, n_prompts)
    device = device or pick_device()
    dtype = merge_dtype(device)
    staging = staging_dir(out_dir)
    print_fn(f"merging {adapter_dir} into {base_model}; checking greedy outputs on {len(prompts)} prompts")
    try:
        reference = merge_to_staging(adapter_dir, base_model, staging, prompts, tokenizer=tokenizer,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, device=device,
                                     dtype=dtype)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging)
        raise
    gc.collect()  # the unmerged model is gone before the merged one is loaded: one model's memory at a time
    check = publish_if_identical(staging, out_dir, reference, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, device=device, dtype=dtype)
    return ExportResult(out_dir=out_dir, base_model=base_model, check=check)
