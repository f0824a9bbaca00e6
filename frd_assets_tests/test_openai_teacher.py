"""The HTTP teacher against a real OpenAI-compatible server process (`transformers serve`)."""

import threading
import time

import pytest

from frd_assets.core.generation.openai_teacher import OpenAICompatibleTeacher, TeacherError
from frd_assets.core.generation.prompts import instance_prompt, instruction_prompt
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import SamplingParams, make_teacher
from frd_assets.core.records import parse_seed
from frd_assets_tests.openai_server import free_port, start_openai_server, stop, wait_ready


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    proc, url = start_openai_server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    wait_ready(proc, url)
    yield url
    stop(proc)


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


def test_a_refused_request_fails_at_once_with_the_servers_message(server):
    teacher = OpenAICompatibleTeacher(server, "not-the-served-model", max_retries=3, backoff_seconds=5)
    t0 = time.monotonic()
    with pytest.raises(TeacherError, match=r"refused the request \(HTTP 400\): Server is pinned to"):
        teacher.complete([instruction_prompt(["Name a fruit."])], SamplingParams(max_new_tokens=4))
    assert time.monotonic() - t0 < 5  # a 400 is not retried


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
