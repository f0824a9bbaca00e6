"""Greedy answers to every task from the base model and from base + adapter, with one model load.

The adapter is put on the base model with `PeftModel.from_pretrained`; the base model's answers are
generated inside peft's `disable_adapter()`, which skips the LoRA path of every adapted layer, so they are
exactly what the base model alone answers (a test checks this) and no second copy of the weights is loaded.

Generation is the local teacher's: batches of prompts sorted by length, left padding, greedy decoding,
tokens and seconds counted. Only the prompt differs: each task is shown in the very text the adapter was
trained on (`lora.data.prompt_text`: the chat template, or Alpaca's prompt for a model without one), so the
adapter is not judged on a prompt it never saw.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from frd_assets.core.evaluation.tasks import EvalTask
from frd_assets.core.generation.prompts import ChatPrompt
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher
from frd_assets.core.lora.data import prompt_text, user_message

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
        # peft would fall back to adapter_model.bin, a pickle: loading one can run any code its author chose.
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


@dataclass(frozen=True)
class _TaskPrompt(ChatPrompt):
    """A chat prompt that remembers its task, so the training prompt text can be rendered from it."""

    task: EvalTask | None = None


@dataclass(frozen=True)
class SideAnswers:
    """One side's answers in task order, with what they cost."""

    texts: list[str]
    tokens: int  # generated tokens, not counting the end-of-sequence token
    seconds: float  # wall time of generating them, tokenizing and decoding included

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Answers:
    base: SideAnswers
    adapter: SideAnswers

    @property
    def tokens_per_second(self) -> float:
        seconds = self.base.seconds + self.adapter.seconds
        return (self.base.tokens + self.adapter.tokens) / seconds if seconds else 0.0


class AnswerModel(TransformersTeacher):
    """A base model with a LoRA adapter on top, loaded once; answers with the adapter or without it."""

    def __init__(
        self, base_model: str | None, adapter_dir: str | Path, *, batch_size: int = 8, device: str | None = None
    ):
        import warnings

        from peft import PeftModel

        check_adapter_dir(adapter_dir)
        super().__init__(base_model, batch_size=batch_size, device=device)
        # peft calls a transformers property that transformers 5 renamed; the warning is theirs, not ours.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir))
        except (ValueError, RuntimeError, KeyError) as exc:
            # Typically an adapter trained on another base model: missing target modules or shape mismatches.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterError(
                f"adapter {str(adapter_dir)!r} does not fit base model {self.name!r} ({first[:300]}); "
                "give the base model it was trained on with --base-model"
            ) from None
        self.model.eval()

    def _render(self, prompt: ChatPrompt) -> str:
        if isinstance(prompt, _TaskPrompt) and prompt.task is not None:
            return prompt_text(self.tokenizer, prompt.task.as_record())
        return super()._render(prompt)

    def answer(self, tasks: Sequence[EvalTask], *, adapter: bool, max_new_tokens: int) -> SideAnswers:
        """Greedy answers in task order; with adapter=False the LoRA path is switched off."""
        prompts = [
            _TaskPrompt(({"role": "user", "content": user_message(t.as_record())},), task=t) for t in tasks
        ]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
        t0 = time.perf_counter()
        with nullcontext() if adapter else self.model.disable_adapter():
            out = self.complete(prompts, params)
        seconds = time.perf_counter() - t0
        return SideAnswers([c.text.strip() for c in out], sum(c.completion_tokens for c in out), seconds)


def generate_answers(
    tasks: Sequence[EvalTask],
    *,
    base_model: str | None,
    adapter_dir: str | Path,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    device: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> Answers:
    """Both sides' answers to every task, from one load of the base model and the adapter."""
    model = AnswerModel(base_model, adapter_dir, batch_size=batch_size, device=device)
    print_fn(f"answering {len(tasks)} tasks with {model.name} (base) and {adapter_dir} (adapter), "
             f"up to {max_new_tokens} new tokens, batches of {batch_size}")
    base = model.answer(tasks, adapter=False, max_new_tokens=max_new_tokens)
    print_fn(f"base: {base.tokens} tokens in {base.seconds:.1f} s ({base.tokens_per_second:.1f} tok/s)")
    tuned = model.answer(tasks, adapter=True, max_new_tokens=max_new_tokens)
    print_fn(f"adapter: {tuned.tokens} tokens in {tuned.seconds:.1f} s ({tuned.tokens_per_second:.1f} tok/s)")
    return Answers(base=base, adapter=tuned)
