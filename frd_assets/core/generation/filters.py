"""Self-Instruct's heuristic filters: each returns the reason an instruction is dropped, or None."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

# From Self-Instruct / Alpaca: tasks a text-only model cannot do.
BLACKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_BLACKLIST_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 3
    max_words: int = 150

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")


def instruction_reject_reason(instruction: str, *, truncated: bool, config: FilterConfig) -> str | None:
    """The first filter an instruction fails, by name, in the order Alpaca applies them."""
    if truncated:
        return "truncated"
    words = instruction.split()
    if len(words) < config.min_words:
        return "too_short"
    if len(words) > config.max_words:
        return "too_long"
    if _BLACKLIST_RE.search(instruction):
        return "blacklisted_word"
    if instruction.lower().startswith("write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "leading_punctuation"
    if not instruction[0].isascii() or not any(c.isalpha() for c in instruction):
        return "non_text"
    return None
