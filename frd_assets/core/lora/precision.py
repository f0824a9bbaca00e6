"""How a trial holds its base model: the dtype of its weights, 4-bit NF4 or not, gradient checkpointing.

The figures that decide it (Dettmers et al. 2023; TRL, axolotl and LLaMA-Factory defaults): an 8B model's
weights take 32 GB in float32, 16 GB in bfloat16 and about 5 GB in NF4 with double quantization; with LoRA
only the adapter (well under 1% of the parameters) is trained, so the frozen base can sit in bf16 or NF4
while the adapter and its AdamW state stay float32, where small updates are not rounded away. On a CPU,
bf16 matmuls are slower than fp32 ones on most cores and the models are small, so fp32 stays the default
there; NF4 still works on a CPU (bitsandbytes >= 0.47), which is how it is tested here.
"""

from __future__ import annotations

from typing import Literal

# Saved by non-reentrant checkpointing: it works with inputs that need no grad (a frozen embedding) and with
# peft, which the reentrant kind handles only through enable_input_require_grads.
CHECKPOINT_KWARGS = {"use_reentrant": False}


def cuda_has_bf16(device_type: str) -> bool:
    import torch

    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device_type: str) -> Literal["bf16", "fp32"]:
    """"auto": bf16 on a GPU that has it, else fp32; "bf16" and "fp32" as asked (bf16 on a CPU works, slowly)."""
    if precision == "auto":
        return "bf16" if cuda_has_bf16(device_type) else "fp32"
    return "bf16" if precision == "bf16" else "fp32"


def uses_checkpointing(setting: bool | None, device_type: str) -> bool:
    """gradient_checkpointing as set; unset (None): on for a GPU, off on a CPU, where memory is rarely what
    runs out first and recomputing every layer costs a third more time."""
    return setting if setting is not None else device_type == "cuda"


def torch_dtype(precision: str):
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def quantization_config(quantization: str, precision: str, device_type: str):
    """transformers' BitsAndBytesConfig for quantization "nf4" (None for "none"): NF4 with double
    quantization (QLoRA's recipe), computing in bf16 where the device has it, else in fp32."""
    if quantization != "nf4":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if resolve_precision(precision, device_type) == "bf16" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
    )


def load_training_model(name_or_path: str | None, *, precision: str, quantization: str, device: str):
    """The base model a trial trains on, as the training config's precision and quantization say: bf16 or
    fp32 weights, or NF4 (safetensors only, without remote code, through the one model loader)."""
    from frd_assets.core.models import load_causal_lm

    device_type = device.split(":")[0]
    dtype = torch_dtype(resolve_precision(precision, device_type))
    return load_causal_lm(name_or_path, dtype=dtype, device=device,
                          quantization_config=quantization_config(quantization, precision, device_type))


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
