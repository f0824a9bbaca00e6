"""BLEU through sacrebleu, with its signature kept beside every number so it can be reproduced.

BLEU counts n-grams of tokens, so its tokenizer must fit the script: sacrebleu's default `13a` splits on
spaces and ASCII punctuation, which makes a whole Chinese sentence one token. `bleu_tokenizer` picks one of
sacrebleu's own tokenizers from the language or, without one, from the texts' dominant script, and the
signature names it (`tok:zh`), as sacrebleu's always does.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import regex
from sacrebleu.metrics import BLEU

from frd_assets.core.metrics.text_units import words

# `zh` splits Han characters and tokenizes the rest as 13a; `char` splits every character, for scripts
# without spaces that have no segmenter here (Japanese: ja-mecab needs MeCab; Thai, Lao, Khmer, Myanmar:
# flores200 downloads its SentencePiece model on first use, so it is not offline). Every other script
# separates words with spaces, which 13a expects.
_HAN = regex.compile(r"\p{Han}")
_KANA = regex.compile(r"[\p{Hiragana}\p{Katakana}]")
_OTHER_NO_SPACE = regex.compile(r"[\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_CHAR_LANGUAGES = frozenset({"ja", "th", "lo", "km", "my"})
_ZH_LANGUAGES = frozenset({"zh", "yue", "wuu", "gan", "hak", "nan"})  # written in Han characters


def bleu_tokenizer(texts: Iterable[str] = (), *, language: str | None = None) -> str:
    """The sacrebleu tokenizer ("13a", "zh" or "char") that fits a language or, without one, the texts.

    language: an ISO 639 code ("ru", "zh", "zh-Hant", "ja"), trusted when given. Without it the dominant
    script decides, counted in words of the text-unit rule (one per Han character, one per Russian word),
    so an English product name inside a Chinese sentence does not make it English. Japanese is told from
    Chinese by its kana."""
    if language:
        code = language.strip().lower().replace("_", "-").split("-")[0]
        if code in _ZH_LANGUAGES:
            return "zh"
        return "char" if code in _CHAR_LANGUAGES else "13a"
    counts: Counter[str] = Counter()
    for text in texts:
        for word in words(text):
            first = word[0]
            if ord(first) < 128:
                counts["spaced"] += 1
            elif _HAN.match(first):
                counts["han"] += 1
            elif _KANA.match(first):
                counts["kana"] += 1
            elif _OTHER_NO_SPACE.match(first):
                counts["other_no_space"] += 1
            else:
                counts["spaced"] += 1
    if counts["han"] + counts["kana"] + counts["other_no_space"] <= counts["spaced"]:
        return "13a"
    # Japanese writes most words in kana around its kanji; Chinese has next to none.
    if counts["han"] >= counts["other_no_space"] and counts["kana"] * 10 < counts["han"]:
        return "zh"
    return "char"


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    signature: str


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str | None = None) -> MetricResult:
    """Corpus BLEU (0-100) of hypotheses against one reference each. tokenize: a sacrebleu tokenizer name;
    None picks one from the texts (`bleu_tokenizer`)."""
    if tokenize is None:
        tokenize = bleu_tokenizer([*hypotheses, *references])
    bleu = BLEU(tokenize=tokenize)
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return MetricResult("bleu", float(score.score), str(bleu.get_signature()))


def self_bleu(
    texts: Sequence[str], *, sample_size: int = 100, seed: int = 0, tokenize: str | None = None
) -> MetricResult:
    """Mean sentence BLEU (0-100) of each sampled text against all other sampled texts (Zhu et al. 2018).

    High self-BLEU means the set repeats itself. Sampling bounds the cost, which is quadratic in size.
    tokenize: as in corpus_bleu, picked from the sampled texts when None.
    """
    texts = list(texts)
    if len(texts) > sample_size:
        texts = random.Random(seed).sample(texts, sample_size)
    bleu = BLEU(effective_order=True, tokenize=tokenize or bleu_tokenizer(texts))
    if len(texts) < 2:
        return MetricResult("self_bleu", 0.0, str(bleu.get_signature()) + f"|sample:{len(texts)}")
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return MetricResult(
        "self_bleu", float(sum(scores) / len(scores)), str(bleu.get_signature()) + f"|sample:{len(texts)}|seed:{seed}"
    )
