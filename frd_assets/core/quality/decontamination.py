"""Decontamination: a record that shares a word n-gram with an evaluation task is not trained on.

A model that has seen an evaluation task (its instruction, its input or its reference answer) in training
scores well on it for the wrong reason, and the held-out comparison stops measuring anything. The rule is
the one GPT-3 and most later reports use, with a shorter n for short instructions: any shared word n-gram
(default 8) between a record and a task, in the words every text measure uses (`metrics.text_units`:
rouge-score's tokens for English, runs of letters for Russian or Arabic, one character for Chinese), marks
the record as contaminated.

Each side is one token stream: a record's instruction, input and output, a task's instruction, input and
reference, in that order. So a copied instruction plus input is caught even when each is shorter than n;
a text shorter than n tokens in all has no n-gram and cannot match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

from frd_assets.core.evaluation.tasks import EvalTask
from frd_assets.core.metrics.text_units import TOKENIZER_SIGNATURE, words
from frd_assets.core.records import Record

# The validation gate takes held-out seed rows as canonical Records (output is the reference) or tasks
# read from an evaluation file (EvalTask, reference); both name the task by id.
EvalSource = Union[EvalTask, Record]


def _reference(task: EvalSource) -> str:
    return task.reference if isinstance(task, EvalTask) else task.output


def word_ngrams(texts: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """The word n-grams of the texts' words (`text_units.words`), read as one stream."""
    tokens = [t for text in texts for t in words(text)]
    # The shifted copies differ in length on purpose: zip stops at the last full window.
    return zip(*(tokens[i:] for i in range(n)), strict=False)


@dataclass(frozen=True)
class Contamination:
    """A record that shares an n-gram with an evaluation task: which task, and the n-gram as evidence."""

    task_id: str
    task_instruction: str
    ngram: str


class EvalNgramIndex:
    """Every word n-gram of the evaluation tasks, each pointing at the first task that has it."""

    def __init__(self, tasks: Sequence[EvalSource], n: int):
        if n < 1:
            raise ValueError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n = n
        self.tasks = list(tasks)
        self._first_task: dict[tuple[str, ...], int] = {}
        for k, task in enumerate(self.tasks):
            for gram in word_ngrams((task.instruction, task.input, _reference(task)), n):
                self._first_task.setdefault(gram, k)

    def __len__(self) -> int:
        return len(self.tasks)

    def match(self, texts: Sequence[str]) -> Contamination | None:
        """The first n-gram of texts (a record's instruction, input, output) that an evaluation task has."""
        if not self._first_task:
            return None
        index = self._first_task
        for gram in word_ngrams(texts, self.n):
            k = index.get(gram)
            if k is not None:
                task = self.tasks[k]
                return Contamination(task.id, task.instruction, " ".join(gram))
        return None


def signature(n: int, tasks: int) -> str:
    return f"decontamination|word-{n}-gram|{TOKENIZER_SIGNATURE}|fields:instruction+input+output|tasks:{tasks}"
