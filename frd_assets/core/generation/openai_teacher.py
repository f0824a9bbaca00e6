"""A teacher behind any OpenAI-compatible chat-completions endpoint (vLLM, TGI, Ollama, llama.cpp, transformers serve).

Prompts go out concurrently up to max_concurrency; 429, 5xx, timeouts and connection errors are retried
with exponential backoff and jitter; anything else fails at once with the server's own message, whether it
speaks OpenAI's {"error": {...}} or FastAPI's {"detail": ...}.

The chat API has no portable way to prefill the assistant's reply, so prompt.prefill is not sent; the
parsers accept replies with or without it (a numbered list at any number, 'Input:' present or not).

A prompt with a JSON schema goes out with OpenAI's `response_format: {"type": "json_schema", ...}`,
which vLLM, llama.cpp's server and OpenAI enforce. Endpoints differ: some refuse it (an HTTP 400 or
422 that the same request without it does not get; it is then sent without it) and some ignore it
(`transformers serve` 5.x logs "Ignoring unsupported fields" and answers freely; noticed when a
finished reply is no JSON). Either way the teacher remembers, stops sending it and reports
supports_json_schema false, so the loop asks in the text format from then on.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Sequence

import requests

from frd_assets.core.generation.prompts import ChatPrompt
from frd_assets.core.generation.teacher_types import Completion, SamplingParams
from frd_assets.core.metrics.text_units import words
from frd_assets.core.records import loads_strict_json
from frd_assets.core.settings import TEACHER_MAX_CONCURRENCY, TEACHER_MAX_RETRIES, TEACHER_TIMEOUT_S

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _is_json(text: str) -> bool:
    try:
        loads_strict_json(text)  # ValueError only: a reply nested too deep is no JSON, not a crash
    except ValueError:
        return False
    return True


class TeacherError(RuntimeError):
    """The endpoint refused or kept failing; the message names the URL and never the API key."""


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message", body["error"]))[:300]
        if "detail" in body:
            return str(body["detail"])[:300]
        if "error" in body:
            return str(body["error"])[:300]
    return str(body)[:300]


class OpenAICompatibleTeacher:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = TEACHER_TIMEOUT_S,
        max_retries: int = TEACHER_MAX_RETRIES,
        backoff_seconds: float = 1.0,
        max_concurrency: int = TEACHER_MAX_CONCURRENCY,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        base = base_url.rstrip("/")
        self.url = base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions"
        self.name = model
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_concurrency = max_concurrency
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self._lock = threading.Lock()
        self.json_schema_fallback_reason: str | None = None  # why response_format is no longer sent

    @property
    def supports_json_schema(self) -> bool:
        return self.json_schema_fallback_reason is None

    def _drop_json_schema(self, reason: str) -> None:
        with self._lock:  # concurrent requests may all find out; the first reason is kept
            if self.json_schema_fallback_reason is None:
                self.json_schema_fallback_reason = reason

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleTeacher({self.url!r}, model={self.model!r})"

    def _session(self) -> requests.Session:
        # One keep-alive session per worker thread: requests.Session is not thread-safe.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _body(self, prompt: ChatPrompt, params: SamplingParams, seed: int, *, with_schema: bool) -> dict:
        body = {
            "model": self.model,
            "messages": list(prompt.messages),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # OpenAI accepts at most four stop sequences
        if with_schema and prompt.json_schema is not None:
            schema = dict(prompt.json_schema)
            body["response_format"] = {
                "type": "json_schema",
                # OpenAI wants a name of letters, digits, _ and -; strict makes it follow the schema exactly.
                "json_schema": {"name": re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title", "reply")))[:64],
                                "schema": schema, "strict": True},
            }
        return body

    def _complete_one(self, prompt: ChatPrompt, params: SamplingParams, seed: int) -> Completion:
        with_schema = prompt.json_schema is not None and self.supports_json_schema
        response = self._post(self._body(prompt, params, seed, with_schema=with_schema))
        if with_schema and response.status_code in (400, 422):
            # Not every server names the field when it refuses it (some report the schema they cannot
            # convert), so the request is sent once more without response_format: if that one is accepted,
            # the schema was what the endpoint refused; if not, the second error is the one to report.
            refusal = _server_message(response)
            response = self._post(self._body(prompt, params, seed, with_schema=False))
            with_schema = False
            if response.status_code < 400:
                self._drop_json_schema(f"endpoint {self.url} refused response_format: {refusal[:200]}")
        if response.status_code >= 400:
            raise TeacherError(
                f"teacher endpoint {self.url} refused the request (HTTP {response.status_code}): "
                f"{_server_message(response)}"
            )
        completion = self._parse(response, constrained=with_schema)
        if with_schema and completion.finish_reason == "stop" and not _is_json(completion.text):
            # An endpoint that enforced the schema cannot have written this: it ignores response_format.
            self._drop_json_schema(f"endpoint {self.url} ignores response_format: a finished reply was no JSON")
            completion = replace(completion, constrained=False)
        return completion

    def _post(self, body: dict) -> requests.Response:
        """The first response that is not worth retrying (a success or a client error)."""
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))  # jitter keeps parallel retries apart
            try:
                response = self._session().post(self.url, json=body, headers=self._headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            return response
        raise TeacherError(
            f"teacher endpoint {self.url} failed after {self.max_retries + 1} attempts; last error: {last_error}. "
            "Check that the server is running and TEACHER_BASE_URL points at it"
        )

    def _parse(self, response: requests.Response, *, constrained: bool) -> Completion:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise TeacherError(
                f"teacher endpoint {self.url} answered without a chat completion: {response.text[:200]}"
            ) from None
        usage = data.get("usage") or {}
        # An endpoint that reports no usage: words by the one text-unit rule stand in for tokens (spaces would
        # count a whole Chinese reply as one).
        tokens = int(usage.get("completion_tokens") or len(words(text)))
        with self._lock:
            self.generated_tokens += tokens
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text=text, finish_reason=reason, completion_tokens=tokens, constrained=constrained)

    def complete(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[Completion]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self._complete_one, p, params, params.seed + i) for i, p in enumerate(prompts)]
            results = [f.result() for f in futures]
        self.generation_seconds += time.perf_counter() - t0
        return results

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0
