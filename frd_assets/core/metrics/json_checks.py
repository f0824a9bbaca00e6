"""Per-record checks: each returns the name of the first problem, or None for a usable record."""

from __future__ import annotations

import re
from typing import Any

from frd_assets.core.metrics.text_units import words
from frd_assets.core.records import loads_strict_json

REQUIRED_FIELDS = ("instruction", "input", "output")
_ASKS_FOR_JSON = re.compile(r"\bjson\b", re.IGNORECASE)


def output_meant_as_json(instruction: str, output: str) -> bool:
    """The instruction asks for JSON, or the output looks like a JSON object or array."""
    return bool(_ASKS_FOR_JSON.search(instruction)) or output.lstrip().startswith(("{", "["))


def record_problem(row: Any, *, max_instruction_words: int, max_output_chars: int) -> str | None:
    if not isinstance(row, dict):
        return "not_an_object"
    for name in REQUIRED_FIELDS:
        if name not in row:
            return f"missing_{name}"
        if not isinstance(row[name], str):
            return f"{name}_not_a_string"
    if not row["instruction"].strip():
        return "empty_instruction"
    if not row["output"].strip():
        return "empty_output"
    # Words by the text-unit rule, as the generation filters count them: a Chinese instruction has no spaces.
    if len(words(row["instruction"])) > max_instruction_words:
        return "instruction_too_long"
    if len(row["output"]) > max_output_chars:
        return "output_too_long"
    if output_meant_as_json(row["instruction"], row["output"]):
        try:
            loads_strict_json(row["output"])
        except ValueError:  # NaN or nesting too deep for the parser included: no other reader takes them
            return "output_not_valid_json"
    return None
