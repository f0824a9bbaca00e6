"""Teachers write text for the Self-Instruct loop; the local one batches prompts through transformers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from frd_assets.core.generation.prompts import ChatPrompt


@dataclass(frozen=True)
class Completion:
    text: str  # the reply, starting with the prompt's prefill
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 192
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()  # generation ends at the first of these; the text is cut before it

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Teacher(Protocol):
    name: str

    def complete(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[Completion]: ...


class TransformersTeacher:
    """A local causal LM, loaded once, generating a batch of prompts per forward pass (left padding)."""

    def __init__(self, model_name_or_path: str | None = None, *, batch_size: int = 8, device: str | None = None):
        from frd_assets.core.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, pick_device

        # The alias, not the resolved cache path: names go into provenance and checkpoint fingerprints.
        self.name = model_name_or_path or DEFAULT_MODEL
        self.batch_size = batch_size
        self.device = device or pick_device()
        self.tokenizer = load_tokenizer(model_name_or_path)
        # Decoder-only models must be padded on the left, or new tokens follow pad tokens.
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model_name_or_path, device=self.device)
        self.model.eval()
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    def _render(self, prompt: ChatPrompt) -> str:
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        else:  # a base model without a chat template: plain text
            text = "\n\n".join(m["content"] for m in prompt.messages) + "\n\n"
        return text + prompt.prefill

    def complete(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[Completion]:
        import torch

        results: list[Completion | None] = [None] * len(prompts)
        texts = [self._render(p) for p in prompts]
        # Similar lengths in one batch waste fewer pad positions.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        eos_ids = {self.tokenizer.eos_token_id}
        if self.model.generation_config.eos_token_id is not None:
            gen_eos = self.model.generation_config.eos_token_id
            eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            torch.manual_seed(params.seed + start)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=params.max_new_tokens,
                    do_sample=params.temperature > 0,
                    temperature=params.temperature if params.temperature > 0 else None,
                    top_p=params.top_p if params.temperature > 0 else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=list(eos_ids),
                    stop_strings=list(params.stop) or None,
                    tokenizer=self.tokenizer if params.stop else None,
                )
            self.generation_seconds += time.perf_counter() - t0
            new = out[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                stop_at = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                kept = ids if stop_at is None else ids[:stop_at]
                self.generated_tokens += len(kept) + (0 if stop_at is None else 1)
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                if cut >= 0:
                    text, stop_at = text[:cut], len(kept)
                results[i] = Completion(
                    text=prompts[i].prefill + text,
                    finish_reason="length" if stop_at is None else "stop",
                    completion_tokens=len(kept),
                )
        return [r for r in results if r is not None]

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0


TEACHER_BACKENDS = ("transformers", "openai")


def make_teacher(
    *,
    backend: str,
    model: str | None,
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = 8,
    max_concurrency: int = 4,
    timeout: float = 120.0,
    max_retries: int = 4,
) -> Teacher:
    """The one place a teacher is built from settings, for the asset and the CLI alike."""
    if backend == "transformers":
        return TransformersTeacher(model, batch_size=batch_size)
    if backend == "openai":
        if not base_url:
            raise ValueError("teacher backend 'openai' needs a base URL: set TEACHER_BASE_URL (e.g. http://host:8000/v1)")
        if not model:
            raise ValueError("teacher backend 'openai' needs a model name: set TEACHER_MODEL to the served model")
        from frd_assets.core.generation.openai_teacher import OpenAICompatibleTeacher

        return OpenAICompatibleTeacher(base_url, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                       max_concurrency=max_concurrency)
    raise ValueError(f"unknown teacher backend {backend!r}: use one of {', '.join(TEACHER_BACKENDS)}")
