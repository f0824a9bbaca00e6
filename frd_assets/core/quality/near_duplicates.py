"""Near-duplicate removal: MinHash signatures of word-shingle sets, an LSH index, exact Jaccard to confirm.

Pairwise comparison is quadratic (50,000 records are 1.25 billion pairs), so datasketch's MinHashLSH
proposes candidate pairs in about constant time per record. LSH is approximate both ways: it misses some
pairs above the threshold and proposes pairs below it. datasketch's own choice of bands balances the two,
which finds a pair exactly at 0.7 less than half the time (14 bands of 9 rows at 128 permutations). So the
bands are chosen here for recall: the fewest-candidate banding that finds a pair at the threshold with
probability at least 0.98 (25 bands of 5 rows at 0.7), and every candidate is confirmed with the exact
Jaccard similarity of the two shingle sets before anything is dropped: a record is never removed on an
estimate, and extra candidates cost only a set intersection each.

Texts are processed in order; a text is dropped when it is at least `threshold` similar to a reference
text (the seed tasks) or to an earlier text that was kept, so the first text of each cluster stays.

Shingles are word n-grams of the project's words (`metrics.text_units`, the rule ROUGE-L uses): a word of
Russian or Arabic is a run of letters, a word of Chinese or Thai one character. A text with fewer words than
the shingle size is one shingle of all its words; a text with no words (no letter or digit of any script)
has no shingles, cannot be compared, and is kept (exact duplicates of it are caught by the validation gate's
exact check).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Sequence

from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

from frd_assets.core.metrics.text_units import TOKENIZER_SIGNATURE, words

LSH_RECALL = 0.98  # chance that LSH proposes a pair whose Jaccard is exactly the threshold; more above it
MINHASH_SEED = 1  # fixed: the same texts always give the same signatures, candidates and result


def shingles(text: str, size: int) -> frozenset[str]:
    """The set of word n-grams (n = size) of text's words (`text_units.words`), each joined by one space."""
    tokens = words(text)
    if len(tokens) <= size:
        return frozenset((" ".join(tokens),)) if tokens else frozenset()
    return frozenset(" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    both = len(a & b)  # |a | b| from the sizes: building the union set would double the cost
    return both / (len(a) + len(b) - both) if a or b else 0.0


@dataclass(frozen=True)
class NearDuplicate:
    """Why texts[index] was dropped: the kept text it is too similar to, and their exact Jaccard."""

    index: int
    of_reference: bool  # True: references[other] (a seed task); False: texts[other], an earlier kept text
    other: int
    jaccard: float


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows) with the most rows per band (the fewest candidates) whose chance of proposing a pair
    at exactly `threshold`, 1 - (1 - threshold**rows)**bands, is at least `recall`."""
    for rows in range(num_perm // 2, 1, -1):  # datasketch's LSH needs at least two bands
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1  # a threshold too low for the target: one row per band is the most recall there is


def lsh_signature(*, threshold: float, shingle_size: int, num_perm: int) -> str:
    bands, rows = lsh_bands(threshold, num_perm)
    return (
        f"near_duplicate|minhash:datasketch-{version('datasketch')}|num_perm:{num_perm}|seed:{MINHASH_SEED}"
        f"|lsh:{bands}x{rows}|shingles:word-{shingle_size}-gram|{TOKENIZER_SIGNATURE}"
        f"|jaccard>={threshold:g}|confirmed:exact"
    )


def minhashes(shingle_sets: Sequence[frozenset[str]], num_perm: int) -> list[MinHash]:
    """One MinHash per shingle set, through datasketch's bulk path (one permutation setup for all).

    Generated sets repeat their words, so each distinct shingle is hashed once (datasketch's own SHA-1
    hash) and the MinHashes look the hash up: a dict lookup in C instead of a Python SHA-1 call per use."""
    hashes = {s: sha1_hash32(s.encode("utf-8")) for s in frozenset().union(*shingle_sets)}
    return MinHash.bulk(shingle_sets, num_perm=num_perm, seed=MINHASH_SEED, hashfunc=hashes.__getitem__)


def find_near_duplicates(
    texts: Sequence[str],
    references: Sequence[str] = (),
    *,
    threshold: float,
    shingle_size: int,
    num_perm: int,
) -> list[NearDuplicate | None]:
    """For each text, None when it is kept, else the reference or earlier kept text it near-duplicates."""
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold!r}")
    # One pool, references first: an LSH key is a position in it, so the smaller key is a seed task or, among
    # texts, the earlier one.
    pool = [shingles(t, shingle_size) for t in references]
    n_refs = len(pool)
    pool += [shingles(t, shingle_size) for t in texts]
    signatures = minhashes(pool, num_perm)
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    for key in range(n_refs):
        if pool[key]:
            lsh.insert(key, signatures[key], check_duplication=False)
    result: list[NearDuplicate | None] = []
    for key in range(n_refs, len(pool)):
        best = None
        if pool[key]:
            best = _best_confirmed(pool[key], lsh.query(signatures[key]), pool, threshold)
            if best is None:
                lsh.insert(key, signatures[key], check_duplication=False)
        if best is None:
            result.append(None)
        else:
            other, j = best
            of_reference = other < n_refs
            result.append(NearDuplicate(key - n_refs, of_reference, other if of_reference else other - n_refs, j))
    return result


def _best_confirmed(shingle_set, candidates, pool, threshold) -> tuple[int, float] | None:
    """(key, exact Jaccard) of the most similar candidate at or above the threshold. LSH returns candidates
    in no fixed order, so a tie goes to the smaller key: a seed task, else the earliest text."""
    best_key, best_j = -1, -1.0
    size = len(shingle_set)
    for key in candidates:  # the hot loop of the gate: plain arithmetic, sizes before sets
        other = pool[key]
        other_size = len(other)
        # Jaccard is at most the smaller size over the larger: many candidates end here, with no intersection.
        if other_size * threshold > size or size * threshold > other_size:
            continue
        both = len(shingle_set & other)
        j = both / (size + other_size - both)
        if j >= threshold and (j > best_j or (j == best_j and key < best_key)):
            best_key, best_j = key, j
    return (best_key, best_j) if best_key >= 0 else None
