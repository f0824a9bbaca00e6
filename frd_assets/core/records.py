"""Canonical records, seed-format parsing and JSONL io."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

# The largest seed parse_seed reads: about four times 200,000 Alpaca tasks. A seed is a few hundred
# hand-written tasks; a bigger file is more likely a mistake than a seed, and is held in memory whole.
MAX_SEED_BYTES = 64 * 2**20


class SeedFormatError(ValueError):
    """A seed upload that cannot be parsed; the message names the object, the line and the fix."""

    def __init__(self, object_name: str, line: int | None, reason: str):
        where = f"{object_name} line {line}" if line is not None else object_name
        super().__init__(f"{where}: {reason}")
        self.object_name = object_name
        self.line = line
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity); write null, a number or a string")


# Python's json reads NaN, Infinity and -Infinity; JSON does not, and neither does any consumer of our data
# that is not Python, so text meant as JSON that uses them is invalid here too.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
_TOO_DEEP = "nested too deeply to read (over about 1,000 levels of brackets)"


def loads_strict_json(text: str) -> Any:
    """json.loads as the JSON standard reads it; every way text is not JSON raises ValueError.

    NaN, Infinity and -Infinity are refused, and nesting too deep for the parser (a RecursionError in
    Python) becomes a ValueError too, so a caller catches ValueError alone.
    """
    try:
        return _STRICT_JSON.decode(text)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


@dataclass(frozen=True)
class Record:
    """One instruction-following example, the unit every stage reads and writes."""

    id: str
    instruction: str
    input: str
    output: str
    # Where the record came from: format, object and line for seeds, "generated" plus round for the rest.
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        return cls(
            id=str(data["id"]),
            instruction=str(data["instruction"]),
            input=str(data.get("input", "")),
            output=str(data["output"]),
            provenance=dict(data.get("provenance") or {}),
        )


def _require_str(obj: dict, key: str, object_name: str, line: int, fmt: str, *, allow_empty=False) -> str:
    if key not in obj:
        raise SeedFormatError(object_name, line, f"{fmt} record has no field '{key}'; add it")
    value = obj[key]
    if not isinstance(value, str):
        raise SeedFormatError(object_name, line, f"field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise SeedFormatError(object_name, line, f"field '{key}' is empty; give it text")
    return value.strip()


def detect_format(obj: dict) -> str:
    if "messages" in obj:
        return "chat"
    if "instances" in obj:
        return "self_instruct"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return "unknown"


def _self_instruct_records(obj: dict, base_id: str, prov: dict, object_name: str, line: int) -> list[Record]:
    """{instruction, instances: [{input, output}, ...]}: one record per instance."""
    instruction = _require_str(obj, "instruction", object_name, line, "self_instruct")
    instances = obj["instances"]
    if not isinstance(instances, list) or not instances:
        raise SeedFormatError(
            object_name, line, "field 'instances' must be a non-empty list of {input, output} objects"
        )
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise SeedFormatError(object_name, line, f"instances[{i}] must be an object with input, output")
        out.append(
            Record(
                id=base_id if len(instances) == 1 else f"{base_id}#{i}",
                instruction=instruction,
                input=_require_str(inst, "input", object_name, line, f"instances[{i}]", allow_empty=True)
                if "input" in inst
                else "",
                output=_require_str(inst, "output", object_name, line, f"instances[{i}]"),
                provenance={**prov, "is_classification": bool(obj.get("is_classification", False))},
            )
        )
    return out


def _alpaca_records(obj: dict, base_id: str, prov: dict, object_name: str, line: int) -> list[Record]:
    """{instruction, input, output}: one record."""
    return [
        Record(
            id=base_id,
            instruction=_require_str(obj, "instruction", object_name, line, "alpaca"),
            input=_require_str(obj, "input", object_name, line, "alpaca", allow_empty=True) if "input" in obj else "",
            output=_require_str(obj, "output", object_name, line, "alpaca"),
            provenance=prov,
        )
    ]


def _chat_records(obj: dict, base_id: str, prov: dict, object_name: str, line: int) -> list[Record]:
    """{messages: [{role, content}, ...]}: one record per user message answered by the assistant."""
    messages = obj["messages"]
    if not isinstance(messages, list):
        raise SeedFormatError(object_name, line, "field 'messages' must be a list of {role, content}")
    out = []
    pending_user: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise SeedFormatError(object_name, line, f"messages[{i}] must be an object with role and content")
        role, content = msg["role"], msg["content"]
        if not isinstance(content, str):
            raise SeedFormatError(object_name, line, f"messages[{i}].content must be a string")
        if role == "user":
            pending_user = content.strip()
        elif role == "assistant" and pending_user:
            out.append(
                Record(
                    id=base_id if not out else f"{base_id}#{len(out)}",
                    instruction=pending_user,
                    input="",
                    output=content.strip(),
                    provenance=prov,
                )
            )
            pending_user = None
    if not out or not all(r.output for r in out):
        raise SeedFormatError(
            object_name, line, "chat record needs a 'user' message followed by a non-empty 'assistant' message"
        )
    return out


_FORMAT_READERS = {"self_instruct": _self_instruct_records, "alpaca": _alpaca_records, "chat": _chat_records}


def _records_from_object(obj: Any, object_name: str, line: int, index: int) -> list[Record]:
    """The records of one seed task, read by its format's function; errors name the object and line."""
    if not isinstance(obj, dict):
        raise SeedFormatError(object_name, line, f"expected a JSON object, got {type(obj).__name__}; one task per line")
    fmt = detect_format(obj)
    reader = _FORMAT_READERS.get(fmt)
    if reader is None:
        raise SeedFormatError(
            object_name,
            line,
            "unknown seed format: expected Self-Instruct (instruction, instances), "
            "Alpaca (instruction, input, output) or chat (messages); found keys "
            + ", ".join(sorted(map(str, obj)))[:200],
        )
    base_id = str(obj.get("id") or f"seed-{index}")
    return reader(obj, base_id, {"format": fmt, "object": object_name, "line": line}, object_name, line)


def _iter_json_array(text: str, object_name: str) -> Iterable[tuple[int, Any]]:
    """Yields (line, element) of a top-level JSON array, so errors can name a line as for JSONL.

    Lines are counted forward from the last element only (never from the start of the text), which keeps
    a seed of n tasks linear in n: counting from the start made 40,000 tasks take 35 s.
    """
    pos = text.index("[") + 1
    line, counted = 1, 0  # line is the line number of position `counted`

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = _skip_space(text, pos)
    if text.startswith("]", pos):
        return
    while True:
        if pos >= len(text):
            raise SeedFormatError(object_name, line_at(pos), "JSON array is not closed with ']'")
        start = line_at(pos)
        try:
            obj, pos = _STRICT_JSON.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SeedFormatError(object_name, line_at(exc.pos), f"invalid JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:
            raise SeedFormatError(object_name, start, _not_json_reason(exc)) from None
        yield start, obj
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif text.startswith("]", pos):
            if _skip_space(text, pos + 1) < len(text):
                raise SeedFormatError(object_name, line_at(pos), "text after the closing ']' of the JSON array")
            return
        elif pos < len(text):
            raise SeedFormatError(object_name, line_at(pos), "invalid JSON: expected ',' or ']' after a task")


_SPACE = re.compile(r"[ \t\r\n]*")


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()


def _not_json_reason(exc: Exception) -> str:
    """The reason for a SeedFormatError from what the strict JSON parser raised."""
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at column {exc.colno}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return f"invalid JSON: {_TOO_DEEP}; a task is an object of strings"
    return f"invalid JSON: {exc}"


def check_seed_size(size: int, object_name: str) -> None:
    """Refuses a seed over MAX_SEED_BYTES before anything reads it."""
    if size > MAX_SEED_BYTES:
        raise SeedFormatError(
            object_name,
            None,
            f"the seed is {size:,} bytes, over the limit of {MAX_SEED_BYTES:,} bytes ({MAX_SEED_BYTES // 2**20} MiB) "
            "for one seed; split it into several seed files and upload each as its own dataset",
        )


def upload_items(
    data: bytes, object_name: str, *, empty: str, error: type[SeedFormatError] = SeedFormatError
) -> Iterable[tuple[int, Any]]:
    """(line, JSON value) of each item of an upload in JSONL or a JSON array (UTF-8, a BOM allowed): the
    reading that seeds and evaluation task files share, so both refuse the same files with the same words.
    empty: the refusal of an empty file; error: the class of this reader's refusals (a subclass for tasks)."""
    check_seed_size(len(data), object_name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(object_name, line, f"not UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    if not text.strip():
        raise error(object_name, None, empty)
    return _iter_json_array(text, object_name) if text.lstrip().startswith("[") else _iter_jsonl(text, object_name)


def parse_seed(data: bytes, object_name: str) -> list[Record]:
    """Parses a seed upload (JSONL or a JSON array, UTF-8) in any of the three formats into Records."""
    items = upload_items(data, object_name, empty="the upload is empty; it needs at least one task")
    records: list[Record] = []
    for index, (line, obj) in enumerate(items):
        records.extend(_records_from_object(obj, object_name, line, index))
    if not records:
        raise SeedFormatError(object_name, None, "no tasks found; it needs at least one task")
    _check_unique_ids(records, object_name)
    return records


def _check_unique_ids(records: Sequence[Record], object_name: str) -> None:
    """One pass with a dict; the records of one task never share an id, so any repeat is two tasks'."""
    first_line: dict[str, int] = {}
    for r in records:
        line = r.provenance["line"]
        if r.id in first_line:
            raise SeedFormatError(
                object_name,
                line,
                f"id '{r.id}' appears more than once: first on line {first_line[r.id]}, again on line {line}; "
                "ids must be unique, so rename or remove one",
            )
        first_line[r.id] = line


def _iter_jsonl(text: str, object_name: str) -> Iterable[tuple[int, Any]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, loads_strict_json(line)
        except ValueError as exc:
            raise SeedFormatError(object_name, line_no, _not_json_reason(exc)) from None


def dumps_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def loads_jsonl(data: bytes, object_name: str) -> list[dict[str, Any]]:
    """Reads JSONL this project wrote; a corrupt line raises naming the object and line."""
    rows = []
    for line_no, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{object_name} line {line_no}: invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise ValueError(f"{object_name} line {line_no}: invalid JSON: {_TOO_DEEP}") from None
    return rows


def records_to_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in records]


def rows_to_records(rows: Iterable[dict[str, Any]]) -> list[Record]:
    return [Record.from_dict(r) for r in rows]
