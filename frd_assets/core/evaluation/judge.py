"""A pairwise judge: a language model reads a task, a reference and two answers, and says which is better.

Judges are biased (FastChat's analyses: the longer answer wins about two times in three, and about one
verdict in eight flips when the answers swap places), and a small judge more so. So every task is judged
twice, adapter shown as A and then base shown as A; only two verdicts that agree count, a disagreement is a
tie, and the share of agreeing pairs is reported as position consistency. A reply that does not end in the
stated verdict line is unparsable: it counts as a tie and is counted, never guessed at.

The judge is any Teacher (an OpenAI-compatible endpoint or a local transformers model), at temperature 0.
The prompt names the tasks' language (the seed's, or the tasks' majority language), since the judge's own
instructions are English whatever the task's: an answer in another language than the task's does not
follow it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence
from urllib.parse import urlsplit

from frd_assets.core import settings
from frd_assets.core.evaluation.stats import Outcome
from frd_assets.core.evaluation.tasks import EvalTask
from frd_assets.core.generation.prompts import ChatPrompt
from frd_assets.core.generation.teachers import SamplingParams, Teacher
from frd_assets.core.language import SeedLanguage, detect_seed_language

# Bump when the wording below changes: verdicts from two prompt versions are not comparable.
# v2: names the task's language.
JUDGE_PROMPT_VERSION = "pairwise-v2"

JUDGE_SYSTEM = "You are a careful, impartial judge of answers to tasks."

JUDGE_PROMPT = """Compare two answers to the task below and decide which one is better.

A better answer follows the instruction, is correct and complete, and stays on the task. The reference \
answer shows one correct answer; a good answer need not use its words. Do not prefer an answer for being \
longer, and do not let the order of the answers influence you.

The task is written in {language}. An answer in another language does not follow the instruction, unless \
the task asks for one (a translation, say).

### Task
{task}

### Reference answer
{reference}

### Answer A
{answer_a}

### Answer B
{answer_b}

Explain your judgement in one or two sentences. Then end your reply with one line that is exactly \
"Verdict: A", "Verdict: B" or "Verdict: tie"."""

Verdict = Literal["A", "B", "tie", "unparsable"]

# The reply's last non-empty line; case, spaces, markdown bold and a final full stop are forgiven.
_VERDICT_LINE = re.compile(r"^\W*verdict\s*:\s*\**\s*(a|b|tie)\s*\**\s*\.?\s*$", re.IGNORECASE)

def judge_settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """base_url, model and api_key for make_judge, from JUDGE_BASE_URL, JUDGE_MODEL and JUDGE_API_KEY
    (core/settings.py): what a standalone command passes to make_judge."""
    s = settings.judge_settings(env)
    return {"base_url": s.base_url, "model": s.model, "api_key": settings.secret(s.api_key_var, env)}


# What the prompt says when no language could be told (tasks without a letter in any instruction).
UNKNOWN_LANGUAGE = "the language of its instruction"


def judge_prompt(task: EvalTask, answer_a: str, answer_b: str, *, language: str = UNKNOWN_LANGUAGE) -> ChatPrompt:
    """language: the English name of the task's language ("Russian")."""
    task_text = f"{task.instruction}\n\nInput:\n{task.input}" if task.input else task.instruction
    content = JUDGE_PROMPT.format(
        task=task_text, reference=task.reference, answer_a=answer_a.strip() or "(empty)",
        answer_b=answer_b.strip() or "(empty)", language=language,
    )
    return ChatPrompt(({"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}))


def parse_verdict(reply: str) -> Verdict:
    """'A', 'B' or 'tie' from a reply whose last non-empty line is 'Verdict: A|B|tie'; else 'unparsable'."""
    lines = [line for line in reply.splitlines() if line.strip()]
    m = _VERDICT_LINE.match(lines[-1]) if lines else None
    if not m:
        return "unparsable"
    word = m.group(1).lower()
    return "tie" if word == "tie" else word.upper()  # type: ignore[return-value]


def _adapter_outcome(verdict: Verdict, adapter_is_a: bool) -> Outcome | None:
    if verdict == "unparsable":
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == adapter_is_a else "loss"


@dataclass(frozen=True)
class JudgedTask:
    """Both verdicts on one task and the outcome for the adapter they add up to."""

    outcome: Outcome
    adapter_as_a: Verdict  # the verdict with the adapter's answer shown as A
    base_as_a: Verdict  # the verdict with the base model's answer shown as A
    replies: tuple[str, str]  # the judge's two replies, in the same order

    @property
    def outcomes(self) -> tuple[Outcome | None, Outcome | None]:
        """Each verdict read from the adapter's side; None for an unparsable reply."""
        return _adapter_outcome(self.adapter_as_a, True), _adapter_outcome(self.base_as_a, False)

    @property
    def consistent(self) -> bool:
        first, second = self.outcomes
        return first is not None and first == second

    @property
    def unparsable(self) -> int:
        return (self.adapter_as_a == "unparsable") + (self.base_as_a == "unparsable")

    def verdicts_both_orders(self) -> dict[str, str]:
        return {"adapter_as_a": self.adapter_as_a, "base_as_a": self.base_as_a}


def combine(adapter_as_a: Verdict, base_as_a: Verdict, replies: tuple[str, str] = ("", "")) -> JudgedTask:
    """Two verdicts that agree decide the task; a disagreement or an unparsable reply is a tie."""
    first, second = _adapter_outcome(adapter_as_a, True), _adapter_outcome(base_as_a, False)
    outcome: Outcome = first if first is not None and first == second else "tie"
    return JudgedTask(outcome, adapter_as_a, base_as_a, replies)


class Judge:
    """Judges adapter against base answers in both orders through any Teacher, at temperature 0."""

    def __init__(self, teacher: Teacher, *, identity: str | None = None, max_new_tokens: int = 256):
        if max_new_tokens < 1:
            raise ValueError(f"judge max_new_tokens must be >= 1, got {max_new_tokens}")
        self.teacher = teacher
        # What the report names: the model and, for an endpoint, its host; never a key.
        self.identity = identity or teacher.name
        self.max_new_tokens = max_new_tokens
        self.prompt_version = JUDGE_PROMPT_VERSION

    def __repr__(self) -> str:
        return f"Judge({self.identity!r}, prompt {self.prompt_version})"

    def judge(
        self, tasks: Sequence[EvalTask], adapter: Sequence[str], base: Sequence[str], *,
        language: SeedLanguage | None = None,
    ) -> list[JudgedTask]:
        """Both verdicts on every task. language: the seed's (stored by seed_dataset); None: the tasks'
        majority language, detected here."""
        if not len(tasks) == len(adapter) == len(base):
            raise ValueError(
                f"{len(tasks)} tasks, {len(adapter)} adapter and {len(base)} base answers; they must pair up"
            )
        name = tasks_language_name(tasks, language)
        prompts = []
        for task, a, b in zip(tasks, adapter, base, strict=True):
            prompts += [judge_prompt(task, a, b, language=name), judge_prompt(task, b, a, language=name)]
        # All 2n prompts in one call, so a local judge batches them and an endpoint gets them concurrently.
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0)
        replies = [c.text for c in self.teacher.complete(prompts, params)]
        pairs = zip(replies[0::2], replies[1::2], strict=True)
        return [combine(parse_verdict(first), parse_verdict(second), (first, second)) for first, second in pairs]


def tasks_language_name(tasks: Sequence[EvalTask], language: SeedLanguage | None = None) -> str:
    """The English name of the language the tasks are in: `language`'s, else their majority language."""
    if language is not None:
        return language.name
    try:
        return detect_seed_language([t.instruction for t in tasks]).name
    except ValueError:  # no instruction with a letter
        return UNKNOWN_LANGUAGE


def endpoint_host(base_url: str) -> str:
    """host[:port] of a URL, without any user:password@ it may carry."""
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    host = parts.hostname or base_url
    return f"{host}:{parts.port}" if parts.port else host


def make_judge(
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    batch_size: int = settings.TEACHER_BATCH_SIZE,
    max_concurrency: int = settings.TEACHER_MAX_CONCURRENCY,
    timeout: float = settings.TEACHER_TIMEOUT_S,
    max_new_tokens: int = 256,
) -> Judge | None:
    """None when neither base_url nor model is set; an OpenAI-compatible endpoint serving `model` when
    base_url is set; else the local transformers model `model` (a folder or a name, loaded now)."""
    from frd_assets.core.generation.teachers import make_teacher

    if not base_url and not model:
        return None
    if base_url:
        if not model:
            raise ValueError(
                f"the judge endpoint {endpoint_host(base_url)} needs the name of the model it serves: "
                "set JUDGE_MODEL (or --judge-model)"
            )
        teacher = make_teacher(backend="openai", model=model, base_url=base_url, api_key=api_key,
                               max_concurrency=max_concurrency, timeout=timeout)
        return Judge(teacher, identity=f"{model} @ {endpoint_host(base_url)}", max_new_tokens=max_new_tokens)
    teacher = make_teacher(backend="transformers", model=model, batch_size=batch_size)
    return Judge(teacher, identity=f"{model} (local transformers)", max_new_tokens=max_new_tokens)
