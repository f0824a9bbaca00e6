"""Held-out seed tasks: the user's own tasks, set aside before generation, that the adapter is judged on.

A model trained on teacher text always scores a lower loss on more teacher text, so the only honest test of
an adapter is tasks the teacher never saw. seed_dataset marks a seeded share of the seed tasks as held out
(provenance["split"] = "held_out"); generation never shows them to the teacher (not as in-context examples,
not as instance prompts) but counts them in its novelty pool, so a near-copy of one is rejected.

Tasks are split by instruction, not by record: a Self-Instruct task with several instances gives several
records with one instruction, and holding out one of them while showing the other would leak it.

The held-out tasks are split again, seeded and by instruction, into a validation part and a test part.
The LoRA search picks by the validation part (its loss steers the sampler and the pruner), so its figure is
optimistic: it was chosen on. Only the test part, which nothing was chosen on, is an honest report, and only
adapter_evaluation reads it. The test part keeps the mark "held_out" that every held-out task had before
the split existed, so a seed version stored earlier reads as it did: all of it test, no validation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from frd_assets.core.config_checks import SEED, Number, check_fields
from frd_assets.core.records import Record

SPLIT = "split"
HELD_OUT, VALIDATION, TRAIN = "held_out", "validation", "train"  # HELD_OUT: the test part
MIN_TASKS_TO_SPLIT = 10  # below this a split leaves too little to generate from and too little to judge on
# Below this many held-out tasks there is no validation part: two tasks a side is the least that is a mean
# and not one task's quirk, and the test part is the one the user reads, so it keeps them all.
MIN_TASKS_FOR_VALIDATION = 4


@dataclass(frozen=True)
class HeldOutConfig:
    held_out_fraction: float = 0.2  # share of seed tasks (with a reference output) set aside for evaluation
    # Share of the held-out tasks that steer the search (validation); the rest are the test part. With an
    # uploaded evaluation set (all test) the validation part is this share of held_out_fraction of the seed.
    validation_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "held-out config", {"held_out_fraction": Number(0.0, 0.5),
                                               "validation_fraction": Number(0.0, 0.9), "seed": SEED})


@dataclass(frozen=True)
class Split:
    train: list[Record]
    held_out: list[Record]  # validation and test records, each marked with its part
    note: str  # how the held-out set came to be and how it was divided, for the metadata

    @property
    def validation(self) -> list[Record]:
        return [r for r in self.held_out if is_validation(r)]

    @property
    def test(self) -> list[Record]:
        return [r for r in self.held_out if is_test(r)]


def _tasks(records: Sequence[Record]) -> list[str]:
    return list(dict.fromkeys(r.instruction for r in records if r.output.strip()))


def split_held_out(records: Sequence[Record], config: HeldOutConfig) -> Split:
    """Marks a seeded share of the tasks as held out, divided into validation and test; none held out when
    fewer than MIN_TASKS_TO_SPLIT tasks, no validation part when fewer than MIN_TASKS_FOR_VALIDATION held out."""
    tasks = _tasks(records)
    if config.held_out_fraction == 0:
        return Split(list(records), [], "held_out_fraction is 0: no tasks held out")
    if len(tasks) < MIN_TASKS_TO_SPLIT:
        return Split(list(records), [], f"{len(tasks)} seed tasks with a reference output, fewer than "
                     f"{MIN_TASKS_TO_SPLIT}: none held out (upload an evaluation set with --eval instead)")
    n = max(1, round(config.held_out_fraction * len(tasks)))
    chosen = random.Random(config.seed).sample(tasks, n)
    validation, note = _validation_part(chosen, config)
    held = set(chosen)
    train = [mark(r, TRAIN) for r in records if r.instruction not in held]
    parts = [mark(r, VALIDATION if r.instruction in validation else HELD_OUT) for r in records if r.instruction in held]
    return Split(train, parts, f"{n} of {len(tasks)} seed tasks held out (fraction {config.held_out_fraction}, "
                 f"seed {config.seed}): {note}")


def _validation_part(chosen: Sequence[str], config: HeldOutConfig) -> tuple[set[str], str]:
    """The held-out instructions that form the validation part, and a note saying how many of each part."""
    if config.validation_fraction == 0:
        return set(), f"validation_fraction is 0: all {len(chosen)} test, no validation tasks"
    if len(chosen) < MIN_TASKS_FOR_VALIDATION:
        return set(), (f"{len(chosen)} held out, fewer than {MIN_TASKS_FOR_VALIDATION}: all test, no validation "
                       "tasks (the search falls back to the teacher-text loss)")
    n = min(len(chosen) - 1, max(1, round(config.validation_fraction * len(chosen))))
    # A second seeded draw from the chosen tasks, so the test part does not depend on list order.
    validation = set(random.Random(config.seed + 1).sample(list(chosen), n))
    return validation, f"{n} validation, {len(chosen) - n} test (validation_fraction {config.validation_fraction})"


def split_with_uploaded_test(records: Sequence[Record], test: Sequence[Record], config: HeldOutConfig) -> Split:
    """An uploaded evaluation set is the test part; the validation part is a seeded share of the seed tasks
    (held_out_fraction x validation_fraction of them), none when the seed is too small to spare them."""
    tasks = _tasks(records)
    test_part = [mark(r, HELD_OUT) for r in test]
    uploaded = {r.instruction for r in test}
    n = round(config.held_out_fraction * config.validation_fraction * len(tasks))
    if len(tasks) < MIN_TASKS_TO_SPLIT or n < MIN_TASKS_FOR_VALIDATION // 2:
        return Split([mark(r, TRAIN) for r in records], test_part,
                     f"{len(test_part)} test tasks from the uploaded evaluation set; no validation tasks ("
                     f"{len(tasks)} seed tasks give {n}, fewer than {MIN_TASKS_FOR_VALIDATION // 2}): the search "
                     "falls back to the teacher-text loss")
    # A seed task that is also in the uploaded set is never a validation task: the two parts share no instruction.
    candidates = [t for t in tasks if t not in uploaded]
    validation = set(random.Random(config.seed).sample(candidates, min(n, len(candidates))))
    train = [mark(r, TRAIN) for r in records if r.instruction not in validation]
    parts = [mark(r, VALIDATION) for r in records if r.instruction in validation] + test_part
    return Split(train, parts, f"{len(test_part)} test tasks from the uploaded evaluation set; {len(validation)} of "
                 f"{len(tasks)} seed tasks as validation (fractions {config.held_out_fraction} x "
                 f"{config.validation_fraction}, seed {config.seed})")


def mark(record: Record, split: str) -> Record:
    return replace(record, provenance={**record.provenance, SPLIT: split})


def is_held_out(record: Record) -> bool:
    """Validation or test: a task the teacher never sees."""
    return record.provenance.get(SPLIT) in (HELD_OUT, VALIDATION)


def is_validation(record: Record) -> bool:
    return record.provenance.get(SPLIT) == VALIDATION


def is_test(record: Record) -> bool:
    return record.provenance.get(SPLIT) == HELD_OUT


def partition(records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    """(tasks the teacher may see, held-out tasks: validation and test) of seed_dataset's rows."""
    return [r for r in records if not is_held_out(r)], [r for r in records if is_held_out(r)]


def eval_records(tasks, object_name: str) -> list[Record]:
    """Tasks of an uploaded evaluation set (id, instruction, input, reference) as canonical records."""
    return [
        Record(id=f"eval-{t.id}", instruction=t.instruction, input=t.input, output=t.reference,
               provenance={"format": "evaluation", "object": object_name})
        for t in tasks
    ]
