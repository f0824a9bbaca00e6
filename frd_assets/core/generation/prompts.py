"""Self-Instruct prompts (Wang et al. 2022, Alpaca's wording) and parsers for what the teacher writes back."""

from __future__ import annotations

import re
from dataclasses import dataclass

INSTRUCTION_PROMPT_HEADER = (
    "You are asked to come up with a set of diverse task instructions. "
    "Vary the verbs and the kinds of task (open questions, classification, rewriting, brainstorming, "
    "explanation, reasoning). Each instruction is one or two sentences in English that a language model "
    "can answer in text. Do not repeat the examples.\n\nList of tasks:"
)

INSTANCE_PROMPT = (
    "Write one example for the task below.\n"
    "If the task needs an input (a text, a list, a question to work on), write it after 'Input:'; "
    "otherwise write 'Input: <noinput>'. Then write a correct, complete answer after 'Output:'.\n\n"
    "Task: {instruction}"
)

CLASSIFICATION_INSTANCE_PROMPT = (
    "Write one example for the classification task below. First write the class label after 'Output:', "
    "then an input that belongs to that class after 'Input:'.\n\nTask: {instruction}"
)


@dataclass(frozen=True)
class ChatPrompt:
    """A chat conversation for the teacher plus text the assistant's reply is made to start with."""

    messages: tuple[dict[str, str], ...]
    prefill: str = ""


def instruction_prompt(examples: list[str]) -> ChatPrompt:
    """Shows the examples as a numbered list and lets the teacher continue it at the next number."""
    lines = [INSTRUCTION_PROMPT_HEADER]
    lines += [f"{i}. {ex.strip()}" for i, ex in enumerate(examples, start=1)]
    listing = "\n".join(lines)
    # Prefilling the next number makes even a small teacher continue the list instead of chatting.
    return ChatPrompt(({"role": "user", "content": listing},), prefill=f"{len(examples) + 1}.")


def instance_prompt(instruction: str, *, is_classification: bool = False) -> ChatPrompt:
    template = CLASSIFICATION_INSTANCE_PROMPT if is_classification else INSTANCE_PROMPT
    prefill = "Output:" if is_classification else "Input:"
    return ChatPrompt(({"role": "user", "content": template.format(instruction=instruction.strip())},), prefill)


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
    if inp.strip().lower() in ("<noinput>", "noinput", "none", "n/a", "<no input>"):
        inp = ""
    return (inp, output) if output else None
