"""What every teacher shares: a completion, the sampling parameters, and the Teacher protocol.

In a module of their own so that each teacher (teachers.py's local one, openai_teacher.py's HTTP one)
imports them without importing the other: make_teacher picks between them, and neither needs make_teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from frd_assets.core.generation.prompts import ChatPrompt


@dataclass(frozen=True)
class Completion:
    text: str  # the reply, starting with the prompt's prefill
    finish_reason: Literal["stop", "length"]
    completion_tokens: int
    constrained: bool = False  # written under the prompt's JSON schema (enforced, or not refused by an endpoint)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 192
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()  # generation ends at the first of these; the text is cut before it

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Teacher(Protocol):
    name: str

    def complete(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[Completion]: ...

    # Optional: `supports_json_schema` (bool) and `json_schema_fallback_reason` (str | None). A teacher
    # without them is asked in the text format.
