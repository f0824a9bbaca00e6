"""Validation throughput: the project's gate on 50,000 records versus a plain per-record loop.

Data: 50,000 generated-looking records and a seed set of 175 instructions (Self-Instruct's seed-set size),
all made deterministically from the project's sample seed; about 3% of the records are malformed or
duplicated so the per-record checks do work. The gate runs as the asset runs it without a judge: near-
duplicate removal (MinHash + LSH) on, and decontamination against the sample seed's held-out tasks (the
split seed_dataset makes). The baseline is the straightforward loop: for each record the same field
checks, rouge-score's RougeScorer against every seed instruction, and sacrebleu's sentence BLEU against the
nearest one. Its cost per record is constant, so it is timed on a prefix (--baseline-records) and both are
reported in records per second; the per-record ROUGE-L maxima of the two are compared on that prefix.
Goal: at least 20x. The near-duplicate step alone is timed again on the same records (MinHash records/s).

The last line printed is one JSON object of the figures, for scripts to read.

Run: .venv/bin/python -m benchmarks.validation_throughput [--records 50000] [--baseline-records 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from benchmarks.synthetic import make_candidates, seed_instructions
from frd_assets.core.held_out import HeldOutConfig, split_held_out
from frd_assets.core.metrics.json_checks import record_problem
from frd_assets.core.metrics.rouge_l import max_rouge_l_f
from frd_assets.core.quality.near_duplicates import find_near_duplicates, minhashes, shingles
from frd_assets.core.records import Record, parse_seed
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes
from frd_assets.core.validation import ValidationConfig, validate


def make_records(n: int, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    instructions = make_candidates(seed_instructions(), n, seed=seed)
    outputs = make_candidates(seed_instructions(), 500, seed=seed + 1)
    rows: list[dict] = []
    for i, ins in enumerate(instructions):
        row = {"instruction": ins, "input": "" if i % 3 else f"item {i}", "output": rng.choice(outputs)}
        kind = rng.random()
        if kind < 0.01:
            del row["output"]
        elif kind < 0.02:
            row["output"] = '{"name": "broken'
        elif kind < 0.03 and rows:
            row = dict(rows[-1])
        rows.append(row)
    return rows


def baseline(rows: list[dict], seeds: list[str], config: ValidationConfig) -> list[float]:
    scorer = RougeScorer(["rougeL"])
    maxima = []
    for row in rows:
        if record_problem(row, max_instruction_words=config.max_instruction_words,
                          max_output_chars=config.max_output_chars):
            continue
        scores = [scorer.score(s, row["instruction"])["rougeL"].fmeasure for s in seeds]
        best = int(np.argmax(scores))
        sacrebleu.sentence_bleu(row["instruction"], [seeds[best]])
        maxima.append(scores[best])
    return maxima


def held_out_tasks() -> list[Record]:
    """The sample seed's held-out tasks, split as seed_dataset splits them: the gate's evaluation tasks."""
    return split_held_out(parse_seed(sample_seed_bytes(), SAMPLE_SEED), HeldOutConfig()).held_out


def time_near_duplicates(rows: list[dict], seeds: list[str], config: ValidationConfig) -> dict[str, float]:
    """Records per second of MinHash signatures alone (shingling included) and of the whole near-duplicate
    step (signatures, LSH, exact Jaccard), on the well-formed records."""
    texts = [f"{r['instruction']}\n{r['input']}" for r in rows if not record_problem(
        r, max_instruction_words=config.max_instruction_words, max_output_chars=config.max_output_chars)]
    t0 = time.perf_counter()
    minhashes([shingles(t, config.shingle_size) for t in texts], config.num_perm)
    t_minhash = time.perf_counter() - t0
    t0 = time.perf_counter()
    find_near_duplicates(texts, seeds, threshold=config.near_duplicate_threshold, shingle_size=config.shingle_size,
                         num_perm=config.num_perm)
    t_step = time.perf_counter() - t0
    return {"records": len(texts), "minhash": len(texts) / t_minhash, "step": len(texts) / t_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--baseline-records", type=int, default=2_000)
    args = parser.parse_args()
    base_seeds = seed_instructions()
    seeds = base_seeds + make_candidates(base_seeds, 175 - len(base_seeds), seed=1)
    rows = make_records(args.records)
    config = ValidationConfig()
    eval_tasks = held_out_tasks()

    t0 = time.perf_counter()
    report = validate(rows, seeds, config, eval_tasks=eval_tasks)
    t_project = time.perf_counter() - t0
    near = time_near_duplicates(rows, seeds, config)
    prefix = rows[: args.baseline_records]
    t0 = time.perf_counter()
    theirs = baseline(prefix, seeds, config)
    t_baseline = time.perf_counter() - t0

    valid_prefix = [r["instruction"] for r in prefix if not record_problem(
        r, max_instruction_words=config.max_instruction_words, max_output_chars=config.max_output_chars)]
    ours = max_rouge_l_f(valid_prefix, seeds).tolist()
    ours_rps, theirs_rps = len(rows) / t_project, len(prefix) / t_baseline
    identical = ours == theirs
    print(f"records: {len(rows)}, seed instructions: {len(seeds)}, evaluation tasks: {len(eval_tasks)}; "
          f"verdict {report.verdict}, invalid {report.invalid_records}")
    print(f"project:  {len(rows)} records in {t_project:.2f} s = {ours_rps:,.0f} records/s "
          "(near-duplicates and decontamination on, no judge)")
    print(f"baseline: {len(prefix)} records in {t_baseline:.2f} s = {theirs_rps:,.0f} records/s "
          "(rouge-score + sacrebleu per record)")
    print(f"ratio: {ours_rps / theirs_rps:.1f}x")
    print(f"MinHash (num_perm {config.num_perm}): {near['minhash']:,.0f} records/s; the near-duplicate step "
          f"(MinHash, LSH, exact Jaccard): {near['step']:,.0f} records/s, on {near['records']} records")
    print(f"per-record max ROUGE-L identical on the baseline's {len(theirs)} valid records: {identical}")
    print(json.dumps({
        "benchmark": "validation_throughput", "records": len(rows), "seed_instructions": len(seeds),
        "eval_tasks": len(eval_tasks),
        "project_seconds": round(t_project, 3), "project_records_per_s": round(ours_rps, 1),
        "baseline_records": len(prefix), "baseline_records_per_s": round(theirs_rps, 1),
        "ratio": round(ours_rps / theirs_rps, 1), "minhash_records_per_s": round(near["minhash"], 1),
        "near_duplicate_step_records_per_s": round(near["step"], 1),
        "num_perm": config.num_perm, "near_duplicate": report.invalid_records.get("near_duplicate", 0),
        "contaminated": report.invalid_records.get("contaminated", 0), "verdict": report.verdict,
        "rouge_l_identical": identical,
    }))


if __name__ == "__main__":
    main()
