"""Issue 21: the adapter is chosen on the user's own tasks (validation), reported on others (test), trained
on the seed tasks too, compared with its base model, and stopped early when validation loss rises."""

import dataclasses

import optuna
import pytest

from frd_assets.core.config_checks import ConfigError
from frd_assets.core.held_out import (
    HELD_OUT,
    MIN_TASKS_FOR_VALIDATION,
    TRAIN,
    VALIDATION,
    HeldOutConfig,
    is_held_out,
    is_test,
    is_validation,
    mark,
    partition,
    split_held_out,
    split_with_uploaded_test,
)
from frd_assets.core.lora.data import tokenize_record
from frd_assets.core.lora.real_tasks import RealTaskConfig, is_seed_task, seed_training_records
from frd_assets.core.lora.search import SearchSettings, history_markdown, run_search
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig, run_trial
from frd_assets.core.lora.worker import SearchJob
from frd_assets.core.models import load_causal_lm, load_tokenizer
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


# ---- seed tasks in training, the validation objective, the base candidate, early stopping ---------------------
# One fixture where the two losses disagree: the generated records all answer "The river i is calm and green.",
# the validation tasks ask the same kind of question and their references are the base model's own greedy
# answers, which it already finds likely. A high learning rate learns the teacher's answer (low teacher-text
# loss) and so moves away from those references (higher validation loss); a tiny one barely moves from the
# base model on either.

GENERATED = [Record(f"g{i}", f"Describe the quiet river number {i}.", "", f"The river {i} is calm and green.")
             for i in range(12)]
SEED = (
    [mark(Record(f"s{i}", f"Name the colour of stone {i}.", "", f"Stone {i} is grey."), TRAIN) for i in range(3)]
    + [mark(Record(f"v{i}", f"Describe the quiet river number {i + 20}.", "", "(the base model's answer)"),
            VALIDATION) for i in range(3)]
    + [mark(Record("t0", "Describe the quiet river number 40.", "", "Never seen by the search."), HELD_OUT)]
)
LOW_LR, HIGH_LR = {"rank": 4, "lora_alpha": 4, "learning_rate": 1e-5}, {"rank": 8, "lora_alpha": 16,
                                                                         "learning_rate": 5e-3}


def test_seed_training_records_repeat_and_mark_the_trainable_seed_tasks():
    assert [r.id for r in seed_training_records(SEED, RealTaskConfig())] == ["s0", "s1", "s2"]
    doubled = seed_training_records(SEED, RealTaskConfig(seed_task_weight=2))
    assert len(doubled) == 6 and all(is_seed_task(r) for r in doubled) and len({r.id for r in doubled}) == 6
    assert seed_training_records(SEED, RealTaskConfig(include_seed_tasks=False)) == []


@pytest.mark.parametrize("bad, message", [
    ({"seed_task_weight": 0}, r"seed_task_weight must be in \[1, 100\], got 0"),
    ({"seed_task_weight": 1000}, r"seed_task_weight must be in \[1, 100\]"),
    ({"include_seed_tasks": 1}, "include_seed_tasks must be true or false"),
    ({"objective": "rouge"}, "objective must be one of 'real_tasks', 'teacher_text'"),
])
def test_the_real_task_config_is_range_checked(bad, message):
    with pytest.raises(ConfigError, match=message):
        RealTaskConfig(**bad)


@pytest.fixture(scope="module")
def seed(tiny_model_dir) -> list[Record]:
    """SEED with each validation task's reference set to the base model's greedy answer."""
    import torch

    from frd_assets.core.lora.data import prompt_text

    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_causal_lm(str(tiny_model_dir))
    out = []
    for r in SEED:
        if is_validation(r):
            ids = tokenizer(prompt_text(tokenizer, r), add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                answer = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
            r = dataclasses.replace(r, output=tokenizer.decode(answer, skip_special_tokens=True).strip() or "ok")
        out.append(r)
    return out


def _search(tmp_path, tiny_model_dir, seed, name: str, enqueued: list[dict], **kwargs):
    """A search whose trials are the given parameters, in order (enqueued before the workers ask)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    for params in enqueued:
        study.enqueue_trial(params)
    lines = []
    result = run_search(GENERATED, base_model=str(tiny_model_dir), n_trials=len(enqueued), storage_url=storage,
                        study_name=name, work_dir=tmp_path / name, out_dir=tmp_path / f"{name}-out",
                        training=TrainingConfig(epochs=3, batch_size=4, evals_per_trial=3),
                        settings=SearchSettings(pruner="none"), seed_records=seed, print_fn=lines.append, **kwargs)
    return result, lines


def test_the_search_picks_by_validation_loss_trains_on_seed_tasks_and_counts_them(tmp_path, tiny_model_dir, seed):
    result, lines = _search(tmp_path, tiny_model_dir, seed, "pick", [HIGH_LR, LOW_LR])
    high, low = result.trials
    # The fixture: the two figures disagree on which trial is better ...
    assert high["eval_loss"] < low["eval_loss"] and high["validation_loss"] > low["validation_loss"]
    # ... and the search went by the validation tasks, not the teacher text.
    assert result.objective == "real_tasks" and result.best_params == LOW_LR
    assert result.best_validation_loss == low["validation_loss"] == low["value"]
    assert result.best_eval_loss == low["eval_loss"]  # the second column, of the same trial
    # The seed's trainable tasks reached the trainer: the job every trial worker read holds them.
    job = SearchJob.read(tmp_path / "pick" / "search.json")
    assert result.seed_task_records == 3 and len(job.train) == result.train_records == 10 + 3
    assert len(job.validation) == result.validation_records == 3  # the test task is not among them
    card = (tmp_path / "pick-out" / "README.md").read_text()
    assert "and 3 of the user's own seed tasks" in card and f"{result.base_validation_loss:.4f}" in card
    assert "| validation loss | eval loss |" in history_markdown(result.trials)


def test_when_no_trial_beats_the_base_model_the_run_says_so_in_one_line(tmp_path, tiny_model_dir, seed):
    result, lines = _search(tmp_path, tiny_model_dir, seed, "base-wins", [HIGH_LR])
    assert not result.beats_base and result.best_validation_loss > result.base_validation_loss
    verdict = result.verdict()
    assert verdict.startswith("no trial beat the base model on validation-task loss") and "\n" not in verdict
    assert "marked not better" in verdict and verdict in (tmp_path / "base-wins-out" / "README.md").read_text()
    # Under objective teacher_text the same trial beats the base model on teacher text: the two can differ.
    teacher, _ = _search(tmp_path, tiny_model_dir, seed, "teacher", [HIGH_LR],
                         real_tasks=RealTaskConfig(objective="teacher_text"))
    assert teacher.objective == "teacher_text" and teacher.beats_base and teacher.validation_records == 0


def test_early_stopping_stops_a_trial_whose_validation_loss_rises_and_keeps_its_best_weights(tiny_model_dir, seed):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir))
    tokens = lambda records: [tokenize_record(tokenizer, r, max_length=128) for r in records]  # noqa: E731
    validation = tokens([r for r in seed if is_validation(r)])
    config = TrainingConfig(epochs=4, batch_size=2, evals_per_trial=8, early_stopping_patience=1)
    result = run_trial(model, tokens(GENERATED[:10]), tokens(GENERATED[10:]), LoraHyperparams(8, 16, 5e-3), config,
                       pad_id=tokenizer.pad_token_id, print_fn=lambda _: None, validation=validation)
    losses = [loss for _, loss in result.validation_history]
    # Patience 1: it trained while each evaluation was a new best and stopped at the first that was not.
    assert result.stopped_early and result.steps < 4 * 5
    assert all(b < a for a, b in zip(losses[:-2], losses[1:-1], strict=True)) and losses[-1] >= min(losses[:-1])
    best = min(losses)
    assert result.validation_loss == best and dict(result.validation_history)[result.best_step] == best
    # With patience 0 it trains every step.
    full = run_trial(model, tokens(GENERATED[:10]), tokens(GENERATED[10:]), LoraHyperparams(8, 16, 5e-3),
                     TrainingConfig(epochs=4, batch_size=2, evals_per_trial=8, early_stopping_patience=0),
                     pad_id=tokenizer.pad_token_id, print_fn=lambda _: None, validation=validation)
    assert not full.stopped_early and full.steps == 4 * 5
