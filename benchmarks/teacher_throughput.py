"""Teacher throughput: the transformers teacher batched (8 prompts a pass) versus one prompt at a time.

Same model (the prepared SmolLM2-135M-Instruct unless --model), same 8 Self-Instruct prompts, greedy
decoding and the same token budget, in one process; prints generated tokens per second for both and the
ratio, and ends with one line holding a JSON object of the figures. Goal: at least 3x on 2 CPU cores.

Run: .venv/bin/python -m benchmarks.teacher_throughput [--model NAME_OR_PATH] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from benchmarks.synthetic import seed_instructions
from frd_assets.core.generation.prompts import instruction_prompt
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher


def prompts(n: int = 8):
    seeds = seed_instructions()
    rng = random.Random(0)
    return [instruction_prompt(rng.sample(seeds, 6)) for _ in range(n)]


def measure(teacher: TransformersTeacher, batch_size: int, items, params: SamplingParams) -> tuple[float, int]:
    teacher.batch_size = batch_size
    t0 = time.perf_counter()
    out = teacher.complete(items, params)
    seconds = time.perf_counter() - t0
    return seconds, sum(c.completion_tokens for c in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the prepared SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    teacher = TransformersTeacher(args.model)
    items = prompts(8)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    teacher.complete(items[:1], SamplingParams(max_new_tokens=4, temperature=0))  # warm-up
    s1, n1 = measure(teacher, 1, items, params)
    s8, n8 = measure(teacher, 8, items, params)
    print(f"model: {teacher.name}; 8 prompts, up to {args.max_new_tokens} new tokens each, greedy")
    print(f"one at a time: {n1} tokens in {s1:.1f} s = {n1 / s1:.1f} tok/s")
    print(f"batched (8):   {n8} tokens in {s8:.1f} s = {n8 / s8:.1f} tok/s")
    ratio = (n8 / s8) / (n1 / s1)
    print(f"ratio: {ratio:.2f}x")
    print(json.dumps({
        "benchmark": "teacher_throughput", "model": teacher.name, "prompts": len(items),
        "max_new_tokens": args.max_new_tokens,
        "one_at_a_time": {"tokens": n1, "seconds": round(s1, 2), "tokens_per_second": round(n1 / s1, 2)},
        "batched_8": {"tokens": n8, "seconds": round(s8, 2), "tokens_per_second": round(n8 / s8, 2)},
        "ratio": round(ratio, 2),
    }))


if __name__ == "__main__":
    main()
