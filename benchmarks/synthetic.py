"""Deterministic benchmark data made from the project's own sample seed (no downloads, no shared data)."""

from __future__ import annotations

import random

from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes


def seed_instructions() -> list[str]:
    return list(dict.fromkeys(r.instruction for r in parse_seed(sample_seed_bytes(), SAMPLE_SEED)))


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
