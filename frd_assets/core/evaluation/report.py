"""`evaluate_adapter`: answers, reference metrics and an optional judge, gathered into one report.

Three phases, each its own function: answer every task with and without the adapter (one model load),
score both sides against the references (ROUGE-L, paired bootstrap), and, when a judge is given, judge
every pair in both orders (win rate, Wilson interval, position consistency). The report's `to_dict` is
the stable, documented shape that the asset's metadata, `frd evaluate --json` and the model card share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from frd_assets.core.config_checks import MAX_NEW_TOKENS, SEED, Integer, check_fields
from frd_assets.core.evaluation.answers import Answers, generate_answers
from frd_assets.core.evaluation.judge import JUDGE_PROMPT_VERSION, Judge, JudgedTask
from frd_assets.core.evaluation.stats import (
    CONFIDENCE,
    Interval,
    WinRate,
    bootstrap_mean_interval,
    mean,
    position_consistency,
    rouge_l_scores,
    win_rate,
)
from frd_assets.core.evaluation.tasks import EvalTask
from frd_assets.core.language import SeedLanguage
from frd_assets.core.metrics.rouge_l import SIGNATURE as ROUGE_SIGNATURE
from frd_assets.core.metrics.text_units import words
from frd_assets.core.models import DEFAULT_MODEL

REPORT_KEYS = ("n", "skipped", "base_model", "adapter", "rouge_l", "judge", "length", "seconds", "samples")
MAX_SAMPLES = 10
NO_JUDGE_NOTE = "no judge configured: reference metrics only (ROUGE-L against the reference answers)"


@dataclass(frozen=True)
class EvaluationConfig:
    max_new_tokens: int = 128  # per answer; both sides get the same budget
    batch_size: int = 8  # prompts per generate call
    bootstrap_samples: int = 2000  # resamples of the paired ROUGE-L difference
    seed: int = 0  # of the bootstrap
    limit: int | None = None  # evaluate only the first `limit` tasks; None: all

    def __post_init__(self) -> None:
        check_fields(self, "evaluation config", _CONFIG_RULES)


_CONFIG_RULES = {
    "max_new_tokens": MAX_NEW_TOKENS,
    "batch_size": Integer(1, 4096),
    # Fewer resamples give an interval whose ends move from seed to seed by more than they mean.
    "bootstrap_samples": Integer(100, 1_000_000),
    "seed": SEED,
    "limit": Integer(1, 1_000_000, optional=True),  # above any task file a seed-sized upload can hold
}


@dataclass(frozen=True)
class JudgeSummary:
    model: str  # the judge's identity: model, and endpoint host for an endpoint; never a key
    wins: WinRate
    position_consistency: float
    unparsable: int  # replies without a verdict line, out of 2n

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "win_rate": self.wins.rate,
            "win_rate_ci": [self.wins.interval.low, self.wins.interval.high],
            "wins": self.wins.wins,
            "ties": self.wins.ties,
            "losses": self.wins.losses,
            "position_consistency": self.position_consistency,
            "unparsable": self.unparsable,
            "prompt_version": JUDGE_PROMPT_VERSION,
            "interval": "wilson",
        }


def summarize_judgements(judged: Sequence[JudgedTask], model: str) -> JudgeSummary:
    return JudgeSummary(
        model=model,
        wins=win_rate([j.outcome for j in judged], confidence=CONFIDENCE),
        position_consistency=position_consistency([j.outcomes for j in judged]),
        unparsable=sum(j.unparsable for j in judged),
    )


@dataclass
class EvaluationReport:
    n: int
    skipped: int
    base_model: str
    adapter: str
    rouge_base: float
    rouge_adapter: float
    rouge_diff: float  # mean of the per-task (adapter - base) ROUGE-L F
    rouge_diff_ci: Interval  # 95% percentile bootstrap over tasks
    judge: JudgeSummary | None
    base_words: float  # mean words per answer: judges favour longer answers, so length is shown
    adapter_words: float
    seconds: float  # the whole evaluation, wall time
    generated_tokens: int
    generation_seconds: float
    # One row per task (id, instruction, input, reference, both answers, both scores, the verdicts):
    # kept beside the report, not in to_dict, since it grows with the task set.
    answers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "skipped": self.skipped,
            "base_model": self.base_model,
            "adapter": self.adapter,
            "rouge_l": {
                "base": self.rouge_base,
                "adapter": self.rouge_adapter,
                "diff": self.rouge_diff,
                "diff_ci": [self.rouge_diff_ci.low, self.rouge_diff_ci.high],
                "signature": ROUGE_SIGNATURE,
            },
            "judge": self.judge.to_dict() if self.judge else None,
            "length": {"base_words": self.base_words, "adapter_words": self.adapter_words},
            "seconds": self.seconds,
            "samples": [
                {k: row[k] for k in ("instruction", "reference", "base", "adapter", "verdict")}
                for row in self.answers[:MAX_SAMPLES]
            ],
        }

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    @property
    def adapter_beats_base(self) -> bool:
        """With a judge: its win rate is above 0.5; without one: the adapter's mean ROUGE-L is higher."""
        if self.judge:
            return self.judge.wins.rate > 0.5
        return self.rouge_adapter > self.rouge_base

    @property
    def interval_excludes_no_difference(self) -> bool:
        """With a judge: the win rate's interval excludes 0.5; without one: the ROUGE-L difference's excludes 0."""
        if self.judge:
            return self.judge.wins.interval.excludes(0.5)
        return self.rouge_diff_ci.excludes(0.0)

    def summary_lines(self) -> list[str]:
        """The figures as plain text lines, for the CLI and logs."""
        lo, hi = self.rouge_diff_ci
        lines = [
            f"{self.n} tasks ({self.skipped} skipped without a reference); base {self.base_model}; "
            f"adapter {self.adapter}",
            f"ROUGE-L F vs reference: base {self.rouge_base:.4f}, adapter {self.rouge_adapter:.4f}, "
            f"difference {self.rouge_diff:+.4f} (95% bootstrap interval [{lo:+.4f}, {hi:+.4f}])",
        ]
        if self.judge:
            j = self.judge
            lines.append(
                f"judge {j.model}: adapter win rate {j.wins.rate:.3f} (95% Wilson interval "
                f"[{j.wins.interval.low:.3f}, {j.wins.interval.high:.3f}]); {j.wins.wins} wins, {j.wins.ties} ties, "
                f"{j.wins.losses} losses; position consistency {j.position_consistency:.2f}; "
                f"{j.unparsable} of {2 * self.n} replies unparsable (prompt {JUDGE_PROMPT_VERSION})"
            )
        else:
            lines.append(NO_JUDGE_NOTE)
        verdict = "better than" if self.adapter_beats_base else "not better than"
        sure = "excludes" if self.interval_excludes_no_difference else "includes"
        lines.append(f"adapter {verdict} base; the 95% interval {sure} no difference")
        lines.append(
            f"answer length: base {self.base_words:.1f} words, adapter {self.adapter_words:.1f} words; "
            f"{self.generated_tokens} tokens in {self.generation_seconds:.1f} s ({self.tokens_per_second:.1f} tok/s); "
            f"{self.seconds:.1f} s in all"
        )
        return lines

    def markdown_table(self) -> str:
        """The figures as a Markdown table, for a model card or asset metadata."""
        lo, hi = self.rouge_diff_ci
        rows = [
            ("tasks evaluated", f"{self.n} ({self.skipped} skipped without a reference)"),
            ("base model", f"`{self.base_model}`"),
            ("ROUGE-L F vs reference, base", f"{self.rouge_base:.4f}"),
            ("ROUGE-L F vs reference, adapter", f"{self.rouge_adapter:.4f}"),
            ("ROUGE-L difference (adapter - base)", f"{self.rouge_diff:+.4f} (95% bootstrap [{lo:+.4f}, {hi:+.4f}])"),
        ]
        if self.judge:
            j = self.judge
            rows += [
                ("judge", f"`{j.model}`, prompt {JUDGE_PROMPT_VERSION}, both orders"),
                ("adapter win rate (wins + ties/2)",
                 f"{j.wins.rate:.3f} (95% Wilson [{j.wins.interval.low:.3f}, {j.wins.interval.high:.3f}])"),
                ("wins / ties / losses", f"{j.wins.wins} / {j.wins.ties} / {j.wins.losses}"),
                ("judge position consistency", f"{j.position_consistency:.2f}"),
                ("unparsable judge replies", f"{j.unparsable} of {2 * self.n}"),
            ]
        rows += [("mean answer length, base / adapter", f"{self.base_words:.1f} / {self.adapter_words:.1f} words")]
        table = ["| figure | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]
        if not self.judge:
            table.append("")
            table.append(f"_{NO_JUDGE_NOTE[0].upper()}{NO_JUDGE_NOTE[1:]}._")
        return "\n".join(table)

    def samples_markdown(self, n: int = 5) -> str:
        """The first n tasks side by side: instruction, reference, base and adapter answers, verdict."""
        lines = ["| instruction | reference | base | adapter | verdict |", "|---|---|---|---|---|"]
        for row in self.answers[:n]:
            instruction = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
            cells = (instruction, row["reference"], row["base"], row["adapter"], row["verdict"] or "-")
            lines.append("| " + " | ".join(_cell(c, limit=300) for c in cells) + " |")
        return "\n".join(lines)


def _cell(text: str, *, limit: int | None = None) -> str:
    """Text fit for one Markdown table cell: pipes escaped, line breaks as <br>, long text cut."""
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _words(texts: Sequence[str]) -> float:
    # The words ROUGE-L counts: a Chinese answer has no spaces, so split() would make it one word.
    return mean([len(words(t)) for t in texts])


# More tasks than this are evaluated only when asked for by a limit (`frd evaluate --limit`): 500 tasks take
# half an hour on 2 CPU cores at the default 128 new tokens, a task file of 200,000 more than a week.
MAX_TASKS_WITHOUT_LIMIT = 500
# Seconds per task, base and adapter answer batched 8 at a time, no judge, on 2 CPU cores with the default
# model at max_new_tokens 48: benchmarks.evaluation's 22.11 s for 16 tasks (README, "Evaluation").
_SECONDS_PER_TASK_AT_48_TOKENS = 22.11 / 16


def estimated_seconds(n_tasks: int, max_new_tokens: int) -> float:
    """Time to answer n_tasks with the base model and the adapter: the benchmark's seconds per task, scaled
    by max_new_tokens / 48, since greedy decoding costs about the same for each new token and answers run
    to their budget often enough. At 128 tokens that is 3.7 s a task; the demo's evaluation, model load
    and bootstrap included, took 4.3 s a task (34.6 s for 8). A GPU is faster, a larger model or a judge
    slower: an order of magnitude for a refusal to state, not a promise."""
    return n_tasks * _SECONDS_PER_TASK_AT_48_TOKENS * max_new_tokens / 48


def check_task_count(n_tasks: int, config: EvaluationConfig, *, source: str, flag: str = "--limit") -> None:
    """ValueError, with the count and the time ahead, for more than MAX_TASKS_WITHOUT_LIMIT tasks and no
    limit: hours of work are started only when asked for by number."""
    if config.limit is not None or n_tasks <= MAX_TASKS_WITHOUT_LIMIT:
        return
    hours = estimated_seconds(n_tasks, config.max_new_tokens) / 3600
    raise ValueError(
        f"{source}: {n_tasks} tasks, more than the {MAX_TASKS_WITHOUT_LIMIT} evaluated without {flag}: about "
        f"{hours:,.1f} hours on 2 CPU cores at max_new_tokens {config.max_new_tokens} (the evaluation "
        f"benchmark's {_SECONDS_PER_TASK_AT_48_TOKENS:.1f} s a task per 48 new tokens; less on a GPU); give "
        f"{flag} N to evaluate the first N, or {flag} {n_tasks} for all of them"
    )


def evaluate_adapter(
    tasks: Sequence[EvalTask],
    *,
    base_model: str | None,
    adapter_dir: str | Path,
    config: EvaluationConfig | None = None,
    judge: Judge | None = None,
    skipped: int = 0,
    adapter_name: str | None = None,
    device: str | None = None,
    print_fn: Callable[[str], None] = print,
    language: SeedLanguage | None = None,
) -> EvaluationReport:
    """Answers every task with the base model and with the adapter, scores both against the references and,
    when a judge is given, judges each pair in both orders. adapter_name is what the report calls the adapter
    (a bucket URI, say); the folder path by default. language: the seed's, which the judge is told; None:
    the tasks' majority language."""
    config = config or EvaluationConfig()
    tasks = list(tasks)[: config.limit] if config.limit else list(tasks)
    if not tasks:
        raise ValueError("no evaluation tasks: give at least one task with a reference output")
    t0 = time.perf_counter()
    answers = generate_answers(
        tasks, base_model=base_model, adapter_dir=adapter_dir, max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size, device=device, print_fn=print_fn,
    )
    references = [t.reference for t in tasks]
    base_scores = rouge_l_scores(references, answers.base.texts)
    adapter_scores = rouge_l_scores(references, answers.adapter.texts)
    diffs = [a - b for a, b in zip(adapter_scores, base_scores, strict=True)]
    judged: list[JudgedTask] | None = None
    if judge is not None:
        print_fn(f"judging {len(tasks)} pairs in both orders with {judge.identity}")
        judged = judge.judge(tasks, answers.adapter.texts, answers.base.texts, language=language)
    return EvaluationReport(
        n=len(tasks),
        skipped=skipped,
        base_model=base_model or DEFAULT_MODEL,
        adapter=adapter_name or str(adapter_dir),
        rouge_base=mean(base_scores),
        rouge_adapter=mean(adapter_scores),
        rouge_diff=mean(diffs),
        rouge_diff_ci=bootstrap_mean_interval(diffs, samples=config.bootstrap_samples, seed=config.seed),
        judge=summarize_judgements(judged, judge.identity) if judge is not None and judged is not None else None,
        base_words=_words(answers.base.texts),
        adapter_words=_words(answers.adapter.texts),
        seconds=time.perf_counter() - t0,
        generated_tokens=answers.base.tokens + answers.adapter.tokens,
        generation_seconds=answers.base.seconds + answers.adapter.seconds,
        answers=_answer_rows(tasks, answers, base_scores, adapter_scores, judged),
    )


def _answer_rows(
    tasks: Sequence[EvalTask],
    answers: Answers,
    base_scores: Sequence[float],
    adapter_scores: Sequence[float],
    judged: Sequence[JudgedTask] | None,
) -> list[dict[str, Any]]:
    rows = []
    for i, task in enumerate(tasks):
        j = judged[i] if judged is not None else None
        rows.append({
            "id": task.id,
            "instruction": task.instruction,
            "input": task.input,
            "reference": task.reference,
            "base": answers.base.texts[i],
            "adapter": answers.adapter.texts[i],
            "rouge_l_base": base_scores[i],
            "rouge_l_adapter": adapter_scores[i],
            "verdict": j.outcome if j else None,
            "verdicts_both_orders": j.verdicts_both_orders() if j else None,
        })
    return rows
