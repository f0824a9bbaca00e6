"""A 1-5 score per record from a language model judge, on a fixed rubric, so weak records are not trained on.

The judge is the evaluation judge (`make_judge`: an OpenAI-compatible endpoint or a local transformers
model); only its Teacher is used, at temperature 0. All prompts go in one `complete` call, so a local model
batches them and an endpoint receives them concurrently.

The reply must end with the stated line "Score: N". Parsing forgives case, markdown, "N/5" and "N out of
5", and takes the last score line when the judge revised itself. A reply without one (or with a number
outside 1-5) is unparsable: that record keeps its place in the set, is not scored, and is counted, never
guessed at. A small judge mostly fails the format, which is why the report shows the unparsable count
beside the mean.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from frd_assets.core.generation.prompts import ChatPrompt
from frd_assets.core.generation.teachers import SamplingParams

if TYPE_CHECKING:
    from frd_assets.core.evaluation.judge import Judge

# Bump when the wording below changes: scores from two rubric versions are not comparable.
RECORD_RUBRIC_VERSION = "record-rubric-v1"
SCORES = (1, 2, 3, 4, 5)

RECORD_JUDGE_SYSTEM = "You are a strict reviewer of training data for instruction-following language models."

RECORD_JUDGE_PROMPT = """Rate the training example below on a scale from 1 to 5.

Rubric:
5 - The instruction is clear and feasible, and the output is correct, complete and follows the instruction.
4 - As 5, with a minor flaw (wording, a small omission) that does not mislead.
3 - Usable: the instruction can be followed and the output mostly answers it, with a noticeable flaw.
2 - The output is partly wrong, incomplete or ignores part of the instruction, or the instruction is unclear.
1 - The instruction is infeasible or nonsensical, or the output is wrong or does not answer it.

### Instruction
{instruction}

### Input
{input}

### Output
{output}

Explain your rating in one or two sentences. Then end your reply with one line that is exactly \
"Score: N", where N is 1, 2, 3, 4 or 5."""

# "Score: 4", "**Score:** 4/5", "score = 4 out of 5."; the digit must stand alone (not 45, not 4.5).
_SCORE = re.compile(r"score\W{0,4}[:=]\W{0,4}([1-5])(?![\d.,]\d)(?:\s*(?:/|out\s+of)\s*5)?\b", re.IGNORECASE)
_BARE_SCORE = re.compile(r"^\W*([1-5])(?:\s*/\s*5)?\W*$")


def record_judge_prompt(row: Mapping[str, Any]) -> ChatPrompt:
    content = RECORD_JUDGE_PROMPT.format(
        instruction=row["instruction"].strip(),
        input=row["input"].strip() or "(none)",
        output=row["output"].strip(),
    )
    return ChatPrompt(({"role": "system", "content": RECORD_JUDGE_SYSTEM}, {"role": "user", "content": content}))


def parse_score(reply: str) -> int | None:
    """1-5 from the last "Score: N" in the reply, or from a reply that is only the number; else None."""
    found = _SCORE.findall(reply)
    if found:
        return int(found[-1])
    lines = [line for line in reply.splitlines() if line.strip()]
    bare = _BARE_SCORE.match(lines[-1]) if lines else None
    return int(bare.group(1)) if bare else None


@dataclass(frozen=True)
class RecordScores:
    """The judge's score for each record (None: unparsable reply), its replies, and who judged."""

    scores: list[int | None]
    replies: list[str]
    judge: str
    rubric_version: str = RECORD_RUBRIC_VERSION

    @property
    def scored(self) -> list[int]:
        return [s for s in self.scores if s is not None]

    @property
    def unparsable(self) -> int:
        return sum(s is None for s in self.scores)

    @property
    def mean(self) -> float | None:
        scored = self.scored
        return sum(scored) / len(scored) if scored else None

    def distribution(self) -> dict[str, int]:
        """Records per score "1".."5" (every score present, zeros included) and "unparsable"."""
        counts = Counter(self.scored)
        return {**{str(s): counts[s] for s in SCORES}, "unparsable": self.unparsable}

    def unparsable_examples(self, limit: int = 3, width: int = 200) -> list[str]:
        """The first few unparsable replies, shortened: what the judge wrote instead of a score."""
        return [" ".join(r.split())[:width] for r, s in zip(self.replies, self.scores, strict=True)
                if s is None][:limit]


def score_records(rows: Sequence[Mapping[str, Any]], judge: Judge) -> RecordScores:
    """Scores well-formed rows (instruction, input, output strings) with the judge's model at temperature 0."""
    if not rows:
        return RecordScores([], [], judge.identity)
    params = SamplingParams(max_new_tokens=judge.max_new_tokens, temperature=0)
    replies = [c.text for c in judge.teacher.complete([record_judge_prompt(r) for r in rows], params)]
    if len(replies) != len(rows):
        raise RuntimeError(f"judge {judge.identity} returned {len(replies)} replies for {len(rows)} records")
    return RecordScores([parse_score(r) for r in replies], replies, judge.identity)
