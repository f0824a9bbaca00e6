"""The HTTP teacher against a real OpenAI-compatible server process (`transformers serve`)."""

import threading
import time

import pytest
import requests

from frd_assets.core.generation.openai_teacher import OpenAICompatibleTeacher, TeacherError
from frd_assets.core.generation.prompts import instance_prompt, instruction_prompt
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import SamplingParams, make_teacher
from frd_assets.core.records import parse_seed
from frd_assets_tests.openai_server import free_port, json_endpoint, start_openai_server, stop, wait_ready


@pytest.fixture(scope="module")
def serve_log(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def server(tiny_model_dir, serve_log):
    proc, url = start_openai_server(tiny_model_dir, serve_log)
    wait_ready(proc, url)
    yield url
    stop(proc)


# What OpenAI answers for a model without structured outputs.
REFUSAL = {"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                                "with this model.", "type": "invalid_request_error", "param": "response_format"}}


@pytest.fixture
def refusing_endpoint(server):
    """The real server behind a front that refuses response_format the way OpenAI does for a model
    without structured outputs (transformers serve only ignores it); records each request's response_format
    (None where it had none)."""
    carried: list[dict | None] = []

    def front(body: dict) -> tuple[int, dict]:
        carried.append(body.get("response_format"))
        if "response_format" in body:
            return 400, REFUSAL
        answer = requests.post(server + "/chat/completions", json=body, timeout=120)
        return answer.status_code, answer.json()

    with json_endpoint(front) as url:
        yield url, carried


def test_chat_completions_come_back_in_order_with_usage(server, tiny_model_dir):
    teacher = OpenAICompatibleTeacher(server, str(tiny_model_dir), api_key="sk-test-not-logged", max_concurrency=2)
    prompts = [instance_prompt(f"Describe the quiet river number {i}.") for i in range(4)]
    out = teacher.complete(prompts, SamplingParams(max_new_tokens=12, temperature=0.7, seed=3))
    assert len(out) == 4
    assert all(c.completion_tokens > 0 and c.finish_reason in ("stop", "length") for c in out)
    assert [c.finish_reason for c in out].count("length") >= 1  # 12 tokens is short enough to cut some off
    assert teacher.generated_tokens == sum(c.completion_tokens for c in out)
    assert "sk-test" not in repr(teacher)


def test_the_loop_runs_on_the_http_teacher(server, tiny_model_dir, sample_seed_bytes):
    teacher = make_teacher(backend="openai", model=str(tiny_model_dir), base_url=server, max_concurrency=4)
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    result = generate(seeds, teacher, GenerationConfig(num_instructions=4, prompts_per_round=4, max_rounds=3,
                                                       max_new_tokens_instructions=64,
                                                       max_new_tokens_instance=48, temperature=1.0),
                      log=lambda _: None)
    assert result.rounds >= 1 and result.proposed > 0 and result.teacher_tokens > 0
    assert sum(result.rejected.values()) + len(result.records) >= result.proposed - 4
    # transformers serve answers JSON prompts freely, and the tiny model writes no JSON: every
    # instance came through the text parser, and the teacher stopped asking for the schema.
    assert result.instances.constrained == result.instances.json == 0
    assert result.instances.text == len(result.records)
    assert not teacher.supports_json_schema and "ignores response_format" in result.json_fallback_reason


def test_transformers_serve_ignores_response_format_and_the_teacher_notices(server, serve_log, tiny_model_dir):
    teacher = OpenAICompatibleTeacher(server, str(tiny_model_dir), max_concurrency=1)
    assert teacher.supports_json_schema
    prompts = [instance_prompt(f"Describe the gentle forest number {i}.", as_json=True) for i in range(3)]
    out = teacher.complete(prompts, SamplingParams(max_new_tokens=48, temperature=0))
    # The server took the request, said so in its log, and answered without the schema.
    assert "Ignoring unsupported fields in the request: {'response_format'}" in serve_log.read_text()
    finished = [c for c in out if c.finish_reason == "stop"]
    assert finished and not any(c.constrained for c in finished)
    assert not teacher.supports_json_schema
    assert "ignores response_format" in teacher.json_schema_fallback_reason


def test_a_refused_response_format_is_sent_again_without_it_and_remembered(refusing_endpoint, tiny_model_dir):
    url, carried = refusing_endpoint
    teacher = OpenAICompatibleTeacher(url, str(tiny_model_dir), max_concurrency=1, backoff_seconds=5)
    prompts = [instance_prompt(f"Name the famous island number {i}.", as_json=True) for i in range(3)]
    out = teacher.complete(prompts, SamplingParams(max_new_tokens=16, temperature=0))
    assert len(out) == 3 and all(c.completion_tokens > 0 and not c.constrained for c in out)
    # One refusal, the same request again without the field, and no later request carries it.
    assert [c is not None for c in carried] == [True, False, False, False]
    # What went out is OpenAI's structured-output form with the instance schema.
    assert carried[0] == {"type": "json_schema", "json_schema": {"name": "instance", "strict": True,
                                                                 "schema": prompts[0].json_schema}}
    assert not teacher.supports_json_schema
    assert "refused response_format: Invalid parameter: 'response_format'" in teacher.json_schema_fallback_reason


def test_the_loop_asks_in_text_after_a_refusal(refusing_endpoint, tiny_model_dir, sample_seed_bytes):
    url, carried = refusing_endpoint
    teacher = OpenAICompatibleTeacher(url, str(tiny_model_dir), max_concurrency=2)
    seeds = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    result = generate(seeds, teacher, GenerationConfig(num_instructions=4, prompts_per_round=4, max_rounds=3,
                                                       max_new_tokens_instructions=64,
                                                       max_new_tokens_instance=48, temperature=1.0),
                      log=lambda _: None)
    # At most one refused request per concurrent worker before the refusal is remembered.
    assert 1 <= sum(c is not None for c in carried) <= 2
    assert result.instances.constrained == result.instances.json == 0
    assert result.instances.text == len(result.records)
    assert "refused response_format" in result.json_fallback_reason


def test_a_refused_request_fails_at_once_with_the_servers_message(server):
    teacher = OpenAICompatibleTeacher(server, "not-the-served-model", max_retries=3, backoff_seconds=5)
    t0 = time.monotonic()
    with pytest.raises(TeacherError, match=r"refused the request \(HTTP 400\): Server is pinned to"):
        teacher.complete([instruction_prompt(["Name a fruit."])], SamplingParams(max_new_tokens=4))
    assert time.monotonic() - t0 < 5  # a 400 is not retried


def test_a_json_request_refused_for_another_reason_reports_that_reason_and_keeps_the_schema(server):
    # Sent again without response_format, the request is still refused: the schema was not the cause.
    teacher = OpenAICompatibleTeacher(server, "not-the-served-model", max_retries=3, backoff_seconds=5)
    with pytest.raises(TeacherError, match=r"refused the request \(HTTP 400\): Server is pinned to"):
        teacher.complete([instance_prompt("Name a fruit.", as_json=True)], SamplingParams(max_new_tokens=4))
    assert teacher.supports_json_schema and teacher.json_schema_fallback_reason is None


def test_an_unreachable_endpoint_fails_after_retries_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    teacher = OpenAICompatibleTeacher(url, "m", max_retries=2, backoff_seconds=0.05, timeout=2)
    with pytest.raises(TeacherError) as err:
        teacher.complete([instance_prompt("Name a fruit.")], SamplingParams(max_new_tokens=4))
    assert f"{url}/chat/completions failed after 3 attempts" in str(err.value)
    assert "ConnectionError" in str(err.value)


def test_connection_errors_are_retried_until_the_server_comes_up(tiny_model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    started = {}

    def start_later():
        time.sleep(1.0)
        started["proc"] = start_openai_server(tiny_model_dir, tmp_path / "late.log", port=port)[0]

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        # Backoff 0.5, 1, 2, 4, 8, 16 s (with jitter): room for the late server's few seconds of start-up.
        teacher = OpenAICompatibleTeacher(url, str(tiny_model_dir), max_retries=6, backoff_seconds=0.5, timeout=30)
        [done] = teacher.complete([instance_prompt("Name a fruit.")], SamplingParams(max_new_tokens=4))
        assert done.completion_tokens > 0
    finally:
        thread.join()
        if "proc" in started:
            stop(started["proc"])
