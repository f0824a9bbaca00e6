"""Generation in the seed's language, through a real HTTP endpoint that writes Russian.

The endpoint is a small OpenAI-compatible chat-completions server on 127.0.0.1 (http.server), standing in
for a teacher model that writes Russian, which the tiny test model cannot: every reply to an instruction
prompt lists new Russian tasks, one near-copy of a seed task (one word changed) and one English task;
every instance prompt gets a Russian answer (JSON when response_format asks for it). It records what it
was asked, so the test reads the prompts as the teacher saw them. The code under test, from the HTTP
teacher through the filters, the language check and the novelty filter to the gate, is the real one.
"""

from __future__ import annotations

import itertools
import json
import re
import threading

import pytest

from frd_assets.core.generation.openai_teacher import OpenAICompatibleTeacher
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.language import detect_seed_language, is_off_language, language_name
from frd_assets.core.records import parse_seed, records_to_rows
from frd_assets.core.validation import OFF_LANGUAGE, ValidationConfig, validate
from frd_assets_tests.openai_server import json_endpoint
from frd_assets_tests.test_language import RUSSIAN_SEED, russian_seed_rows

NEW_TASKS = [
    "Предложи пять названий для детского летнего лагеря.",
    "Объясни, чем отличается погода от климата.",
    "Напиши инструкцию, как заварить зелёный чай.",
    "Перечисли плюсы и минусы работы из дома.",
    "Придумай загадку про осенний лес.",
    "Составь план прогулки по старому городу на полдня.",
    "Расскажи, как подготовиться к первому марафону.",
    "Опиши, что делать, если потерялся паспорт за границей.",
    "Сформулируй три правила вежливой переписки в мессенджере.",
    "Подскажи, как научить собаку команде «сидеть».",
]
# The seed's first task with one word changed ("три" -> "пять"): a near-copy the novelty filter must reject.
NEAR_COPY = RUSSIAN_SEED[0]["instruction"].replace("три", "пять")
ENGLISH_TASK = "Write a short story about a lighthouse keeper and a storm."


class RussianTeacherServer:
    """An OpenAI-compatible chat-completions endpoint that answers in Russian; keeps every request body."""

    def __init__(self):
        self.requests: list[dict] = []
        self._next_task = itertools.count()
        self._lock = threading.Lock()
        self.url = ""  # set by the fixture that serves it

    def answer(self, body: dict) -> dict:
        with self._lock:
            self.requests.append(body)
        prompt = body["messages"][-1]["content"]
        if "List of tasks:" in prompt:
            # Continue the numbered list after the examples: two new tasks, the near-copy, the English one.
            start = len(re.findall(r"^\d+\. ", prompt, re.MULTILINE)) + 1
            with self._lock:
                fresh = [NEW_TASKS[next(self._next_task) % len(NEW_TASKS)] for _ in range(2)]
            items = [*fresh, NEAR_COPY, ENGLISH_TASK]
            text = "\n".join(f"{start + i}. {item}" for i, item in enumerate(items))
        else:
            task = prompt.rsplit("Task:", 1)[-1].strip()
            output = f"Вот ответ на задание «{task.rstrip('.')}»: сначала подумаем, потом ответим по шагам."
            text = (json.dumps({"input": "", "output": output}, ensure_ascii=False) if "response_format" in body
                    else f"Input: <noinput>\nOutput: {output}")
        return {"id": "chatcmpl-ru", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}}


@pytest.fixture
def russian_endpoint():
    server = RussianTeacherServer()
    with json_endpoint(lambda body: (200, server.answer(body))) as server.url:
        yield server


def test_generation_through_a_russian_endpoint_keeps_russian_tasks_and_rejects_near_copies(russian_endpoint):
    seed_bytes = "\n".join(json.dumps(r, ensure_ascii=False) for r in russian_seed_rows()).encode()
    seeds = parse_seed(seed_bytes, "ru_seed.jsonl")
    teacher = OpenAICompatibleTeacher(russian_endpoint.url, "russian-writer", max_concurrency=2)
    config = GenerationConfig(num_instructions=6, prompts_per_round=2, max_rounds=4, seed_tasks_per_prompt=4)
    result = generate(seeds, teacher, config, log=lambda _: None)

    assert (result.language.code, result.language.name) == ("ru", "Russian")
    # Every prompt the endpoint saw asks for Russian in words, and none for the default language.
    prompts = [body["messages"][-1]["content"] for body in russian_endpoint.requests]
    assert prompts and all("in Russian" in p for p in prompts)
    assert not any(f"in {language_name('en')}" in p for p in prompts)
    # Russian tasks are kept, with Russian instances.
    kept = [r.instruction for r in result.records]
    assert len(kept) == 6 and set(kept) <= set(NEW_TASKS), result.rejected
    # Judged as the gate judges: none is confidently off Russian, and Russian is their majority. (One line,
    # "Придумай загадку про осенний лес.", is read as Ukrainian on its own: a per-line guess is not the test.)
    assert not any(is_off_language(r.instruction, "ru") or is_off_language(r.output, "ru") for r in result.records)
    assert detect_seed_language(kept).code == "ru"
    # The near-copy of a seed task is not novel; the English task is off the seed's language.
    assert NEAR_COPY not in kept and result.rejected["not_novel"] >= 1, result.rejected
    assert ENGLISH_TASK not in kept and result.rejected[OFF_LANGUAGE] >= 1, result.rejected
    # The gate keeps them all and counts no record off the language.
    report = validate(records_to_rows(result.records), russian_seed_rows(), ValidationConfig())
    assert report.language.expected.code == "ru" and report.language.off_language == 0
    assert OFF_LANGUAGE not in report.invalid_records and report.valid_records == 6, report.invalid_records
