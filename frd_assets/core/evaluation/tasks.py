"""Evaluation tasks: an instruction, its input and a reference answer, read from any seed format.

A seed file is a natural source of held-out tasks, but it is read more leniently here than by
`parse_seed`: a task without a reference answer (an Alpaca record with an empty or missing output, a chat
with no assistant turn, a Self-Instruct instance without an output) cannot be scored, yet it does not make
the other tasks unusable, so it is skipped and counted instead of failing the whole file. Anything that
is not a task at all (not UTF-8, not JSON, an unknown shape) still fails, naming the object and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

# The seed parser's reader: the same line numbers in errors, the same strict JSON (no NaN), one implementation.
from frd_assets.core.records import Record, SeedFormatError, upload_items


class TaskFileError(SeedFormatError):
    """A task file that cannot be read; the message names the object, the line and the fix."""


@dataclass(frozen=True)
class EvalTask:
    id: str
    instruction: str
    input: str
    reference: str  # the answer a person wrote; ROUGE-L compares each model's answer with it

    def as_record(self) -> Record:
        """The task as the canonical record the adapter was trained on, for the training prompt."""
        return Record(self.id, self.instruction, self.input, self.reference)


def eval_tasks_from_records(records: Iterable[Record]) -> list[EvalTask]:
    """Canonical records (held-out seed rows, say) as tasks; every parsed record carries an output."""
    return [EvalTask(r.id, r.instruction, r.input, r.output) for r in records]


def load_eval_tasks(data: bytes, object_name: str) -> tuple[list[EvalTask], int]:
    """Tasks with a reference answer from a Self-Instruct, Alpaca or chat file (JSONL or a JSON array),
    and how many tasks were skipped for having none. TaskFileError when the file is unusable."""
    items = upload_items(data, object_name, error=TaskFileError,
                         empty="the file is empty; it needs at least one task with a reference output")
    tasks: list[EvalTask] = []
    skipped = 0
    try:
        for index, (line, obj) in enumerate(items):
            found, missing = _tasks_from_object(obj, object_name, line, index)
            tasks.extend(found)
            skipped += missing
    except SeedFormatError as exc:
        if isinstance(exc, TaskFileError):
            raise
        raise TaskFileError(exc.object_name, exc.line, exc.reason) from None
    if not tasks:
        raise TaskFileError(
            object_name,
            None,
            f"no task has a reference output ({skipped} skipped); an evaluation task needs one: an Alpaca "
            "'output', a Self-Instruct instance 'output', or an 'assistant' message after a 'user' message",
        )
    return tasks, skipped


def _text(value: Any, where: str, object_name: str, line: int) -> str:
    """The stripped string, '' for a missing or null value; any other type is a malformed task."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TaskFileError(object_name, line, f"{where} must be a string, got {type(value).__name__}")
    return value.strip()


def _tasks_from_object(obj: Any, object_name: str, line: int, index: int) -> tuple[list[EvalTask], int]:
    if not isinstance(obj, dict):
        raise TaskFileError(object_name, line, f"expected a JSON object, got {type(obj).__name__}; one task per line")
    base_id = str(obj.get("id") or f"task-{index}")
    if "messages" in obj:
        return _chat_tasks(obj["messages"], base_id, object_name, line)
    if "instruction" not in obj:
        raise TaskFileError(
            object_name,
            line,
            "unknown task format: expected Self-Instruct (instruction, instances), Alpaca (instruction, input, "
            "output) or chat (messages); found keys " + ", ".join(sorted(map(str, obj)))[:200],
        )
    instruction = _text(obj["instruction"], "field 'instruction'", object_name, line)
    if not instruction:
        raise TaskFileError(object_name, line, "field 'instruction' is empty; give it text")
    if "instances" in obj:
        instances = obj["instances"]
        if not isinstance(instances, list):
            raise TaskFileError(object_name, line, "field 'instances' must be a list of {input, output} objects")
        tasks, skipped = [], 0
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise TaskFileError(object_name, line, f"instances[{i}] must be an object with input, output")
            reference = _text(inst.get("output"), f"instances[{i}].output", object_name, line)
            if not reference:
                skipped += 1
                continue
            task_id = base_id if len(instances) == 1 else f"{base_id}#{i}"
            tasks.append(
                EvalTask(task_id, instruction, _text(inst.get("input"), f"instances[{i}].input", object_name, line),
                         reference)
            )
        return tasks, skipped + (not instances)  # an empty instance list is one task without a reference
    reference = _text(obj.get("output"), "field 'output'", object_name, line)
    if not reference:
        return [], 1
    return [EvalTask(base_id, instruction, _text(obj.get("input"), "field 'input'", object_name, line), reference)], 0


def _chat_tasks(messages: Any, base_id: str, object_name: str, line: int) -> tuple[list[EvalTask], int]:
    """One task per user turn answered by a non-empty assistant turn; an unanswered user turn is skipped."""
    if not isinstance(messages, list):
        raise TaskFileError(object_name, line, "field 'messages' must be a list of {role, content}")
    tasks: list[EvalTask] = []
    unanswered = 0
    pending: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise TaskFileError(object_name, line, f"messages[{i}] must be an object with role and content")
        content = _text(msg["content"], f"messages[{i}].content", object_name, line)
        if msg["role"] == "user":
            unanswered += pending is not None  # two user turns in a row: the first got no answer
            pending = content or None
        elif msg["role"] == "assistant" and pending is not None:
            if content:
                task_id = base_id if not tasks else f"{base_id}#{len(tasks)}"
                tasks.append(EvalTask(task_id, pending, "", content))
            else:
                unanswered += 1
            pending = None
    unanswered += pending is not None
    # A conversation with no user turn at all is still one record that yields no task.
    return tasks, unanswered or (0 if tasks else 1)
