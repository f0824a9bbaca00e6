"""Turns records into tokenized training examples whose prompt tokens are masked from the loss."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from frd_assets.core.records import Record

IGNORE_INDEX = -100  # labels with this value add nothing to the cross-entropy loss

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{extra}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def user_message(record: Record) -> str:
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction


def prompt_text(tokenizer, record: Record) -> str:
    """The prompt as the model will see it at inference: its chat template, or Alpaca's when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(record)}], tokenize=False, add_generation_prompt=True
        )
    input_block = f"### Input:\n{record.input}\n\n" if record.input else ""
    extra = ", paired with an input that provides further context" if record.input else ""
    return ALPACA_PROMPT.format(extra=extra, instruction=record.instruction, input_block=input_block)


def tokenize_record(tokenizer, record: Record, *, max_length: int) -> Example:
    prompt_ids = tokenizer(prompt_text(tokenizer, record), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]  # teaches the model to stop
    # Keep the whole response when we can: cut the prompt's start first, never the answer's end first.
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        cut = min(overflow, max(len(prompt_ids) - 1, 0))
        prompt_ids = prompt_ids[cut:]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return Example(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)


def split_records(records: Sequence[Record], *, eval_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded shuffle, then at least one record on each side."""
    if len(records) < 2:
        raise ValueError(f"LoRA tuning needs at least 2 records (one to train, one to evaluate), got {len(records)}")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_eval = min(max(1, round(len(shuffled) * eval_fraction)), len(shuffled) - 1)
    return shuffled[n_eval:], shuffled[:n_eval]


def collate(examples: Sequence[Example], pad_id: int):
    """Right-pads a batch; padded positions are masked in the attention and ignored by the loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(examples: Sequence[Example], batch_size: int, pad_id: int, *, shuffle_seed: int | None = None):
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)
