"""Held-out seed tasks: the user's own tasks, set aside before generation, that the adapter is judged on.

A model trained on teacher text always scores a lower loss on more teacher text, so the only honest test of
an adapter is tasks the teacher never saw. seed_dataset marks a seeded share of the seed tasks as held out
(provenance["split"] = "held_out"); generation never shows them to the teacher (not as in-context examples,
not as instance prompts) but counts them in its novelty pool, so a near-copy of one is rejected.

Tasks are split by instruction, not by record: a Self-Instruct task with several instances gives several
records with one instruction, and holding out one of them while showing the other would leak it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from frd_assets.core.config_checks import SEED, Number, check_fields
from frd_assets.core.records import Record

SPLIT = "split"
HELD_OUT, TRAIN = "held_out", "train"
MIN_TASKS_TO_SPLIT = 10  # below this a split leaves too little to generate from and too little to judge on


@dataclass(frozen=True)
class HeldOutConfig:
    held_out_fraction: float = 0.2  # share of seed tasks (with a reference output) set aside for evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "held-out config", {"held_out_fraction": Number(0.0, 0.5), "seed": SEED})


@dataclass(frozen=True)
class Split:
    train: list[Record]
    held_out: list[Record]
    note: str  # how the held-out set came to be, for the metadata


def split_held_out(records: Sequence[Record], config: HeldOutConfig) -> Split:
    """Marks a seeded share of the tasks as held out; none when fewer than MIN_TASKS_TO_SPLIT tasks."""
    tasks = list(dict.fromkeys(r.instruction for r in records if r.output.strip()))
    if config.held_out_fraction == 0:
        return Split(list(records), [], "held_out_fraction is 0: no tasks held out")
    if len(tasks) < MIN_TASKS_TO_SPLIT:
        return Split(list(records), [], f"{len(tasks)} seed tasks with a reference output, fewer than "
                     f"{MIN_TASKS_TO_SPLIT}: none held out (upload an evaluation set with --eval instead)")
    n = max(1, round(config.held_out_fraction * len(tasks)))
    chosen = set(random.Random(config.seed).sample(tasks, n))
    train = [mark(r, TRAIN) for r in records if r.instruction not in chosen]
    held = [mark(r, HELD_OUT) for r in records if r.instruction in chosen]
    return Split(train, held, f"{n} of {len(tasks)} seed tasks held out (fraction {config.held_out_fraction}, "
                 f"seed {config.seed})")


def mark(record: Record, split: str) -> Record:
    return replace(record, provenance={**record.provenance, SPLIT: split})


def is_held_out(record: Record) -> bool:
    return record.provenance.get(SPLIT) == HELD_OUT


def partition(records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    """(tasks the teacher may see, held-out tasks) of seed_dataset's rows."""
    return [r for r in records if not is_held_out(r)], [r for r in records if is_held_out(r)]


def eval_records(tasks, object_name: str) -> list[Record]:
    """Tasks of an uploaded evaluation set (id, instruction, input, reference) as canonical records."""
    return [
        Record(id=f"eval-{t.id}", instruction=t.instruction, input=t.input, output=t.reference,
               provenance={"format": "evaluation", "object": object_name})
        for t in tasks
    ]
