"""Seed parsing: parse_seed on the same Alpaca tasks as JSONL and as one JSON array, in one process.

A JSON array used to cost time quadratic in its length, because every element counted newlines from the
start of the text to know its line: 40,000 tasks took 35 s against 0.33 s as JSONL, and 200,000 ran past
300 s. Both forms now read each character a bounded number of times, so the array should stay within 3x
of JSONL. Prints both times and their ratio, and ends with one line holding a JSON object of the figures.

Run: .venv/bin/python -m benchmarks.seed_parsing [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.synthetic import make_candidates, seed_instructions
from frd_assets.core.records import MAX_SEED_BYTES, parse_seed

TARGET_RATIO = 3.0


def make_tasks(n: int) -> list[dict]:
    """n Alpaca tasks with unique ids; instructions recombined from the sample seed so lengths vary."""
    instructions = make_candidates(seed_instructions(), n)
    return [
        {"id": f"task-{i}", "instruction": text, "input": "" if i % 3 else f"case {i}", "output": f"answer {i}"}
        for i, text in enumerate(instructions)
    ]


def timed_parse(data: bytes, name: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    records = parse_seed(data, name)
    return time.perf_counter() - t0, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    lines = [json.dumps(t, ensure_ascii=False) for t in make_tasks(args.n)]
    jsonl = "\n".join(lines).encode()
    array = ("[\n" + ",\n".join(lines) + "\n]").encode()

    t_jsonl, from_jsonl = timed_parse(jsonl, "seed.jsonl")
    t_array, from_array = timed_parse(array, "seed.json")
    same = [(r.id, r.instruction, r.input, r.output, r.provenance["line"]) for r in from_jsonl] == [
        (r.id, r.instruction, r.input, r.output, r.provenance["line"] - 1) for r in from_array  # "[" is line 1
    ]
    ratio = t_array / t_jsonl

    print(f"tasks: {args.n}; JSONL {len(jsonl):,} bytes, JSON array {len(array):,} bytes "
          f"(limit {MAX_SEED_BYTES:,})")
    print(f"JSONL:       {t_jsonl:8.3f} s ({len(from_jsonl)} records)")
    print(f"JSON array:  {t_array:8.3f} s ({len(from_array)} records)")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio array/jsonl: {ratio:.2f}x (target within {TARGET_RATIO:g}x: {verdict})")
    print(f"identical records (line numbers shifted by the array's '['): {same}")
    print(json.dumps({
        "benchmark": "seed_parsing",
        "tasks": args.n,
        "jsonl_bytes": len(jsonl),
        "array_bytes": len(array),
        "max_seed_bytes": MAX_SEED_BYTES,
        "jsonl_seconds": round(t_jsonl, 4),
        "array_seconds": round(t_array, 4),
        "ratio_array_to_jsonl": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "records_jsonl": len(from_jsonl),
        "records_array": len(from_array),
        "identical_records": same,
    }))


if __name__ == "__main__":
    main()
