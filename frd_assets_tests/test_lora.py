import json
import math
import random
from pathlib import Path

import optuna
import pytest
import torch

from frd_assets.core.chat_format import prompt_text
from frd_assets.core.config_checks import ConfigError
from frd_assets.core.lora.data import (
    IGNORE_INDEX,
    Example,
    batches,
    collate,
    length_grouped_batches,
    padded_share,
    split_records,
    tokenize_record,
)
from frd_assets.core.lora.search import SearchSpace, run_search
from frd_assets.core.lora.trial import LoraHyperparams, Pruned, TrainingConfig, evaluate_loss, run_trial
from frd_assets.core.models import load_causal_lm, load_tokenizer
from frd_assets.core.records import Record, parse_seed
from frd_assets.core.seeds import sample_seed

# The bundled sample seed as a file (core/seeds.py names it once).
SAMPLE_SEED = Path(str(sample_seed()))
# What "all-linear" means on a Llama: every projection of attention and MLP; never lm_head or embeddings.
LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]

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
    with pytest.raises(ValueError, match=r"rank must be in \[1, 16384\], got 0"):
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
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 3
    assert all(r["target_modules"] == "all-linear" and r["adapted_modules"] == LLAMA_LINEAR for r in rows)
    card = (out / "README.md").read_text()
    assert f"{second.best_eval_loss:.4f}" in card and f"{second.base_eval_loss:.4f}" in card
    assert f"| target_modules | all-linear ({', '.join(LLAMA_LINEAR)}) |" in card

    from peft import PeftModel

    model = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(out))
    _, evals = split_records(RECORDS, eval_fraction=0.2, seed=0)
    examples = [tokenize_record(tokenizer, r, max_length=256) for r in evals]
    reloaded = evaluate_loss(model, examples, batch_size=4, pad_id=tokenizer.pad_token_id)
    assert reloaded == pytest.approx(second.best_eval_loss, abs=1e-4)


# ---- target modules -----------------------------------------------------------------------------------------


def _saved_target_kinds(adapter_dir: Path) -> list[str]:
    """The module kinds in the adapter_config.json peft wrote (it stores one full path per layer)."""
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]
    return sorted({name.rsplit(".", 1)[-1] for name in saved})


def test_a_trial_adapts_every_linear_layer_by_default(tiny_model_dir, tokenizer, data, tmp_path):
    assert TrainingConfig().target_modules == "all-linear"
    result = run_trial(
        load_causal_lm(str(tiny_model_dir)), *data, LoraHyperparams(4, 8, 1e-3), TrainingConfig(epochs=1),
        pad_id=tokenizer.pad_token_id, save_dir=tmp_path / "adapter", print_fn=lambda _: None,
    )
    assert result.status == "ok"
    assert _saved_target_kinds(tmp_path / "adapter") == LLAMA_LINEAR  # lm_head and embed_tokens left alone
    assert result.target_modules == "all-linear" and result.adapted_modules == LLAMA_LINEAR
    assert result.to_dict()["adapted_modules"] == LLAMA_LINEAR  # what the search stores per trial


def test_target_modules_stays_a_setting(tiny_model_dir, tokenizer, data, tmp_path):
    config = TrainingConfig(epochs=1, target_modules=["q_proj", "v_proj"])
    assert config.target_modules == ("q_proj", "v_proj")  # a tuple, so the frozen config stays hashable
    result = run_trial(
        load_causal_lm(str(tiny_model_dir)), *data, LoraHyperparams(4, 8, 1e-3), config,
        pad_id=tokenizer.pad_token_id, save_dir=tmp_path / "adapter", print_fn=lambda _: None,
    )
    assert _saved_target_kinds(tmp_path / "adapter") == ["q_proj", "v_proj"]
    assert result.target_modules == ["q_proj", "v_proj"] and result.adapted_modules == ["q_proj", "v_proj"]
    assert TrainingConfig(target_modules=None).target_modules is None  # peft's per-architecture default
    # A list-typed launchpad field can carry the shorthand; peft would read ["all-linear"] as a module name.
    assert TrainingConfig(target_modules=["all-linear"]).target_modules == "all-linear"


@pytest.mark.parametrize("value", ["q_proj", "all_linear", [], [""], 3])
def test_target_modules_refuses_anything_else_naming_the_choices(value):
    with pytest.raises(ConfigError) as err:
        TrainingConfig(target_modules=value)
    assert str(err.value) == (
        'training config: target_modules must be "all-linear", a non-empty list of module names such as '
        f'["q_proj", "v_proj"], or null, got {value!r}'
    )


def test_all_linear_mixed_with_module_names_is_refused():
    with pytest.raises(ConfigError, match='target_modules must be "all-linear" alone or module names without it'):
        TrainingConfig(target_modules=["all-linear", "lm_head"])


# ---- length-grouped batches ---------------------------------------------------------------------------------


def test_length_grouped_batches_keep_every_example_once_and_change_across_epochs():
    rng = random.Random(7)
    lengths = [rng.randint(10, 300) for _ in range(103)]
    epochs = [length_grouped_batches(lengths, 4, seed=s) for s in range(3)]
    for groups in epochs:
        assert sorted(i for g in groups for i in g) == list(range(103))
        assert sorted(len(g) for g in groups) == [3] + [4] * 25  # as many steps as before: ceil(103 / 4)
        assert max(lengths) in [lengths[i] for i in groups[0]]  # the longest batch first: OOM shows at once
    assert epochs[0] != epochs[1] != epochs[2]  # still random from epoch to epoch
    assert epochs[0] == length_grouped_batches(lengths, 4, seed=0)  # and seeded
    # Sorted within groups of 50 batches: far less padding than an unsorted split of the same shuffle.
    shuffled = list(range(103))
    random.Random(0).shuffle(shuffled)
    unsorted = [shuffled[k : k + 4] for k in range(0, 103, 4)]
    assert padded_share(lengths, epochs[0]) < padded_share(lengths, unsorted) / 5


def test_evaluation_batches_are_sorted_and_deterministic():
    lengths = [5, 9, 1, 7, 3]
    assert length_grouped_batches(lengths, 2, seed=None) == [[1, 3], [0, 4], [2]]
    assert length_grouped_batches([], 2, seed=None) == [] and length_grouped_batches([], 2, seed=3) == []


def test_grouping_by_length_pads_less_on_the_sample_seed(tokenizer):
    records = parse_seed(SAMPLE_SEED.read_bytes(), SAMPLE_SEED.name)
    lengths = [len(tokenize_record(tokenizer, r, max_length=256).input_ids) for r in records]
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    before = padded_share(lengths, [order[k : k + 4] for k in range(0, len(order), 4)])  # the old batches
    after = padded_share(lengths, length_grouped_batches(lengths, 4, seed=0))
    assert after < before / 2, (before, after)


def _old_evaluate_loss(model, examples, *, batch_size, pad_id) -> float:
    """evaluate_loss as it was before length grouping: batches in the split's order, the same collate."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            n_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n_tokens
            count += n_tokens
    return total / count


def test_eval_loss_is_the_same_figure_as_before_length_grouping(tiny_model_dir, tokenizer):
    records = parse_seed(SAMPLE_SEED.read_bytes(), SAMPLE_SEED.name)
    examples = [tokenize_record(tokenizer, r, max_length=256) for r in records]
    model = load_causal_lm(str(tiny_model_dir))
    model.eval()
    pad = tokenizer.pad_token_id
    before = _old_evaluate_loss(model, examples, batch_size=4, pad_id=pad)
    assert evaluate_loss(model, examples, batch_size=4, pad_id=pad) == pytest.approx(before, abs=1e-5)
    # and the figure does not hang on the batch size either: one example at a time gives it too
    assert evaluate_loss(model, examples, batch_size=1, pad_id=pad) == pytest.approx(before, abs=1e-5)


def test_batches_hold_each_example_once_with_its_own_labels():
    examples = [Example(list(range(1, n + 1)), [IGNORE_INDEX] + list(range(2, n + 1))) for n in (3, 8, 5, 2, 6)]
    seen = []
    for batch in batches(examples, 2, pad_id=0, shuffle_seed=1):
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            n = int(mask.sum())
            assert ids[:n].tolist() == list(range(1, n + 1)) and labels[n:].eq(IGNORE_INDEX).all()
            seen.append(n)
    assert sorted(seen) == [2, 3, 5, 6, 8]


def test_the_study_name_changes_with_the_data_version_and_config_and_only_then():
    from dataclasses import asdict

    from frd_assets.core.lora.search import SearchSpace, study_name_for
    from frd_assets.core.lora.trial import TrainingConfig

    uuid = "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"

    def name(version: str, training: TrainingConfig | None = None) -> str:
        training = training or TrainingConfig()
        return study_name_for(uuid, "HuggingFaceTB/SmolLM2-135M-Instruct",
                              inputs={"data_version": version, "training": asdict(training),
                                      "space": asdict(SearchSpace())})

    # A retry of the same materialization continues its study...
    assert name("20261129T000000Z-aaaa") == name("20261129T000000Z-aaaa")
    assert name("20261129T000000Z-aaaa").startswith(f"frd-{uuid}-SmolLM2-135M-Instruct-")
    # ...new validated data, or another training config, starts a new one (never the old data's best trial).
    assert name("20261129T000000Z-aaaa") != name("20261130T000000Z-bbbb")
    assert name("20261129T000000Z-aaaa") != name("20261129T000000Z-aaaa", TrainingConfig(weight_decay=0.1))
    assert study_name_for(uuid, "m") == f"frd-{uuid}-m"  # `frd tune` names its study by the data file
