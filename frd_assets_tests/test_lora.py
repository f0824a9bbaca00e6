import json
import math

import optuna
import pytest
import torch

from frd_assets.core.lora.data import IGNORE_INDEX, prompt_text, split_records, tokenize_record
from frd_assets.core.lora.search import SearchSpace, run_search
from frd_assets.core.lora.trial import LoraHyperparams, Pruned, TrainingConfig, evaluate_loss, run_trial
from frd_assets.core.models import load_causal_lm, load_tokenizer
from frd_assets.core.records import Record

RECORDS = [
    Record(
        f"r{i}",
        f"Describe the quiet river number {i}.",
        "" if i % 2 else f"context {i}",
        f"The river {i} is calm and green.",
    )
    for i in range(12)
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_prompt_tokens_are_masked_and_response_ends_with_eos(tokenizer):
    ex = tokenize_record(tokenizer, RECORDS[0], max_length=512)
    n_prompt = len(tokenizer(prompt_text(tokenizer, RECORDS[0]), add_special_tokens=False)["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    assert "context 0" in prompt_text(tokenizer, RECORDS[0])


def test_truncation_cuts_the_prompt_before_the_response(tokenizer):
    full = tokenize_record(tokenizer, RECORDS[0], max_length=512)
    short = tokenize_record(tokenizer, RECORDS[0], max_length=len(full.input_ids) - 5)
    assert len(short.input_ids) == len(full.input_ids) - 5
    assert short.input_ids[-3:] == full.input_ids[-3:]


def test_alpaca_prompt_when_there_is_no_chat_template(tokenizer):
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        assert prompt_text(tokenizer, RECORDS[0]).endswith("### Response:\n")
    finally:
        tokenizer.chat_template = template


def test_split_is_seeded_and_never_empty():
    train, evals = split_records(RECORDS, eval_fraction=0.2, seed=3)
    assert (train, evals) == split_records(RECORDS, eval_fraction=0.2, seed=3)
    assert len(evals) == 2 and len(train) == 10 and not {r.id for r in train} & {r.id for r in evals}
    assert len(split_records(RECORDS[:2], eval_fraction=0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match="at least 2 records"):
        split_records(RECORDS[:1], eval_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def data(tokenizer):
    train, evals = split_records(RECORDS, eval_fraction=0.25, seed=0)
    return (
        [tokenize_record(tokenizer, r, max_length=128) for r in train],
        [tokenize_record(tokenizer, r, max_length=128) for r in evals],
    )


def test_trial_trains_reports_and_leaves_the_base_model_unchanged(tiny_model_dir, tokenizer, data):
    model = load_causal_lm(str(tiny_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reports = []
    result = run_trial(
        model,
        *data,
        LoraHyperparams(8, 16, 3e-3),
        TrainingConfig(epochs=2, batch_size=3),
        pad_id=tokenizer.pad_token_id,
        report=lambda step, loss: reports.append((step, loss)),
        print_fn=lambda _: None,
    )
    assert result.status == "ok" and math.isfinite(result.eval_loss)
    assert result.steps == 2 * math.ceil(9 / 3)
    assert result.train_tokens > 0 and result.tokens_per_second > 0
    assert reports and result.eval_history[-1] == (result.steps, result.eval_loss)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    base_loss = evaluate_loss(model, data[1], batch_size=3, pad_id=tokenizer.pad_token_id)
    assert result.eval_loss < base_loss  # a high learning rate on 9 near-identical records: it must learn


def test_a_pruned_trial_stops_early(tiny_model_dir, tokenizer, data):
    model = load_causal_lm(str(tiny_model_dir))

    def prune(step, loss):
        raise Pruned()

    result = run_trial(
        model,
        *data,
        LoraHyperparams(4, 4, 1e-4),
        TrainingConfig(epochs=3, batch_size=3),
        pad_id=tokenizer.pad_token_id,
        report=prune,
        print_fn=lambda _: None,
    )
    # Stopped at its first report, a third of the way: 9 records, batch 3, 3 epochs, 2 reports.
    assert result.status == "pruned" and result.steps == 4 and len(result.eval_history) == 1


def test_hyperparameters_reject_bad_values():
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        LoraHyperparams(0, 8, 1e-4)
    with pytest.raises(ValueError, match="search space"):
        SearchSpace(rank_min=8, rank_max=4)


def test_search_picks_the_best_trial_resumes_and_its_adapter_reloads(tiny_model_dir, tokenizer, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs = dict(
        base_model=str(tiny_model_dir),
        storage_url=storage,
        study_name="s",
        work_dir=tmp_path / "work",
        training=TrainingConfig(epochs=2, batch_size=4, evals_per_trial=1),
        print_fn=lambda _: None,
    )
    first = run_search(RECORDS, n_trials=2, out_dir=tmp_path / "out1", **kwargs)
    assert len(first.trials) == 2
    second = run_search(RECORDS, n_trials=3, out_dir=tmp_path / "out2", **kwargs)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]  # resumed: the first two were not run again
    assert [t.params for t in study.trials[:2]] == [t["params"] for t in first.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert second.best_eval_loss == min(t.value for t in complete)
    assert second.best_params == study.best_trial.params

    out = tmp_path / "out2"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "trials.json",
    ]
    assert len(json.loads((out / "trials.json").read_text())) == 3
    card = (out / "README.md").read_text()
    assert f"{second.best_eval_loss:.4f}" in card and f"{second.base_eval_loss:.4f}" in card

    from peft import PeftModel

    model = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(out))
    _, evals = split_records(RECORDS, eval_fraction=0.2, seed=0)
    examples = [tokenize_record(tokenizer, r, max_length=256) for r in evals]
    reloaded = evaluate_loss(model, examples, batch_size=4, pad_id=tokenizer.pad_token_id)
    assert reloaded == pytest.approx(second.best_eval_loss, abs=1e-4)
