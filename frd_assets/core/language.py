"""The language a seed is written in, and whether a generated instruction is written in it.

Detection is py3langid's naive Bayes model over byte n-grams (a maintained fork of langid.py; the model
ships inside its wheel, so it works offline). benchmarks/language_id.py measured it against
lingua-language-detector on 160 short instructions in eight languages (en, ru, uk, zh, fr, ar, de, es):
lingua was right on 98.1% (95.6% of those up to 30 characters), py3langid on 97.5% (93.3%), with the
same hard cases (a four-word Russian line taken for Bulgarian, a Ukrainian one for Russian); but lingua
held 1.15 GB once the models of every script were loaded, against py3langid's 139 MB, took 1.9 ms per
instruction against 0.23 ms, and under the drop rule below caught fewer off-language instructions (89.7%
against 96.7%). The gate checks every generated record, so the small, fast model was the choice.

A seed's language is its majority over the instructions, one vote each; a seed whose majority is under
MIXED_BELOW is called mixed, keeps its majority and says so. A record is off-language only on a confident
call both ways: the detector gives the expected language under OFF_LANGUAGE_BELOW and some other language
at least OTHER_AT_LEAST. The first condition alone dropped 134 of the validation benchmark's 49,422
English-like generated instructions (three-word fragments such as "Define Sun." that the detector cannot
place, giving every language a few per cent); with the second, 3 of them (word salad read as German or
Latin), while no instruction of the 160 in benchmarks/short_instructions.py is dropped from its own
language and 96.7% of them are caught when held to one of the other seven languages. What escapes are
close relatives (a Ukrainian instruction in a Russian seed) and the shortest lines: the safe side, since a
record in the right language must never be lost to a doubtful guess.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from importlib.metadata import version
from typing import Any, Mapping, Sequence

import numpy as np

from frd_assets.core.config_checks import LanguageCode

# Below this share of the seed's instructions the majority language is reported as a mixed seed's.
MIXED_BELOW = 0.8
# A record is off-language when the detector's probability for the expected language is under
# OFF_LANGUAGE_BELOW and another language has at least OTHER_AT_LEAST (see the module docstring).
OFF_LANGUAGE_BELOW = 0.02
OTHER_AT_LEAST = 0.3
UNDETERMINED = "und"  # ISO 639-2's code for "undetermined": text with nothing to detect (digits, symbols)

# py3langid's labels that are not ISO 639-1 codes but varieties of one: the seed's language is named by
# the code the dataset card's `language:` field and a teacher understand.
_MACROLANGUAGE = {"wuu": "zh", "yue": "zh", "ary": "ar", "arz": "ar", "uzs": "uz", "zxx": UNDETERMINED}

# English names of the ISO 639-1 languages py3langid knows: the prompts name the language in words.
# A data file bundled like the sample seed: a table of names is data, not code.
LANGUAGE_NAMES: dict[str, str] = json.loads(
    (resources.files("frd_assets") / "data" / "language_names.json").read_text(encoding="utf-8")
)

# The rule of every config's `language` field.
LANGUAGE = LanguageCode(frozenset(LANGUAGE_NAMES))


def detector_name() -> str:
    """The detector and its version, stored beside every detected language so a result can be reproduced."""
    return f"py3langid {version('py3langid')}"


class _Model:
    """py3langid's identifier and how its labels fold into language codes."""

    def __init__(self):
        # Imported on first use: decompressing the model takes most of a second, which a code-location load
        # or a run without a seed should not pay. norm_probs: probabilities, so one threshold fits every text.
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        folded = [_MACROLANGUAGE.get(label, label) for label in self.identifier.nb_classes]
        self.codes = list(dict.fromkeys(folded))
        self.position = {code: i for i, code in enumerate(self.codes)}
        self.fold = np.array([self.position[code] for code in folded])

    def scores(self, text: str) -> np.ndarray:
        """Probabilities per code (self.codes order), varieties added into their language."""
        # _decide is the scoring step of classify() and rank() without rank()'s per-label sort and dict: the
        # gate scores every record, and this halves the time. pyproject pins py3langid below 0.5 for it.
        return np.bincount(self.fold, weights=self.identifier._decide(text), minlength=len(self.codes))


@lru_cache(maxsize=1)
def _model() -> _Model:
    return _Model()


def language_name(code: str) -> str:
    """The English name of an ISO 639-1 code ("ru" -> "Russian"); ValueError naming the code otherwise."""
    try:
        return LANGUAGE_NAMES[code]
    except KeyError:
        raise ValueError(
            f"language {code!r} is not an ISO 639-1 code the detector knows; use a two-letter code such as "
            f"'en', 'ru' or 'zh' (known: {', '.join(sorted(LANGUAGE_NAMES))})"
        ) from None


def probabilities(text: str) -> dict[str, float]:
    """The detector's probability for each language code, varieties folded into their language."""
    model = _model()
    return dict(zip(model.codes, model.scores(text).tolist(), strict=True))


def off_language_call(expected: float, best: float) -> bool:
    """The drop rule on a detector's probabilities: the expected language's, and the most likely one's."""
    return expected < OFF_LANGUAGE_BELOW and best >= OTHER_AT_LEAST


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the most likely language of text; ("und", 0.0) when it has no letters."""
    if not any(ch.isalpha() for ch in text):
        return UNDETERMINED, 0.0
    code, p = max(probabilities(text).items(), key=lambda kv: kv[1])
    return code, p


def is_off_language(text: str, code: str) -> bool:
    """True when text is confidently not in language `code` (off_language_call). Text without letters is
    never off-language, nor is any text held to a language the detector does not know (it cannot tell)."""
    if code not in LANGUAGE_NAMES or not any(ch.isalpha() for ch in text):
        return False
    model = _model()
    scores = model.scores(text)
    return off_language_call(float(scores[model.position[code]]), float(scores.max()))


@dataclass(frozen=True)
class SeedLanguage:
    """The language a seed is written in: its code, English name, share of instructions, and how it was known."""

    code: str  # ISO 639-1, "ru"
    name: str  # English, "Russian": what the prompts say
    share: float  # share of the seed's instructions detected in it (1.0 for an override)
    detector: str  # "py3langid 0.4.0", or "run config" when a run set it
    counts: dict[str, int]  # instructions per detected language, most first

    @property
    def mixed(self) -> bool:
        return self.share < MIXED_BELOW

    @property
    def note(self) -> str:
        """One line for logs and metadata; a mixed seed says it is mixed and what else it holds."""
        if not self.counts:  # not detected in this run
            return f"{self.name} ({self.code}), from the {self.detector}"
        total = sum(self.counts.values())
        shares = ", ".join(f"{LANGUAGE_NAMES.get(c, c)} {n / total:.0%}" for c, n in self.counts.items())
        if self.mixed:
            return f"mixed seed ({shares}): its majority language, {self.name} ({self.code}), is used"
        return f"{self.name} ({self.code}): {self.share:.0%} of {total} instructions"

    def metadata(self) -> dict[str, object]:
        """What seed_dataset stores and from_metadata reads back (language, language_share,
        language_detector, ...), and what a report shows."""
        return {"language": self.code, "language_name": self.name, "language_share": round(self.share, 4),
                "language_detector": self.detector, "language_counts": dict(self.counts),
                "language_note": self.note}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "SeedLanguage | None":
        """The language metadata() stored; None when there is none (a seed materialized before languages
        were detected, or one with no letters)."""
        if not meta.get("language"):
            return None
        code = str(meta["language"])
        return cls(code, LANGUAGE_NAMES.get(code, code), float(meta.get("language_share", 1.0)),
                   str(meta.get("language_detector", "")), dict(meta.get("language_counts") or {}))


OVERRIDE = "run config"


def detect_seed_language(instructions: Sequence[str]) -> SeedLanguage:
    """The majority language of the instructions, one vote each; instructions with no letters have none.
    ValueError when no instruction has a detectable language."""
    votes = Counter(code for code, _ in map(detect, instructions) if code != UNDETERMINED)
    if not votes:
        raise ValueError(
            f"cannot tell the seed's language: none of its {len(instructions)} instructions has letters; "
            "set the run config's `language` (an ISO 639-1 code such as 'ru')"
        )
    counts = dict(votes.most_common())
    code, n = next(iter(counts.items()))
    # A majority in a language without an English name here (a rare py3langid label) is still named by its code.
    return SeedLanguage(code, LANGUAGE_NAMES.get(code, code), n / sum(counts.values()), detector_name(), counts)


def seed_language(instructions: Sequence[str], code: str = "", *, stored: SeedLanguage | None = None) -> SeedLanguage:
    """The run's language: `code` (ISO 639-1, a run config's override) when set; else `stored`, the seed's
    language as seed_dataset detected it; else the majority language of the instructions, detected now."""
    if code:
        return SeedLanguage(code, language_name(code), 1.0, OVERRIDE, {})
    return stored or detect_seed_language(instructions)
