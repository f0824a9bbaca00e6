"""Adapter evaluation: task files, the statistics, answers with and without the adapter, the report, `frd evaluate`.

Models are real: the tiny trained chat model and a peft LoRA adapter saved in a fixture, its lora_B weights
set to random values so that it really changes what the model writes (peft initialises lora_B to zero, and
a zero adapter would answer exactly as the base model does).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.synthetic import random_lora_adapter
from frd_assets.cli import main
from frd_assets.core.chat_format import prompt_text, user_message
from frd_assets.core.config_checks import ConfigError
from frd_assets.core.evaluation import (
    REPORT_KEYS,
    EvalTask,
    EvaluationConfig,
    TaskFileError,
    eval_tasks_from_records,
    evaluate_adapter,
    generate_answers,
    load_eval_tasks,
)
from frd_assets.core.evaluation.stats import (
    bootstrap_mean_interval,
    position_consistency,
    rouge_l_scores,
    wilson_interval,
    win_rate,
)
from frd_assets.core.generation.prompts import ChatPrompt
from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher
from frd_assets.core.lora.adapter import AdapterError, base_model_for_adapter
from frd_assets.core.metrics.rouge_l import rouge_l_f
from frd_assets.core.metrics.text_units import words
from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import sample_seed
from frd_assets_tests.test_standalone import MAIN_WITHOUT_DAGSTER

# The bundled sample seed as a file (core/seeds.py names it once).
SAMPLE_SEED = Path(str(sample_seed()))


def make_adapter(base_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """An adapter that changes the tiny model's answers: rank 4, lora_B drawn with a large spread."""
    return random_lora_adapter(base_dir, out_dir, rank=4, alpha=8, std=0.5, seed=seed)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def sample_tasks() -> list[EvalTask]:
    return load_eval_tasks(SAMPLE_SEED.read_bytes(), SAMPLE_SEED.name)[0]


# ---- task files -------------------------------------------------------------------------------------------

def jsonl(*rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize(
    "data, expected, skipped",
    [
        # Self-Instruct: one task per instance with an output; an instance without one is skipped.
        (jsonl({"id": "s", "instruction": "Add.", "instances": [{"input": "1+1", "output": "2"},
                                                                 {"input": "2+2", "output": ""}]}),
         [("s#0", "Add.", "1+1", "2")], 1),
        # Alpaca: missing, null or empty output is skipped, the rest kept; a missing input is "".
        (jsonl({"instruction": "Name a fruit.", "output": "Apple"}, {"instruction": "Name a car."},
               {"instruction": "Say hi.", "input": "", "output": " "}, {"instruction": "Say no.", "output": None}),
         [("task-0", "Name a fruit.", "", "Apple")], 3),
        # Chat: each answered user turn is a task; an unanswered one, or a chat with no assistant turn, skipped.
        (jsonl({"id": "c", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Capital of France?"},
                                        {"role": "assistant", "content": "Paris."},
                                        {"role": "user", "content": "And of Spain?"}]},
               {"messages": [{"role": "user", "content": "Hello?"}]}),
         [("c", "Capital of France?", "", "Paris.")], 2),
        # A JSON array, in any of the formats.
        (json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Red"},
                     {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}],
                    indent=1).encode(),
         [("task-0", "Name a colour.", "", "Red"), ("task-1", "2+2?", "", "4")], 0),
    ],
    ids=["self-instruct", "alpaca", "chat", "json-array"],
)
def test_tasks_with_a_reference_are_read_and_the_rest_counted(data, expected, skipped):
    tasks, n_skipped = load_eval_tasks(data, "tasks.jsonl")
    assert [(t.id, t.instruction, t.input, t.reference) for t in tasks] == expected
    assert n_skipped == skipped


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', "tasks.jsonl line 2: invalid JSON"),
        (b'{"instruction": "caf\xe9", "output": "b"}\n', "tasks.jsonl line 1: not UTF-8"),
        (jsonl({"instruction": "a"}, {"instruction": "b", "output": ""}), "no task has a reference output (2 skipped)"),
        (jsonl({"instruction": "a", "output": "b"}, [1, 2]), "tasks.jsonl line 2: expected a JSON object"),
        (jsonl({"instruction": "a", "output": 3}), "tasks.jsonl line 1: field 'output' must be a string"),
        (jsonl({"prompt": "a", "completion": "b"}), "tasks.jsonl line 1: unknown task format"),
        (b'[\n{"instruction": "a", "output": "b"},\n"just text"\n]', "tasks.jsonl line 3: expected a JSON object"),
        (b"  \n", "tasks.jsonl: the file is empty"),
    ],
    ids=["bad-json", "not-utf8", "no-reference", "not-object", "output-not-string", "unknown-format",
         "bad-array", "empty"],
)
def test_unusable_task_files_fail_naming_the_object_and_line(data, fragment):
    with pytest.raises(TaskFileError) as err:
        load_eval_tasks(data, "tasks.jsonl")
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_held_out_records_become_tasks(sample_seed_bytes):
    records = parse_seed(sample_seed_bytes, SAMPLE_SEED.name)
    tasks = eval_tasks_from_records(records)
    assert [(t.id, t.instruction, t.input, t.reference) for t in tasks] == [
        (r.id, r.instruction, r.input, r.output) for r in records
    ]
    # The same file read as a task file gives the same tasks.
    assert load_eval_tasks(sample_seed_bytes, SAMPLE_SEED.name) == (tasks, 0)


# ---- statistics -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        (7, 10, 0.3968, 0.8922),  # the formula by hand: z = 1.959964, center 0.6445, half-width 0.2477
        (0, 10, 0.0, 0.2775),  # never wins: the interval still has width, unlike the normal approximation's
        (10, 10, 0.7225, 1.0),
        (6.5, 10, 0.3537, 0.8631),  # 6 wins, 1 tie, 3 losses: a tie counts half
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_matches_the_formula(successes, n, low, high):
    interval = wilson_interval(successes, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)


def test_wilson_interval_by_the_formula_written_out():
    z = 1.959963984540054
    p, n = 0.7, 10
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(7, 10) == pytest.approx((center - half, center + half), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_of_a_constant_difference_is_that_constant():
    assert bootstrap_mean_interval([0.1] * 7, samples=500) == (0.1, 0.1)
    assert bootstrap_mean_interval([-0.25], samples=500) == (-0.25, -0.25)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    diffs = [0.3, -0.1, 0.2, 0.0, 0.5, 0.1, -0.2, 0.4, 0.25, 0.05]
    interval = bootstrap_mean_interval(diffs, samples=2000, seed=0)
    assert interval == bootstrap_mean_interval(diffs, samples=2000, seed=0)
    assert interval != bootstrap_mean_interval(diffs, samples=2000, seed=1)
    assert min(diffs) < interval.low < sum(diffs) / len(diffs) < interval.high < max(diffs)
    # Two values 0 and 1: resampled means are 0, 0.5 or 1 (each end with chance 1/4), so the 2.5% and 97.5%
    # quantiles of 2,000 of them are the ends themselves.
    assert bootstrap_mean_interval([0.0, 1.0], samples=2000, seed=0) == (0.0, 1.0)
    # Resampling in blocks gives the same interval as the whole matrix at once would: only rows are split.
    many = [i % 7 / 7 for i in range(5000)]
    assert bootstrap_mean_interval(many, samples=1000, seed=3).low < sum(many) / len(many)


def test_win_rate_counts_a_tie_as_half_a_win():
    rate = win_rate(["win", "win", "tie", "loss"])
    assert (rate.wins, rate.ties, rate.losses, rate.rate) == (2, 1, 1, 0.625)
    assert rate.interval == wilson_interval(2.5, 4)
    with pytest.raises(ValueError, match="'win', 'tie' or 'loss'"):
        win_rate(["win", "draw"])


def test_position_consistency_is_the_share_of_agreeing_pairs():
    pairs = [("win", "win"), ("win", "tie"), (None, None), ("tie", "tie"), ("loss", "loss"), ("win", "loss")]
    assert position_consistency(pairs) == 0.5
    assert position_consistency([]) == 1.0


def test_rouge_scores_are_the_projects_rouge_l():
    refs, answers = ["The cat sat on the mat.", "Paris"], ["A cat sat on a mat", "It is Paris."]
    assert rouge_l_scores(refs, answers) == [rouge_l_f(r, a) for r, a in zip(refs, answers, strict=True)]
    with pytest.raises(ValueError, match="pair up"):
        rouge_l_scores(refs, answers[:1])


@pytest.mark.parametrize(
    "field, value",
    [("max_new_tokens", 0), ("batch_size", True), ("bootstrap_samples", 10), ("seed", -1), ("limit", 0),
     ("limit", 2.0)],
)
def test_evaluation_config_rejects_bad_values_by_name(field, value):
    with pytest.raises(ConfigError, match=f"evaluation config: {field} must be"):
        EvaluationConfig(**{field: value})


# ---- answers ----------------------------------------------------------------------------------------------

def test_base_answers_are_the_base_models_own_and_the_adapter_changes_them(tiny_model_dir, adapter_dir, sample_tasks):
    tasks = sample_tasks[:6]
    answers = generate_answers(tasks, base_model=str(tiny_model_dir), adapter_dir=adapter_dir, max_new_tokens=12,
                               batch_size=4, print_fn=lambda _: None)
    # The base model loaded on its own, with no peft in sight, through the teacher's chat rendering.
    alone = TransformersTeacher(str(tiny_model_dir), batch_size=4)
    prompts = [ChatPrompt(({"role": "user", "content": user_message(t.as_record())},)) for t in tasks]
    plain = [c.text.strip() for c in alone.complete(prompts, SamplingParams(max_new_tokens=12, temperature=0))]
    assert answers.base.texts == plain  # disable_adapter() really gives the base model
    assert answers.adapter.texts != answers.base.texts
    assert sum(a != b for a, b in zip(answers.adapter.texts, answers.base.texts, strict=True)) >= 3
    assert answers.base.tokens > 0 and answers.adapter.tokens > 0
    assert answers.base.seconds > 0 and answers.tokens_per_second > 0


def test_tasks_are_shown_in_the_prompt_the_adapter_was_trained_on(tiny_model_dir, adapter_dir):
    from frd_assets.core.evaluation.answers import AnswerModel

    model = AnswerModel(str(tiny_model_dir), adapter_dir)
    task = EvalTask("t", "Rewrite the sentence.", "The cat sat.", "The cat was sitting.")
    chat = ChatPrompt(({"role": "user", "content": user_message(task.as_record())},))
    # With a chat template: the template, exactly as the teacher renders the same user message.
    assert model.prompt(task) == model.teacher.render(chat) == prompt_text(model.tokenizer, task.as_record())
    # Without one: Alpaca's prompt, as lora.data trained the adapter, not the teacher's bare text.
    model.tokenizer.chat_template = None
    assert model.prompt(task) == prompt_text(model.tokenizer, task.as_record()) != model.teacher.render(chat)
    assert model.prompt(task).endswith("### Input:\nThe cat sat.\n\n### Response:\n")


def test_an_adapter_for_another_model_fails_naming_both(tiny_model_dir, adapter_dir, tmp_path, sample_tasks):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_proj"]}))
    (wrong / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match=r"does not fit base model .*--base-model"):
        generate_answers(sample_tasks[:1], base_model=str(tiny_model_dir), adapter_dir=wrong, print_fn=print)


def test_an_adapter_folder_needs_its_config_and_safetensors(tmp_path, adapter_dir):
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        base_model_for_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors; only safetensors"):
        base_model_for_adapter(tmp_path)


def test_the_base_model_is_the_adapters_when_it_is_here_else_the_configured_one(tiny_model_dir, adapter_dir, tmp_path):
    # peft records the folder the base model was loaded from.
    assert base_model_for_adapter(adapter_dir, env={}) == str(tiny_model_dir)
    moved = tmp_path / "moved"
    moved.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/gone/model"}))
    (moved / "adapter_model.safetensors").write_bytes(b"")
    notes = []
    assert base_model_for_adapter(moved, env={"LORA_MODEL_NAME": "my-base"}, print_fn=notes.append) == "my-base"
    assert base_model_for_adapter(moved, env={}, print_fn=notes.append) == "SmolLM2-135M-Instruct"
    assert "'/gone/model' is not available here" in notes[0]


# ---- the report -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tiny_model_dir, adapter_dir, sample_tasks):
    return evaluate_adapter(
        sample_tasks, base_model=str(tiny_model_dir), adapter_dir=adapter_dir, skipped=2,
        config=EvaluationConfig(max_new_tokens=10, limit=12, bootstrap_samples=500), print_fn=lambda _: None,
    )


def test_report_has_exactly_the_documented_keys(report):
    d = report.to_dict()
    assert tuple(d) == REPORT_KEYS == (
        "n", "skipped", "base_model", "adapter", "rouge_l", "judge", "length", "seconds", "samples"
    )
    assert set(d["rouge_l"]) == {"base", "adapter", "diff", "diff_ci", "signature"}
    assert "tokenizer:unicode-v1" in d["rouge_l"]["signature"]
    assert set(d["length"]) == {"base_words", "adapter_words"}
    assert d["judge"] is None
    assert (d["n"], d["skipped"]) == (12, 2)
    assert len(d["samples"]) == 10
    assert all(set(s) == {"instruction", "reference", "base", "adapter", "verdict"} for s in d["samples"])
    assert json.loads(json.dumps(d)) == d  # plain JSON: lists, not tuples or numpy numbers


def test_report_figures_follow_from_the_rows(report):
    rows = report.answers
    assert len(rows) == 12
    assert set(rows[0]) == {"id", "instruction", "input", "reference", "base", "adapter", "rouge_l_base",
                            "rouge_l_adapter", "verdict", "verdicts_both_orders"}
    for row in rows:
        assert row["rouge_l_base"] == rouge_l_f(row["reference"], row["base"])
        assert row["rouge_l_adapter"] == rouge_l_f(row["reference"], row["adapter"])
    base = sum(r["rouge_l_base"] for r in rows) / 12
    tuned = sum(r["rouge_l_adapter"] for r in rows) / 12
    assert report.rouge_base == pytest.approx(base) and report.rouge_adapter == pytest.approx(tuned)
    assert report.rouge_diff == pytest.approx(tuned - base)
    lo, hi = report.to_dict()["rouge_l"]["diff_ci"]
    assert lo <= report.rouge_diff <= hi
    assert report.adapter_beats_base == (tuned > base)
    assert report.interval_excludes_no_difference == (lo > 0 or hi < 0)
    assert report.base_words == pytest.approx(sum(len(words(r["base"])) for r in rows) / 12)
    assert report.tokens_per_second > 0


def test_report_as_markdown_says_only_reference_metrics_were_computed(report):
    table = report.markdown_table()
    assert table.startswith("| figure | value |\n|---|---|\n")
    assert "ROUGE-L difference (adapter - base)" in table and "95% bootstrap" in table
    assert "reference metrics only" in table
    samples = report.samples_markdown(3)
    assert len(samples.splitlines()) == 2 + 3
    assert "reference metrics only" in "\n".join(report.summary_lines())


def test_samples_markdown_keeps_each_answer_in_its_cell(report):
    row = {**report.answers[0], "base": "a | b\nc", "input": "x"}
    report.answers.insert(0, row)
    try:
        line = report.samples_markdown(1).splitlines()[2]
    finally:
        report.answers.pop(0)
    assert "a \\| b<br>c" in line and line.count(" | ") == 4


# ---- frd evaluate -----------------------------------------------------------------------------------------

def test_frd_evaluate_prints_the_figures_and_two_samples(tiny_model_dir, adapter_dir, capsys, monkeypatch):
    for name in ("JUDGE_BASE_URL", "JUDGE_MODEL", "JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    rc = main(["evaluate", str(adapter_dir), "--tasks", str(SAMPLE_SEED), "--limit", "4", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "4 tasks (0 skipped without a reference)" in out
    assert f"base {tiny_model_dir}" in out  # taken from the adapter's config
    assert "ROUGE-L F vs reference: base" in out
    assert "no judge configured: reference metrics only" in out
    assert out.count("  reference: ") == 2 and out.count("  adapter:   ") == 2


def test_frd_evaluate_json_is_one_object_and_never_imports_dagster(tiny_model_dir, adapter_dir):
    # main() in a fresh interpreter, so sys.modules shows exactly what the evaluate command imported.
    code = MAIN_WITHOUT_DAGSTER
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUDGE_")}
    proc = subprocess.run(
        [sys.executable, "-c", code, "evaluate", str(adapter_dir), "--tasks", str(SAMPLE_SEED), "--limit", "3",
         "--max-new-tokens", "8", "--base-model", str(tiny_model_dir), "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    report = json.loads(line)
    assert list(report) == list(REPORT_KEYS)
    assert report["n"] == 3 and len(report["samples"]) == 3 and report["judge"] is None


def _bad_files(tmp: Path, adapter_dir: Path) -> dict[str, list[str]]:
    (tmp / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    (tmp / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "b"}\n')
    (tmp / "noref.jsonl").write_text('{"instruction": "a"}\n{"messages": [{"role": "user", "content": "b"}]}\n')
    (tmp / "empty-adapter").mkdir()
    good = str(SAMPLE_SEED)
    return {
        "missing tasks file": [str(adapter_dir), "--tasks", str(tmp / "nope.jsonl")],
        "malformed tasks file": [str(adapter_dir), "--tasks", str(tmp / "bad.jsonl")],
        "tasks file not UTF-8": [str(adapter_dir), "--tasks", str(tmp / "latin1.jsonl")],
        "no usable tasks": [str(adapter_dir), "--tasks", str(tmp / "noref.jsonl")],
        "unreadable tasks file": [str(adapter_dir), "--tasks", str(tmp)],
        "adapter without config": [str(tmp / "empty-adapter"), "--tasks", good],
        "base model not there": [str(adapter_dir), "--tasks", good, "--base-model", str(tmp / "no-model")],
        "limit below one": [str(adapter_dir), "--tasks", good, "--limit", "0"],
        "judge url without model": [str(adapter_dir), "--tasks", good, "--judge-url", "http://127.0.0.1:9/v1"],
    }


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing tasks file", "No such file"),
        ("malformed tasks file", "bad.jsonl line 2: invalid JSON"),
        ("tasks file not UTF-8", "latin1.jsonl line 1: not UTF-8"),
        ("no usable tasks", "no task has a reference output (2 skipped)"),
        ("unreadable tasks file", "Is a directory"),
        ("adapter without config", "has no adapter_config.json"),
        ("base model not there", "no-model"),
        ("limit below one", "limit must be in [1, 1000000]"),
        ("judge url without model", "needs the name of the model it serves"),
    ],
)
def test_frd_evaluate_bad_input_is_one_line_and_exit_2(case, fragment, adapter_dir, tmp_path, capsys, monkeypatch):
    for name in ("JUDGE_BASE_URL", "JUDGE_MODEL", "JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    rc = main(["evaluate", *_bad_files(tmp_path, adapter_dir)[case]])
    err = capsys.readouterr().err
    assert rc == 2
    [line] = err.splitlines()
    assert line.startswith("error: ") and fragment in line
