"""A saved LoRA adapter folder: what makes one usable, the one way it is loaded, and the base model it needs.

`frd evaluate`, adapter_evaluation and `frd export` all start from such a folder; they share this module so
that a folder is refused for the same reasons, with the same words, wherever it is given. Loading is
safetensors only and without remote code: peft would otherwise fall back to adapter_model.bin, a pickle,
and unpickling runs whatever code its author chose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

from frd_assets.core.models import DEFAULT_MODEL, ModelNotFound, load_causal_lm, resolve_model
from frd_assets.core.settings import lora_settings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter folder that cannot be used; the message names the folder and the fix."""


def check_adapter_dir(adapter_dir: str | Path) -> dict:
    """The adapter's config, after checking the folder holds a peft adapter with safetensors weights."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise AdapterError(f"adapter {str(folder)!r}: no such folder; give the folder `frd tune --out` wrote")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(
            f"adapter {str(folder)!r} has no {ADAPTER_CONFIG}; give the folder that peft's save_pretrained wrote"
        )
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(
            f"adapter {str(folder)!r} has no {ADAPTER_WEIGHTS}; only safetensors adapters are loaded, save it "
            "with `save_pretrained(dir, safe_serialization=True)`"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"adapter {str(folder)!r}: {ADAPTER_CONFIG} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {str(folder)!r}: {ADAPTER_CONFIG} must hold a JSON object")
    return config


def load_adapter(base_model: str | None, adapter_dir: str | Path, *, device: str | None = None, dtype=None):
    """The base model (float32 unless dtype says otherwise, safetensors) with the adapter on top, as a peft
    PeftModel in eval mode."""
    import warnings

    from peft import PeftModel

    check_adapter_dir(adapter_dir)  # before the base model: a bad folder is refused in milliseconds
    # peft calls a transformers property that transformers 5 renamed; the warning is theirs, not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    model = load_causal_lm(base_model, device=device, dtype=dtype)
    try:
        # Only adapter_model.safetensors: check_adapter_dir refused a folder without it, so no pickle is read.
        adapted = PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, RuntimeError, KeyError) as exc:
        # Typically an adapter trained on another base model: missing target modules or shape mismatches.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdapterError(
            f"adapter {str(adapter_dir)!r} does not fit base model {base_model or DEFAULT_MODEL!r} ({first[:300]}); "
            "give the base model it was trained on with --base-model"
        ) from None
    adapted.eval()
    return adapted


def base_model_for_adapter(
    adapter_dir: str | Path, *, env: Mapping[str, str] | None = None, print_fn: Callable[[str], None] = print
) -> str:
    """The base model an adapter was trained on, when this machine has it; else LORA_MODEL_NAME or the default.

    peft records `base_model_name_or_path` as the base model's folder on the machine that trained it (the
    project loads models from resolved folders), which another machine usually lacks; then the platform's
    configured base model is the best guess, and it is said out loud. LORA_MODEL_NAME is the variable
    lora_adapter's default too (core/settings.py).
    """
    config = check_adapter_dir(adapter_dir)
    fallback = lora_settings(env).base_model
    recorded = config.get("base_model_name_or_path")
    if isinstance(recorded, str) and recorded:
        try:
            resolve_model(recorded)
            return recorded
        except ModelNotFound:
            print_fn(f"the adapter's base model {recorded!r} is not available here; using {fallback!r}")
    return fallback
