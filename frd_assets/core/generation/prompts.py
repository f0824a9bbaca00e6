"""Self-Instruct prompts (Wang et al. 2022, Alpaca's wording) and parsers for what the teacher writes back.

Instances can be asked for in two formats. "json": a JSON object {"input", "output"} whose schema travels
with the prompt, so a teacher that can constrain its decoding to the schema (the local one through
llguidance, an endpoint through response_format) always writes a readable instance. "text": the
'Input: ... Output: ...' reply read by a lenient parser, the fallback for teachers that cannot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

# {language} is the seed's language by its English name (core/language.py): the teacher is told in words
# which language to write, not left to infer it from the examples.
INSTRUCTION_PROMPT_HEADER = (
    "You are asked to come up with a set of diverse task instructions. "
    "Vary the verbs and the kinds of task (open questions, classification, rewriting, brainstorming, "
    "explanation, reasoning). Each instruction is one or two sentences in {language} that a language model "
    "can answer in text. Do not repeat the examples.\n\nList of tasks:"
)

INSTANCE_PROMPT = (
    "Write one example for the task below.\n"
    "If the task needs an input (a text, a list, a question to work on), write it after 'Input:'; "
    "otherwise write 'Input: <noinput>'. Then write a correct, complete answer after 'Output:'. "
    "Write both in {language}.\n\n"
    "Task: {instruction}"
)

CLASSIFICATION_INSTANCE_PROMPT = (
    "Write one example for the classification task below. First write the class label after 'Output:', "
    "then an input that belongs to that class after 'Input:'. Write both in {language}.\n\nTask: {instruction}"
)

INSTANCE_JSON_PROMPT = (
    "Write one example for the task below as a JSON object with two string fields: \"input\", the text, "
    "list or question the task works on (\"\" if the task needs no input), and \"output\", a correct, "
    "complete answer for that input. Write both in {language}.\n\nTask: {instruction}"
)

CLASSIFICATION_INSTANCE_JSON_PROMPT = (
    "Write one example for the classification task below as a JSON object with two string fields: first "
    "\"output\", a class label, then \"input\", an input that belongs to that class. Write both in "
    "{language}.\n\nTask: {instruction}"
)

# The language a prompt asks for when its caller names none: the seed sample's, and most teachers' first.
DEFAULT_LANGUAGE = "English"

# What a teacher may write for "this task has no input"; such an input is stored as "".
_NO_INPUT = ("<noinput>", "noinput", "none", "n/a", "<no input>")


@dataclass(frozen=True)
class ChatPrompt:
    """A chat conversation for the teacher plus text the assistant's reply is made to start with."""

    messages: tuple[dict[str, str], ...]
    prefill: str = ""
    # A JSON schema the reply must follow, for teachers that can enforce one; None: free text.
    json_schema: Mapping[str, Any] | None = field(default=None, hash=False)


def instruction_prompt(examples: list[str], *, language: str = DEFAULT_LANGUAGE) -> ChatPrompt:
    """Shows the examples as a numbered list and lets the teacher continue it at the next number; language
    is the English name of the language the new instructions are to be written in ("Russian")."""
    lines = [INSTRUCTION_PROMPT_HEADER.format(language=language)]
    lines += [f"{i}. {ex.strip()}" for i, ex in enumerate(examples, start=1)]
    listing = "\n".join(lines)
    # Prefilling the next number makes even a small teacher continue the list instead of chatting.
    return ChatPrompt(({"role": "user", "content": listing},), prefill=f"{len(examples) + 1}.")


def instance_schema(*, output_first: bool = False) -> dict[str, Any]:
    """The JSON schema of one instance. Constrained decoders write properties in schema order, so a
    classification task gets its label before the input, as the text prompt asks."""
    order = ("output", "input") if output_first else ("input", "output")
    return {
        "title": "instance",
        "type": "object",
        "properties": {name: {"type": "string"} for name in order},
        "required": list(order),
        "additionalProperties": False,
    }


def instance_prompt(
    instruction: str, *, is_classification: bool = False, as_json: bool = False, language: str = DEFAULT_LANGUAGE
) -> ChatPrompt:
    """The prompt for one instance of a task, in the text format or, with as_json, the JSON format; language
    names the language the instance is to be written in."""
    content = {"role": "user", "content": ""}
    if as_json:
        template = CLASSIFICATION_INSTANCE_JSON_PROMPT if is_classification else INSTANCE_JSON_PROMPT
        content["content"] = template.format(instruction=instruction.strip(), language=language)
        # No prefill: the schema constraint writes the opening brace and first key itself.
        return ChatPrompt((content,), json_schema=instance_schema(output_first=is_classification))
    template = CLASSIFICATION_INSTANCE_PROMPT if is_classification else INSTANCE_PROMPT
    content["content"] = template.format(instruction=instruction.strip(), language=language)
    return ChatPrompt((content,), prefill="Output:" if is_classification else "Input:")


_NUMBERED = re.compile(r"^\s*(?:#{1,4}\s*)?(?:task\s*)?\(?(\d{1,3})\s*[.):\-]\s*", re.IGNORECASE)
_BLOCK_SPLIT = re.compile(r"^\s*###\s*$", re.MULTILINE)
_LABEL = re.compile(r"^\s*(?:instruction|task)\s*:\s*", re.IGNORECASE)


def parse_instruction_list(text: str) -> list[str]:
    """Parses a numbered list (or ### blocks) into instructions; stray text outside the list is dropped.

    "7. Write a poem\n8. Name three ..." -> ["Write a poem", "Name three ..."]. A text without any
    numbering counts as one instruction per non-empty line, so an unnumbered reply is not lost.
    """
    if _BLOCK_SPLIT.search(text):
        chunks = [c for c in _BLOCK_SPLIT.split(text)]
    else:
        chunks = [text]
    items: list[str] = []
    for chunk in chunks:
        current: list[str] | None = None
        numbered_found = False
        for line in chunk.splitlines():
            m = _NUMBERED.match(line)
            if m:
                numbered_found = True
                if current:
                    items.append(" ".join(current))
                current = [line[m.end() :].strip()]
            elif current is not None and line.strip():
                # A wrapped continuation line of the current item.
                current.append(line.strip())
            elif current is not None and not line.strip():
                items.append(" ".join(current))
                current = None
        if current:
            items.append(" ".join(current))
        if not numbered_found:
            items.extend(line.strip() for line in chunk.splitlines() if line.strip())
    cleaned = []
    for item in items:
        item = _LABEL.sub("", item).strip()
        item = re.sub(r"\s+", " ", item)
        if item:
            cleaned.append(item)
    return cleaned


def parse_instance(text: str, *, output_first: bool = False) -> tuple[str, str] | None:
    """Splits 'Input: ... Output: ...' into (input, output); None when no usable output is there.

    A reply without markers is taken as the output of a task with no input: small teachers often just
    answer, and that is a valid no-input instance.
    """
    m_in = re.search(r"(?im)^\s*input\s*:", text)
    m_out = re.search(r"(?im)^\s*output\s*:", text)
    if output_first and m_out and m_in and m_out.start() < m_in.start():
        output = text[m_out.end() : m_in.start()].strip()
        inp = text[m_in.end() :].strip()
    elif m_out:
        inp = text[m_in.end() : m_out.start()].strip() if m_in and m_in.start() < m_out.start() else ""
        output = text[m_out.end() :].strip()
        # Cut at a following "Input:"/"Output:"/"Task:" line: a second example, not this answer.
        nxt = re.search(r"(?im)^\s*(input|output|task)\s*:", output)
        if nxt:
            output = output[: nxt.start()].strip()
    elif m_in:
        return None  # an input with no answer
    else:
        inp, output = "", text.strip()
    if inp.strip().lower() in _NO_INPUT:
        inp = ""
    return (inp, output) if output else None


def parse_json_instance(text: str) -> tuple[str, str] | None:
    """Reads the first JSON object in the reply as (input, output); None unless both are strings and
    the output is not empty. Text around the object (a code fence, a closing remark) is ignored, since
    a teacher without a schema constraint often adds some."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    inp, output = obj.get("input", ""), obj.get("output")
    if not isinstance(inp, str) or not isinstance(output, str) or not output.strip():
        return None
    inp = "" if inp.strip().lower() in _NO_INPUT else inp.strip()
    return inp, output.strip()


InstanceSource = Literal["json", "text"]


def parse_instance_reply(
    text: str, *, output_first: bool = False, asked_json: bool = False
) -> tuple[tuple[str, str] | None, InstanceSource | None]:
    """(instance, how it was read) for a reply to instance_prompt; (None, None) when it cannot be read.

    A reply to a JSON prompt is read as JSON first. If it is no JSON at all (a teacher that ignored the
    schema and wrote 'Input: ... Output: ...' or a bare answer), the text parser gets it; a reply that
    starts a JSON object but breaks it is not handed on, or the whole broken object would become an output.
    """
    if asked_json:
        parsed = parse_json_instance(text)
        if parsed is not None:
            return parsed, "json"
        if text.lstrip().startswith(("{", "```")):
            return None, None
    parsed = parse_instance(text, output_first=output_first)
    return (parsed, "text") if parsed is not None else (None, None)
