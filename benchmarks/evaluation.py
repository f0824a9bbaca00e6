"""Adapter evaluation throughput: base and adapter answers one prompt at a time versus batched (8 a pass).

Same model (the prepared SmolLM2-135M-Instruct unless --model) with a small LoRA adapter made here (rank 8
on q_proj and v_proj, lora_B set to small random values so the adapter really acts), same 16 tasks from the
bundled sample seed, greedy decoding, the same token budget, one model load, in one process. Each setting
answers every task twice, with the adapter switched off (peft's disable_adapter) and on, exactly as
`evaluate_adapter` does. Prints generated tokens per second for both settings and the ratio, how many
answers batching left unchanged (left padding can move a greedy choice by a rounding error), and ends with
one line holding a JSON object of the figures. Goal: batching at least 2x on 2 CPU cores.

Run: .venv/bin/python -m benchmarks.evaluation [--model NAME_OR_PATH] [--tasks 16] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.synthetic import random_lora_adapter
from frd_assets.core.evaluation.answers import AnswerModel
from frd_assets.core.evaluation.tasks import load_eval_tasks
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes


def measure(model: AnswerModel, tasks, batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    model.teacher.batch_size = batch_size
    t0 = time.perf_counter()
    base = model.answer(tasks, adapter=False, max_new_tokens=max_new_tokens)
    tuned = model.answer(tasks, adapter=True, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - t0
    tokens = base.tokens + tuned.tokens
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 2)}, (
        base.texts + tuned.texts
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    tasks = load_eval_tasks(sample_seed_bytes(), SAMPLE_SEED)[0][: args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = random_lora_adapter(args.model, Path(tmp) / "adapter")
        model = AnswerModel(args.model, adapter)
    model.answer(tasks[:1], adapter=True, max_new_tokens=2)  # warm-up: first-call allocations
    one, one_texts = measure(model, tasks, 1, args.max_new_tokens)
    eight, eight_texts = measure(model, tasks, 8, args.max_new_tokens)
    same = sum(a == b for a, b in zip(one_texts, eight_texts, strict=True))
    ratio = eight["tokens_per_second"] / one["tokens_per_second"]
    print(f"model: {model.name}; {len(tasks)} tasks, base and adapter answers each, up to {args.max_new_tokens} "
          f"new tokens, greedy; torch threads {torch.get_num_threads()}")
    print(f"one at a time: {one['tokens']} tokens in {one['seconds']:.1f} s = {one['tokens_per_second']:.1f} tok/s")
    print(f"batched (8):   {eight['tokens']} tokens in {eight['seconds']:.1f} s = "
          f"{eight['tokens_per_second']:.1f} tok/s")
    print(f"ratio: {ratio:.2f}x; {same} of {len(one_texts)} answers identical in both settings")
    print(json.dumps({
        "benchmark": "evaluation", "model": model.name, "tasks": len(tasks), "max_new_tokens": args.max_new_tokens,
        "one_at_a_time": one, "batched_8": eight, "ratio": round(ratio, 2), "identical_answers": same,
        "answers": len(one_texts),
    }))


if __name__ == "__main__":
    main()
