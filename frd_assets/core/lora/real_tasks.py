"""The user's own tasks in the LoRA search: the seed tasks join the training data, and the validation
tasks' loss is what the search minimises.

Why. A model trained on teacher text always scores a lower loss on more teacher text, so a search that
minimises the loss on a split of the generated records picks the adapter that imitates the teacher best,
not the one that answers the user's tasks best. Every fine-tuning recipe selects on a validation split of
the target distribution instead; here that is the held-out seed tasks' validation part (core/held_out.py):
the mean per-token NLL of each reference answer given its prompt, tokenized exactly as training tokenizes
(tokenize_record: the model's chat template, prompt masked). The teacher-text loss is still measured and
kept beside it in the trial table. The seed tasks that are not held out are the best data there is, so they
train too, repeated seed_task_weight times, each copy marked in provenance so that the card can count them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

from frd_assets.core.config_checks import Boolean, Integer, OneOf, check_fields
from frd_assets.core.held_out import is_held_out
from frd_assets.core.records import Record

REAL_TASKS, TEACHER_TEXT = "real_tasks", "teacher_text"
OBJECTIVES = (REAL_TASKS, TEACHER_TEXT)
TRAINING_SOURCE = "training_source"  # provenance key of a record that lora_adapter added to its training data
SEED_TASK = "seed_task"


@dataclass(frozen=True)
class RealTaskConfig:
    include_seed_tasks: bool = True  # the seed tasks that are not held out join the training data
    seed_task_weight: int = 1  # copies of each seed task in the training data (an epoch sees each that often)
    # What the search minimises: real_tasks (the validation tasks' loss; teacher_text where the seed gave no
    # validation tasks) or teacher_text (the loss on a split of the generated records, as before).
    objective: Literal["real_tasks", "teacher_text"] = REAL_TASKS

    def __post_init__(self) -> None:
        # 100 copies of one task is already memorising it; more is a typo.
        check_fields(self, "real-task config", {"include_seed_tasks": Boolean(), "seed_task_weight": Integer(1, 100),
                                                "objective": OneOf(OBJECTIVES)})


def seed_training_records(seed_records: Sequence[Record], config: RealTaskConfig) -> list[Record]:
    """The seed tasks that may train (not held out, with a reference output), each seed_task_weight times,
    marked as seed tasks in provenance; none when include_seed_tasks is false."""
    if not config.include_seed_tasks:
        return []
    usable = [r for r in seed_records if not is_held_out(r) and r.output.strip()]
    return [
        replace(r, id=f"{r.id}~{k}" if k else r.id, provenance={**r.provenance, TRAINING_SOURCE: SEED_TASK})
        for k in range(config.seed_task_weight)
        for r in usable
    ]


def is_seed_task(record: Record) -> bool:
    return record.provenance.get(TRAINING_SOURCE) == SEED_TASK


def resolve_objective(config: RealTaskConfig, n_validation: int) -> tuple[str, str]:
    """(the objective the search uses, a line saying why): real_tasks needs validation tasks."""
    if config.objective == TEACHER_TEXT:
        return TEACHER_TEXT, "objective teacher_text (run config): the loss on a split of the generated records"
    if n_validation == 0:
        return TEACHER_TEXT, ("objective teacher_text: the seed gave no validation tasks (see seed_dataset's "
                              "held_out_note); the loss on a split of the generated records steers the search")
    return REAL_TASKS, f"objective real_tasks: the loss on {n_validation} validation records of the user's seed tasks"
