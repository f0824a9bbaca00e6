"""ROUGE-L F as rouge-score defines it, over the project's words (`metrics.text_units`), with rapidfuzz's LCS.

Text whose letters and digits are all ASCII is split exactly as rouge-score splits it (lowercase, every
character outside [a-z0-9] a space), so on English the number matches the reference library that the
Self-Instruct filter uses, bit for bit. rouge-score's rule sees no word at all in Russian or Chinese, so two
identical such texts would score 0; other text is split by the Unicode rule of `text_units` instead (runs of
letters and digits; one word per character in scripts without spaces), and the signature says so.

Speed: each distinct token is mapped to one character, so a token sequence becomes a string and the LCS
of two sequences is rapidfuzz's `LCSseq.similarity` (a bit-parallel C++ LCS). F is then computed as
rouge-score computes it, 2PR/(P+R); the algebraically equal 2*LCS/(m+n) differs in the last bit, which is
enough to flip a decision at exactly 0.7. rapidfuzz's `normalized_similarity` is LCS/max(m, n): not ROUGE-L.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import rapidfuzz
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from frd_assets.core.metrics.text_units import TOKENIZER_SIGNATURE, words

SIGNATURE = (
    f"rouge_l|definition:rouge_score-0.1.2|{TOKENIZER_SIGNATURE}|stemmer:no"
    f"|impl:rapidfuzz-{rapidfuzz.__version__}"
)


class RougeLScore(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


def _code_point(index: int) -> str:
    # Skip the surrogate block: those code points cannot stand alone in a str handed to C++.
    return chr(index + 1 if index + 1 < 0xD800 else index + 1 + 0x800)


class TokenEncoder:
    """Maps tokens to single characters, consistently across every text it encodes."""

    def __init__(self) -> None:
        self._codes: dict[str, str] = {}

    def encode(self, text: str) -> str:
        codes = self._codes
        out = []
        for tok in words(text):
            ch = codes.get(tok)
            if ch is None:
                ch = codes[tok] = _code_point(len(codes))
            out.append(ch)
        return "".join(out)


def rouge_l(target: str, prediction: str) -> RougeLScore:
    enc = TokenEncoder()
    t, p = enc.encode(target), enc.encode(prediction)
    if not t or not p:
        return RougeLScore(0.0, 0.0, 0.0)
    lcs = LCSseq.similarity(t, p)
    precision, recall = lcs / len(p), lcs / len(t)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeLScore(precision, recall, f)


def rouge_l_f(target: str, prediction: str) -> float:
    """Equals RougeScorer(["rougeL"]).score(target, prediction)["rougeL"].fmeasure where both texts' letters and
    digits are ASCII; elsewhere, RougeScorer(["rougeL"], tokenizer=<text_units.words>) does."""
    return rouge_l(target, prediction).fmeasure


def f_matrix(encoded_a: Sequence[str], encoded_b: Sequence[str], *, workers: int = 1) -> np.ndarray:
    """ROUGE-L F of every encoded a against every encoded b (rows a, columns b)."""
    if not encoded_a or not encoded_b:
        return np.zeros((len(encoded_a), len(encoded_b)))
    lcs = process.cdist(encoded_a, encoded_b, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)
    len_a = np.fromiter((len(s) for s in encoded_a), dtype=np.float64, count=len(encoded_a))
    len_b = np.fromiter((len(s) for s in encoded_b), dtype=np.float64, count=len(encoded_b))
    # rouge-score's own arithmetic (a as target, b as prediction), so results are bit-identical and a
    # candidate sitting exactly on the 0.7 threshold is decided the same way as in the reference.
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / len_b[None, :]
        recall = lcs / len_a[:, None]
        f = np.where(lcs > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f


def max_rouge_l_f(candidates: Sequence[str], pool: Sequence[str], *, workers: int = 1) -> np.ndarray:
    """For each candidate, its highest ROUGE-L F against any text of the pool (0 for an empty pool)."""
    enc = TokenEncoder()
    f = f_matrix([enc.encode(c) for c in candidates], [enc.encode(p) for p in pool], workers=workers)
    return f.max(axis=1) if f.shape[1] else np.zeros(len(candidates))


class NoveltyIndex:
    """A growing pool of texts; answers 'how close is this candidate to anything already kept?'."""

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self._enc = TokenEncoder()
        self._pool: list[str] = []
        self._texts: list[str] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._pool)

    def max_f(self, candidate: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F against the pool, and the pool text that scored it."""
        if not self._pool:
            return 0.0, None
        f = f_matrix([self._enc.encode(candidate)], self._pool)[0]
        i = int(f.argmax())
        return float(f[i]), self._texts[i]

    def add(self, text: str) -> None:
        self._pool.append(self._enc.encode(text))
        self._texts.append(text)
