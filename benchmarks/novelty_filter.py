"""Novelty filter: the project's rapidfuzz ROUGE-L index versus Alpaca's rouge-score loop, in one process.

Both walk the same candidates in order and keep one when its highest ROUGE-L F against the pool (seed
instructions plus everything kept so far) is at most 0.7, as Stanford Alpaca's generate_instruction.py
does. The baseline is that code's inner loop (pre-tokenised, `rouge_scorer._score_lcs` per pair) in a
single process. Prints both times, the speedup and whether every keep/reject decision is the same.

Run: .venv/bin/python benchmarks/novelty_filter.py [--n 5000]
"""

from __future__ import annotations

import argparse
import random
import time
from importlib import resources

from rouge_score import rouge_scorer

from frd_assets.core.metrics.rouge_l import NoveltyIndex
from frd_assets.core.records import parse_seed

THRESHOLD = 0.7


def seed_instructions() -> list[str]:
    data = (resources.files("frd_assets") / "data" / "sample_seed.jsonl").read_bytes()
    return list(dict.fromkeys(r.instruction for r in parse_seed(data, "sample_seed.jsonl")))


def make_candidates(seeds: list[str], n: int, seed: int = 0) -> list[str]:
    """Deterministic recombinations of the seed instructions: spliced halves, dropped and swapped words, and
    words drawn from the whole seed vocabulary, so some candidates copy the pool and others are new."""
    rng = random.Random(seed)
    words = [w for s in seeds for w in s.split()]
    out = []
    for _ in range(n):
        a, b = rng.sample(seeds, 2)
        wa, wb = a.split(), b.split()
        mix = wa[: rng.randint(1, len(wa))] + wb[rng.randint(0, len(wb) - 1):]
        for _ in range(rng.randint(0, 8)):
            op = rng.random()
            i = rng.randrange(len(mix))
            if op < 0.4:
                mix[i] = rng.choice(words)
            elif op < 0.7 and len(mix) > 3:
                del mix[i]
            else:
                mix.insert(i, rng.choice(words))
        out.append(" ".join(mix))
    return out


def project_filter(seeds: list[str], candidates: list[str]) -> list[bool]:
    index = NoveltyIndex(seeds)
    keep = []
    for c in candidates:
        ok = index.max_f(c)[0] <= THRESHOLD
        keep.append(ok)
        if ok:
            index.add(c)
    return keep


def alpaca_filter(seeds: list[str], candidates: list[str]) -> list[bool]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    seeds = seed_instructions()
    candidates = make_candidates(seeds, args.n)

    t0 = time.perf_counter()
    ours = project_filter(seeds, candidates)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = alpaca_filter(seeds, candidates)
    t_theirs = time.perf_counter() - t0

    print(f"candidates: {len(candidates)} (from {len(seeds)} seed instructions); kept {sum(ours)}, "
          f"rejected {len(ours) - sum(ours)}")
    print(f"project (rapidfuzz LCS):       {t_ours:8.3f} s")
    print(f"baseline (rouge-score loop):   {t_theirs:8.3f} s")
    print(f"speedup: {t_theirs / t_ours:.1f}x")
    print(f"identical decisions: {ours == theirs}")


if __name__ == "__main__":
    main()
