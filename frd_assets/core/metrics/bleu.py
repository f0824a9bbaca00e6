"""BLEU through sacrebleu, with its signature kept beside every number so it can be reproduced."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from sacrebleu.metrics import BLEU


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    signature: str


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> MetricResult:
    """Corpus BLEU (0-100) of hypotheses against one reference each."""
    bleu = BLEU()
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return MetricResult("bleu", float(score.score), str(bleu.get_signature()))


def self_bleu(texts: Sequence[str], *, sample_size: int = 100, seed: int = 0) -> MetricResult:
    """Mean sentence BLEU (0-100) of each sampled text against all other sampled texts (Zhu et al. 2018).

    High self-BLEU means the set repeats itself. Sampling bounds the cost, which is quadratic in size.
    """
    texts = list(texts)
    if len(texts) > sample_size:
        texts = random.Random(seed).sample(texts, sample_size)
    bleu = BLEU(effective_order=True)
    if len(texts) < 2:
        return MetricResult("self_bleu", 0.0, str(bleu.get_signature()) + f"|sample:{len(texts)}")
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return MetricResult(
        "self_bleu", float(sum(scores) / len(scores)), str(bleu.get_signature()) + f"|sample:{len(texts)}|seed:{seed}"
    )
