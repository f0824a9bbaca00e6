"""The pairwise judge: verdict parsing, the both-orders rule, and real judges (an endpoint and a local model).

The logic tests drive the Judge with ScriptedTeacher, a small real Teacher that answers each judge prompt
from a script; what is under test there is the Judge's parsing and aggregation, not a model. The real
judges are the tiny chat model behind `transformers serve` and loaded locally: it was never taught the
verdict format, so most replies are unparsable, and those tests check the counting, not the quality.
"""

import json
import re

import pytest

from frd_assets.cli import main
from frd_assets.core.evaluation import (
    JUDGE_PROMPT_VERSION,
    REPORT_KEYS,
    EvalTask,
    EvaluationConfig,
    Judge,
    evaluate_adapter,
    judge_settings_from_env,
    make_judge,
)
from frd_assets.core.evaluation.judge import combine, judge_prompt, parse_verdict
from frd_assets.core.evaluation.report import summarize_judgements
from frd_assets.core.generation.teachers import Completion
from frd_assets_tests.test_evaluation import SAMPLE_SEED, make_adapter

TASKS = [EvalTask(f"t{i}", f"Task number {i}.", "some input" if i % 2 else "", f"Reference {i}.") for i in range(6)]
ADAPTER = [f"ADAPTER answer {i}" for i in range(6)]
BASE = [f"BASE answer {i}" for i in range(6)]


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A is more complete.\nVerdict: A", "A"),
        ("Both miss the point.\nVerdict: tie", "tie"),
        ("verdict:b", "B"),  # case and spaces are forgiven
        ("  VERDICT :  Tie  \n\n", "tie"),  # trailing blank lines too
        ("**Verdict: A**", "A"),  # markdown bold
        ("**Verdict:** B.", "B"),
        ("Verdict: A\nActually, on reflection, B is better.", "unparsable"),  # the verdict must end the reply
        ("Verdict: A or B", "unparsable"),
        ("Verdict: C", "unparsable"),
        ("A is better.", "unparsable"),
        ("The verdict: A", "unparsable"),
        ("", "unparsable"),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    "adapter_as_a, base_as_a, outcome, consistent, unparsable",
    [
        ("A", "B", "win", True, 0),  # the adapter's answer wins in both places
        ("B", "A", "loss", True, 0),
        ("tie", "tie", "tie", True, 0),
        ("A", "A", "tie", False, 0),  # whatever is shown first wins: position bias, a tie
        ("A", "tie", "tie", False, 0),
        ("unparsable", "B", "tie", False, 1),
        ("unparsable", "unparsable", "tie", False, 2),
    ],
)
def test_two_orders_decide_only_when_they_agree(adapter_as_a, base_as_a, outcome, consistent, unparsable):
    judged = combine(adapter_as_a, base_as_a)
    assert (judged.outcome, judged.consistent, judged.unparsable) == (outcome, consistent, unparsable)
    assert judged.verdicts_both_orders() == {"adapter_as_a": adapter_as_a, "base_as_a": base_as_a}


class ScriptedTeacher:
    """A Teacher whose reply to a judge prompt is scripted per task and per order of the two answers."""

    name = "scripted"

    def __init__(self, script: dict[str, tuple[str, str]]):
        self.script = script  # task instruction -> (reply with the adapter as A, reply with the base as A)
        self.params = []

    def complete(self, prompts, params):
        self.params.append(params)
        out = []
        for prompt in prompts:
            text = prompt.messages[-1]["content"]
            instruction = re.search(r"### Task\n(.*)", text).group(1)
            adapter_is_a = "### Answer A\nADAPTER" in text
            assert adapter_is_a != ("### Answer B\nADAPTER" in text)
            reply = self.script[instruction][0 if adapter_is_a else 1]
            out.append(Completion(text=reply, finish_reason="stop", completion_tokens=len(reply.split())))
        return out


def test_judge_asks_both_orders_at_temperature_zero_and_adds_up():
    script = {
        "Task number 0.": ("Verdict: A", "Verdict: B"),  # win
        "Task number 1.": ("Reason.\nVerdict: A", "Verdict: b"),  # win
        "Task number 2.": ("Verdict: B", "Verdict: A"),  # loss
        "Task number 3.": ("Verdict: A", "Verdict: A"),  # flips with the order: tie, inconsistent
        "Task number 4.": ("I like both.", "Verdict: B"),  # one unparsable: tie
        "Task number 5.": ("Verdict: tie", "Verdict: TIE"),  # tie, consistent
    }
    teacher = ScriptedTeacher(script)
    judged = Judge(teacher, max_new_tokens=64).judge(TASKS, ADAPTER, BASE)
    assert [j.outcome for j in judged] == ["win", "win", "loss", "tie", "tie", "tie"]
    assert judged[4].replies == ("I like both.", "Verdict: B")
    assert [p.temperature for p in teacher.params] == [0] and teacher.params[0].max_new_tokens == 64
    summary = summarize_judgements(judged, "scripted")
    assert (summary.wins.wins, summary.wins.ties, summary.wins.losses) == (2, 3, 1)
    assert summary.wins.rate == (2 + 3 / 2) / 6
    assert summary.position_consistency == 4 / 6
    assert summary.unparsable == 1
    d = summary.to_dict()
    assert d["interval"] == "wilson" and d["prompt_version"] == JUDGE_PROMPT_VERSION
    assert d["win_rate_ci"][0] < d["win_rate"] < d["win_rate_ci"][1]


def test_judge_prompt_shows_task_reference_and_both_answers():
    prompt = judge_prompt(TASKS[1], "first answer", "")
    text = prompt.messages[-1]["content"]
    assert "Task number 1.\n\nInput:\nsome input" in text
    assert "### Reference answer\nReference 1." in text
    assert "### Answer A\nfirst answer" in text and "### Answer B\n(empty)" in text
    assert text.rstrip().endswith('"Verdict: A", "Verdict: B" or "Verdict: tie".')
    assert prompt.messages[0]["role"] == "system"


def test_make_judge_names_the_model_and_host_never_the_key():
    assert make_judge() is None
    judge = make_judge(base_url="http://user:pw@judge.example:8001/v1", model="m-7b", api_key="sk-secret-123")
    assert judge.identity == "m-7b @ judge.example:8001"
    assert "sk-secret" not in judge.identity + repr(judge) + repr(judge.teacher)
    assert "pw" not in judge.identity
    with pytest.raises(ValueError, match="needs the name of the model it serves: set JUDGE_MODEL"):
        make_judge(base_url="http://judge.example:8001/v1")
    env = {"JUDGE_BASE_URL": "http://h:1/v1", "JUDGE_MODEL": "m", "JUDGE_API_KEY": ""}
    assert judge_settings_from_env(env) == {"base_url": "http://h:1/v1", "model": "m", "api_key": None}


# ---- real judges ------------------------------------------------------------------------------------------

def check_counting(judged, n):
    summary = summarize_judgements(judged, "judge")
    assert len(judged) == n
    assert summary.wins.wins + summary.wins.ties + summary.wins.losses == n
    assert 0 <= summary.unparsable <= 2 * n
    for j in judged:
        assert len(j.replies) == 2
        assert [parse_verdict(r) for r in j.replies] == [j.adapter_as_a, j.base_as_a]
        if j.unparsable or not j.consistent:
            assert j.outcome == "tie"
    assert summary.position_consistency == sum(j.consistent for j in judged) / n


def test_a_judge_behind_an_openai_compatible_endpoint(server, tiny_model_dir):
    judge = make_judge(base_url=server, model=str(tiny_model_dir), api_key="sk-test", max_new_tokens=24)
    assert judge.identity == f"{tiny_model_dir} @ {server.split('//')[1].split('/')[0]}"
    check_counting(judge.judge(TASKS[:3], ADAPTER[:3], BASE[:3]), 3)


def test_a_local_judge(tiny_model_dir):
    judge = make_judge(model=str(tiny_model_dir), max_new_tokens=24)
    assert judge.identity == f"{tiny_model_dir} (local transformers)"
    check_counting(judge.judge(TASKS, ADAPTER, BASE), 6)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


def test_report_with_a_judge(tiny_model_dir, adapter_dir):
    tasks = TASKS[:4]
    judge = make_judge(model=str(tiny_model_dir), max_new_tokens=16)
    report = evaluate_adapter(tasks, base_model=str(tiny_model_dir), adapter_dir=adapter_dir, judge=judge,
                              config=EvaluationConfig(max_new_tokens=8), print_fn=lambda _: None)
    d = report.to_dict()
    assert tuple(d) == REPORT_KEYS
    assert set(d["judge"]) == {"model", "win_rate", "win_rate_ci", "wins", "ties", "losses",
                               "position_consistency", "unparsable", "prompt_version", "interval"}
    assert d["judge"]["wins"] + d["judge"]["ties"] + d["judge"]["losses"] == 4
    assert all(s["verdict"] in ("win", "tie", "loss") for s in d["samples"])
    assert all(set(r["verdicts_both_orders"]) == {"adapter_as_a", "base_as_a"} for r in report.answers)
    assert report.adapter_beats_base == (d["judge"]["win_rate"] > 0.5)
    lo, hi = d["judge"]["win_rate_ci"]
    assert report.interval_excludes_no_difference == (lo > 0.5 or hi < 0.5)
    table = report.markdown_table()
    assert "Wilson" in table and "judge position consistency" in table and "reference metrics only" not in table
    assert json.loads(json.dumps(d)) == d


def test_frd_evaluate_with_a_judge_endpoint_from_the_environment(server, tiny_model_dir, adapter_dir, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("JUDGE_BASE_URL", server)
    monkeypatch.setenv("JUDGE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("JUDGE_API_KEY", "sk-never-printed")
    rc = main(["evaluate", str(adapter_dir), "--tasks", str(SAMPLE_SEED), "--limit", "2", "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"judge {tiny_model_dir} @ 127.0.0.1:" in captured.out
    assert "adapter win rate" in captured.out and "95% Wilson interval" in captured.out
    assert "sk-never-printed" not in captured.out + captured.err
