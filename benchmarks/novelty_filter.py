"""Novelty filter: the project's rapidfuzz ROUGE-L index versus Alpaca's rouge-score loop, in one process.

Both walk the same candidates in order and keep one when its highest ROUGE-L F against the pool (seed
instructions plus everything kept so far) is at most 0.7, as Stanford Alpaca's generate_instruction.py
does. The baseline is that code's inner loop (pre-tokenised, `rouge_scorer._score_lcs` per pair) in a
single process. Prints both times, the speedup and whether every keep/reject decision is the same, and ends
with one line holding a JSON object of the figures.

Two runs: English candidates from the sample seed, against rouge-score with its default tokenizer (all-ASCII
text, where the project's words are rouge-score's own); then mixed Russian and Chinese candidates, against
rouge-score given the project's tokenizer (`text_units.RougeScoreTokenizer`), since rouge-score's default
sees no word in either script.

Run: .venv/bin/python -m benchmarks.novelty_filter [--n 5000] [--mixed-n N (default: --n)]
"""

from __future__ import annotations

import argparse
import json
import time

from rouge_score import rouge_scorer

from benchmarks.synthetic import make_candidates, mixed_russian_chinese, seed_instructions
from frd_assets.core.metrics.rouge_l import NoveltyIndex
from frd_assets.core.metrics.text_units import RougeScoreTokenizer

THRESHOLD = 0.7


def project_filter(seeds: list[str], candidates: list[str]) -> list[bool]:
    index = NoveltyIndex(seeds)
    keep = []
    for c in candidates:
        ok = index.max_f(c)[0] <= THRESHOLD
        keep.append(ok)
        if ok:
            index.add(c)
    return keep


def alpaca_filter(seeds: list[str], candidates: list[str], tokenizer=None) -> list[bool]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tokenizer)
    pool_tokens = [scorer._tokenizer.tokenize(s) for s in seeds]
    keep = []
    for c in candidates:
        tokens = scorer._tokenizer.tokenize(c)
        scores = [rouge_scorer._score_lcs(tokens, t).fmeasure for t in pool_tokens]
        ok = max(scores) <= THRESHOLD
        keep.append(ok)
        if ok:
            pool_tokens.append(tokens)
    return keep


def compare(title: str, seeds: list[str], candidates: list[str], tokenizer=None) -> dict:
    """Both filters on the same candidates: the figures, printed and returned."""
    t0 = time.perf_counter()
    ours = project_filter(seeds, candidates)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = alpaca_filter(seeds, candidates, tokenizer)
    t_theirs = time.perf_counter() - t0
    print(f"{title}: candidates {len(candidates)} (from {len(seeds)} seed instructions); kept {sum(ours)}, "
          f"rejected {len(ours) - sum(ours)}")
    print(f"  project (rapidfuzz LCS):       {t_ours:8.3f} s")
    print(f"  baseline (rouge-score loop):   {t_theirs:8.3f} s")
    print(f"  speedup: {t_theirs / t_ours:.1f}x; identical decisions: {ours == theirs}")
    return {
        "candidates": len(candidates), "seed_instructions": len(seeds), "kept": sum(ours),
        "rejected": len(ours) - sum(ours), "project_seconds": round(t_ours, 4),
        "baseline_seconds": round(t_theirs, 4), "speedup": round(t_theirs / t_ours, 1),
        "identical_decisions": ours == theirs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--mixed-n", type=int, default=None, help="Russian + Chinese candidates (default: --n)")
    args = parser.parse_args()
    seeds = seed_instructions()
    english = compare("English", seeds, make_candidates(seeds, args.n))
    mixed_seeds, mixed = mixed_russian_chinese(args.n if args.mixed_n is None else args.mixed_n)
    russian_chinese = compare("Russian + Chinese", mixed_seeds, mixed, RougeScoreTokenizer())
    # The English figures keep their old top-level keys, so earlier JSON lines stay comparable.
    print(json.dumps({
        "benchmark": "novelty_filter", "threshold": THRESHOLD, **english,
        "ru_zh": {**russian_chinese, "baseline_tokenizer": "text_units.RougeScoreTokenizer (unicode-v1)"},
    }))


if __name__ == "__main__":
    main()
