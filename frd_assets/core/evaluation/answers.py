"""Greedy answers to every task from the base model and from base + adapter, with one model load.

The adapter is put on the base model with `PeftModel.from_pretrained`; the base model's answers are
generated inside peft's `disable_adapter()`, which skips the LoRA path of every adapted layer, so they are
exactly what the base model alone answers (a test checks this) and no second copy of the weights is loaded.

Generation is the local teacher's: batches of prompts sorted by length, left padding, greedy decoding,
tokens and seconds counted. Only the prompt differs: each task is shown in the very text the adapter was
trained on (`chat_format.prompt_text`: the chat template, or Alpaca's prompt for a model without one), so the
adapter is not judged on a prompt it never saw.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from frd_assets.core.chat_format import prompt_text
from frd_assets.core.evaluation.tasks import EvalTask
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher
from frd_assets.core.lora.adapter import load_adapter


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


class AnswerModel:
    """A base model with a LoRA adapter on top, loaded once; answers with the adapter or without it.

    It generates through a local teacher built on the adapted model, giving it each task already rendered
    as the adapter's training prompt (`complete_texts`), not as chat messages.
    """

    def __init__(
        self, base_model: str | None, adapter_dir: str | Path, *, batch_size: int = 8, device: str | None = None
    ):
        from frd_assets.core.models import pick_device

        device = device or pick_device()
        self.teacher = TransformersTeacher(
            base_model, batch_size=batch_size, device=device,
            loaded_model=load_adapter(base_model, adapter_dir, device=device),
        )
        self.name = self.teacher.name
        self.tokenizer = self.teacher.tokenizer

    def prompt(self, task: EvalTask) -> str:
        """The task in the very text the adapter was trained on."""
        return prompt_text(self.tokenizer, task.as_record())

    def answer(self, tasks: Sequence[EvalTask], *, adapter: bool, max_new_tokens: int) -> SideAnswers:
        """Greedy answers in task order; with adapter=False the LoRA path is switched off."""
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
        t0 = time.perf_counter()
        with nullcontext() if adapter else self.teacher.model.disable_adapter():
            out = self.teacher.complete_texts([self.prompt(t) for t in tasks], params)
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
