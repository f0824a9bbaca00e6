"""Teachers write text for the Self-Instruct loop; the local one batches prompts through transformers.

A prompt may carry a JSON schema (ChatPrompt.json_schema). A teacher whose supports_json_schema is true
makes such replies follow it; the local teacher does so with llguidance (constrained.py). When that is
unavailable, or a schema cannot be compiled, it generates free text and says why in
json_schema_fallback_reason, and the loop asks in the text format instead.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from frd_assets.core.generation.prompts import ChatPrompt

# Re-exported: callers build SamplingParams and read Completions from here, beside make_teacher.
from frd_assets.core.generation.teacher_types import Completion, SamplingParams, Teacher  # noqa: F401
from frd_assets.core.settings import (
    TEACHER_BATCH_SIZE,
    TEACHER_MAX_CONCURRENCY,
    TEACHER_MAX_RETRIES,
    TEACHER_TIMEOUT_S,
)


class TransformersTeacher:
    """A local causal LM, loaded once, generating a batch of prompts per forward pass (left padding)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        batch_size: int = TEACHER_BATCH_SIZE,
        device: str | None = None,
        loaded_model=None,
    ):
        """loaded_model: that model's weights already on `device` (e.g. with an adapter on top), used as given."""
        from frd_assets.core.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, pick_device

        # The alias, not the resolved cache path: names go into provenance and checkpoint fingerprints.
        self.name = model_name_or_path or DEFAULT_MODEL
        self.batch_size = batch_size
        self.device = device or pick_device()
        self.tokenizer = load_tokenizer(model_name_or_path)
        # Decoder-only models must be padded on the left, or new tokens follow pad tokens.
        self.tokenizer.padding_side = "left"
        if loaded_model is None:
            loaded_model = load_causal_lm(model_name_or_path, device=self.device)
        self.model = loaded_model
        self.model.eval()
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self.json_schema_fallback_reason: str | None = None
        self._constraint = None  # built on first use: converting a 49k-token vocabulary takes about 1 s

    @property
    def supports_json_schema(self) -> bool:
        return self._schema_constraint() is not None

    def _schema_constraint(self):
        if self._constraint is None and self.json_schema_fallback_reason is None:
            from frd_assets.core.generation.constrained import SchemaConstraint, llguidance_version

            if llguidance_version() is None:
                self.json_schema_fallback_reason = "llguidance is not installed (pip install llguidance)"
            else:
                try:
                    self._constraint = SchemaConstraint(self.tokenizer, sorted(self._eos_ids()))
                except ValueError as exc:
                    self.json_schema_fallback_reason = str(exc)
        return self._constraint

    def _eos_ids(self) -> set[int]:
        eos_ids = {self.tokenizer.eos_token_id}
        if self.model.generation_config.eos_token_id is not None:
            gen_eos = self.model.generation_config.eos_token_id
            eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return eos_ids

    def _processor(self, schemas: list):
        """A schema processor for one batch, or None when no row has a schema or none can be enforced."""
        if all(s is None for s in schemas) or self._schema_constraint() is None:
            return None
        try:
            return self._constraint.processor(schemas)
        except ValueError as exc:
            # A schema llguidance cannot compile: this batch goes unconstrained, and supports_json_schema
            # turns false so the loop asks in the text format rather than fail the same way each batch.
            self.json_schema_fallback_reason, self._constraint = str(exc), None
            return None

    def render(self, prompt: ChatPrompt) -> str:
        """The text the model continues: the chat template (or plain text) with the prompt's prefill."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        else:  # a base model without a chat template: plain text
            text = "\n\n".join(m["content"] for m in prompt.messages) + "\n\n"
        return text + prompt.prefill

    def complete(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[Completion]:
        completions = self.complete_texts(
            [self.render(p) for p in prompts], params, schemas=[p.json_schema for p in prompts]
        )
        return [replace(c, text=p.prefill + c.text) for p, c in zip(prompts, completions, strict=True)]

    def complete_texts(
        self, texts: Sequence[str], params: SamplingParams, *, schemas: Sequence[dict | None] | None = None
    ) -> list[Completion]:
        """Continuations of already rendered prompt texts, for a caller whose prompts are not chat messages
        (the evaluation shows each task in the text its adapter was trained on)."""
        import torch
        from transformers import LogitsProcessorList

        schemas = list(schemas) if schemas is not None else [None] * len(texts)
        results: list[Completion | None] = [None] * len(texts)
        # Similar lengths in one batch waste fewer pad positions.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        eos_ids = self._eos_ids()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            processor = self._processor([schemas[i] for i in idx])
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
                    logits_processor=LogitsProcessorList([processor]) if processor else None,
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
                    text=text,
                    finish_reason="length" if stop_at is None else "stop",
                    completion_tokens=len(kept),
                    constrained=processor is not None and processor.constrained(row),
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
    batch_size: int = TEACHER_BATCH_SIZE,
    max_concurrency: int = TEACHER_MAX_CONCURRENCY,
    timeout: float = TEACHER_TIMEOUT_S,
    max_retries: int = TEACHER_MAX_RETRIES,
) -> Teacher:
    """The one place a teacher is built from settings, for the asset and the CLI alike."""
    if backend == "transformers":
        return TransformersTeacher(model, batch_size=batch_size)
    if backend == "openai":
        if not base_url:
            raise ValueError("teacher backend 'openai' needs a base URL: set TEACHER_BASE_URL (e.g. http://host:8000/v1)")
        if not model:
            raise ValueError("teacher backend 'openai' needs a model name: set TEACHER_MODEL to the served model")
        # Imported here: the HTTP teacher brings requests, which a run on the local teacher never needs.
        from frd_assets.core.generation.openai_teacher import OpenAICompatibleTeacher

        return OpenAICompatibleTeacher(base_url, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                       max_concurrency=max_concurrency)
    raise ValueError(f"unknown teacher backend {backend!r}: use one of {', '.join(TEACHER_BACKENDS)}")
