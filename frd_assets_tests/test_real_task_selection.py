"""Issue 21: the adapter is chosen on the user's own tasks (validation), reported on others (test), trained
on the seed tasks too, compared with its base model, and stopped early when validation loss rises."""

import pytest

from frd_assets.core.held_out import (
    MIN_TASKS_FOR_VALIDATION,
    HeldOutConfig,
    is_held_out,
    is_test,
    is_validation,
    partition,
    split_held_out,
    split_with_uploaded_test,
)
from frd_assets.core.records import Record


def tasks(n: int, instances: int = 1, prefix: str = "Task") -> list[Record]:
    return [Record(f"{prefix}{i}#{j}", f"{prefix} number {i} about topic {i * 7}.", f"in {j}", f"out {i}.{j}")
            for i in range(n) for j in range(instances)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_validation_and_test_never_share_an_instruction_and_the_teacher_sees_neither(seed):
    split = split_held_out(tasks(40, instances=2), HeldOutConfig(held_out_fraction=0.4, seed=seed))
    validation = {r.instruction for r in split.validation}
    test = {r.instruction for r in split.test}
    assert len(validation) == len(test) == 8  # 16 held out, half and half
    assert not validation & test and not (validation | test) & {r.instruction for r in split.train}
    # What generation is given (partition's first half) holds neither part.
    seeds, held = partition(split.train + split.held_out)
    assert not any(is_held_out(r) for r in seeds) and {r.instruction for r in held} == validation | test
    assert "8 validation, 8 test" in split.note


def test_too_few_held_out_tasks_are_all_test_and_the_note_says_so():
    split = split_held_out(tasks(12), HeldOutConfig(held_out_fraction=0.2))  # 2 held out
    assert split.validation == [] and len(split.test) == 2
    assert f"fewer than {MIN_TASKS_FOR_VALIDATION}: all test, no validation tasks" in split.note


def test_an_uploaded_evaluation_set_is_the_test_part_and_validation_comes_from_the_seed():
    seed, uploaded = tasks(40), tasks(5, prefix="Eval")
    split = split_with_uploaded_test(seed + [], uploaded + [seed[0]], HeldOutConfig())
    assert {r.instruction for r in split.test} == {r.instruction for r in uploaded + [seed[0]]}
    assert all(is_test(r) for r in split.test) and len(split.validation) == 4  # 40 x 0.2 x 0.5
    assert seed[0].instruction not in {r.instruction for r in split.validation}  # never in both parts
    assert all(is_validation(r) for r in split.validation) and len(split.train) == 36
    small = split_with_uploaded_test(tasks(12), uploaded, HeldOutConfig())
    assert small.validation == [] and "no validation tasks" in small.note
