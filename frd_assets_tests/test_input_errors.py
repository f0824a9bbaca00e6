"""Bad input gives one line on stderr naming the input and the fix, and exit code 2, never a traceback.

Each case comes from issue 10, where it printed a traceback (or, for a Hub id without network, waited
about 50 s first). Commands run in-process through `main` where the environment they read is set with
monkeypatch, and as a subprocess where a library reads it at import (Hugging Face settings) or a real
server is involved.
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from frd_assets.cli import EXIT_BAD_INPUT, main
from frd_assets.core.config_checks import ConfigError, Integer, check_fields
from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.lora.search import SearchSettings, SearchSpace
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig
from frd_assets.core.validation import ValidationConfig
from frd_assets.defs.config import GenerationRunConfig, LoraRunConfig, ValidationRunConfig

DEEP_ARRAY = b"[" * 100_000
DEEP_LINE = b'{"instruction": "a", "output": "b"}\n{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
RECORDS = b"".join(
    json.dumps({"instruction": f"Name the number {i}.", "input": "", "output": str(i)}).encode() + b"\n"
    for i in range(6)
)


def the_one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def run_main(capsys, *argv) -> str:
    rc = main(list(argv))
    assert rc == EXIT_BAD_INPUT
    return the_one_error_line(capsys.readouterr().err)


def frd(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frd_assets.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def run_frd(*args, env: dict[str, str]) -> str:
    out = frd(*args, env=env)
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    return the_one_error_line(out.stderr)


@pytest.fixture
def local_store_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture
def pickle_only_model(tmp_path) -> Path:
    """What an old `torch.save`-era checkpoint looks like: config.json beside pytorch_model.bin."""
    folder = tmp_path / "pickle-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"not loaded: pickles are refused before anything reads them")
    return folder


# --- JSON nested 100,000 deep -------------------------------------------------------------------------


@pytest.mark.parametrize("data, line", [(DEEP_ARRAY, 1), (DEEP_LINE, 2)], ids=["bare-brackets", "jsonl-line"])
def test_seed_upload_of_deeply_nested_json_is_one_line(capsys, tmp_path, local_store_env, data, line):
    seed = tmp_path / "deep.jsonl"
    seed.write_bytes(data)
    message = run_main(capsys, "seed", "upload", str(seed))
    assert f"{seed} line {line}: invalid JSON: nested too deeply" in message
    assert not local_store_env.exists()


@pytest.mark.parametrize("data, line", [(DEEP_ARRAY, 1), (DEEP_LINE, 2)], ids=["bare-brackets", "jsonl-line"])
def test_validate_with_a_deeply_nested_seed_is_one_line(capsys, tmp_path, data, line):
    seed, records = tmp_path / "deep.json", tmp_path / "records.jsonl"
    seed.write_bytes(data)
    records.write_bytes(RECORDS)
    message = run_main(capsys, "validate", str(records), "--seed", str(seed))
    assert f"{seed} line {line}: invalid JSON: nested too deeply" in message


# --- seed upload: files, ids and the store --------------------------------------------------------------


def test_seed_upload_of_an_unreadable_or_missing_file_is_one_line(capsys, tmp_path, local_store_env):
    assert str(tmp_path) in run_main(capsys, "seed", "upload", str(tmp_path))  # a folder: IsADirectoryError
    assert "missing.jsonl" in run_main(capsys, "seed", "upload", str(tmp_path / "missing.jsonl"))


def test_seed_upload_with_a_bad_uuid_is_one_line(capsys, tmp_path, local_store_env, sample_seed_bytes):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    message = run_main(capsys, "seed", "upload", str(seed), "--uuid", "NOT-A-UUID/")
    assert "--uuid 'NOT-A-UUID/'" in message


def test_seed_upload_with_wrong_credentials_is_one_line(s3_server, tmp_path, sample_seed_bytes):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    message = run_frd("seed", "upload", str(seed), env={**s3_server.env(), "MINIO_SECRET_KEY": "wrong-secret-000"})
    assert "MINIO_SECRET_KEY" in message
    assert "wrong-secret-000" not in message


def test_seed_upload_with_the_s3_server_down_is_one_line(tmp_path, sample_seed_bytes):
    # The connection failure itself is S3Store's to turn into a StoreError; the CLI prints it as one line.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    env = {"MINIO_ENDPOINT": f"http://127.0.0.1:{port}", "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}
    message = run_frd("seed", "upload", str(seed), env=env)
    assert f"127.0.0.1:{port}" in message


# --- models ---------------------------------------------------------------------------------------------


def test_tune_with_a_pickle_only_model_folder_is_one_line_naming_the_conversion(capsys, tmp_path, pickle_only_model):
    data = tmp_path / "records.jsonl"
    data.write_bytes(RECORDS)
    message = run_main(
        capsys, "tune", str(data), "--base-model", str(pickle_only_model), "--out", str(tmp_path / "adapter"),
        "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    assert str(pickle_only_model) in message and "pytorch_model.bin" in message
    assert "save_pretrained(dir, safe_serialization=True)" in message
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "adapter").exists()


def test_generate_with_a_pickle_only_teacher_is_one_line(capsys, tmp_path, pickle_only_model, sample_seed_bytes):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    message = run_main(
        capsys, "generate", str(seed), "--out", str(tmp_path / "out.jsonl"), "--teacher-model", str(pickle_only_model)
    )
    assert str(pickle_only_model) in message and "safetensors" in message


@pytest.mark.parametrize("offline", ["", "1"], ids=["network-allowed", "HF_HUB_OFFLINE"])
def test_tune_with_a_hub_id_that_cannot_be_had_is_one_line(tmp_path, offline):
    # An id no one owns: without network the Hub cannot be reached, with it the Hub says there is no such
    # model; either way one line. An empty cache keeps a developer's own downloads out of the test.
    data = tmp_path / "records.jsonl"
    data.write_bytes(RECORDS)
    model = "frd-no-such-org-0f3a/no-such-model"
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": offline}
    message = run_frd("tune", str(data), "--base-model", model, "--out", str(tmp_path / "adapter"), env=env)
    assert repr(model) in message
    assert "give a folder" in message


def test_a_hub_id_in_the_local_cache_loads_without_the_network(tmp_path, tiny_model_dir):
    # The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}.
    repo = tmp_path / "hf-cache" / "models--someorg--tiny-chat"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    code = (
        "from frd_assets.core.models import load_causal_lm, load_tokenizer, resolve_model\n"
        "print(resolve_model('someorg/tiny-chat'))\n"
        "load_tokenizer('someorg/tiny-chat'); load_causal_lm('someorg/tiny-chat')\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(repo / "snapshots" / "0123abcd")


# --- configs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"self_bleu_sample": -1}', "validation config: self_bleu_sample must be in [2, 10000], got -1"),
        ('{"self_bleu_sample": 0}', "validation config: self_bleu_sample must be in [2, 10000], got 0"),
        ('{"min_valid_records": 1e999}', "validation config: min_valid_records must be an integer >= 2, got inf"),
        ('{"max_output_chars": -5}', "validation config: max_output_chars must be >= 1, got -5"),
        ('{"seed": "abc"}', "validation config: seed must be an integer in [0, 4294967295], got 'abc'"),
        ('{"max_self_bleu": 50, "self_bleu": 3}',
         "--config: unknown field 'self_bleu'; the fields are min_valid_records"),
        ('{"max_self_bleu": NaN}', "--config is not JSON (NaN is not JSON"),
        ("{max_self_bleu: 50}", "--config is not JSON (Expecting property name"),
        ("[1, 2]", "--config must be a JSON object of fields, got list"),
    ],
)
def test_validate_with_a_bad_config_is_one_line_naming_field_value_and_range(capsys, tmp_path, config, message):
    records = tmp_path / "records.jsonl"
    records.write_bytes(RECORDS)
    assert run_main(capsys, "validate", str(records), "--config", config).startswith(f"error: {message}")


# (config class, the fields to set, the whole message): every core config checks type and range by name.
BAD_CONFIGS = [
    (GenerationConfig, {"num_instructions": 2.5},
     "generation config: num_instructions must be an integer >= 1, got 2.5"),
    (GenerationConfig, {"temperature": float("inf")},
     "generation config: temperature must be a finite number in [0, 2], got inf"),
    (GenerationConfig, {"top_p": 0}, "generation config: top_p must be in (0, 1], got 0"),
    (GenerationConfig, {"max_new_tokens_instance": 10**6},
     "generation config: max_new_tokens_instance must be in [1, 32768], got 1000000"),
    (GenerationConfig, {"embedding_dedup_threshold": "0.9"},
     "generation config: embedding_dedup_threshold must be a finite number in (0, 1] or null, got '0.9'"),
    (GenerationConfig, {"min_words": 10, "max_words": 5},
     "generation config: max_words must be >= min_words (10), got 5"),
    (TrainingConfig, {"epochs": True}, "training config: epochs must be an integer in [1, 1000], got True"),
    (TrainingConfig, {"eval_fraction": 1}, "training config: eval_fraction must be in (0, 1), got 1"),
    (TrainingConfig, {"weight_decay": -0.1}, "training config: weight_decay must be in [0, 1], got -0.1"),
    (TrainingConfig, {"target_modules": "q_proj"},
     'training config: target_modules must be "all-linear", a non-empty list of module names such as '
     '["q_proj", "v_proj"], or null, got \'q_proj\''),
    (LoraHyperparams, {"rank": 0, "lora_alpha": 8, "learning_rate": 1e-4},
     "LoRA hyperparameters: rank must be >= 1, got 0"),
    (LoraHyperparams, {"rank": 8, "lora_alpha": 8, "learning_rate": float("nan")},
     "LoRA hyperparameters: learning_rate must be a finite number in (0, 1), got nan"),
    (SearchSpace, {"lr_min": 0}, "search space: lr_min must be in (0, 1), got 0"),
    (SearchSpace, {"alpha_min": 64, "alpha_max": 8}, "search space: alpha_max must be >= alpha_min (64), got 8"),
    (SearchSettings, {"pruner": "sometimes"},
     "search settings: pruner must be one of 'median', 'hyperband', 'none', got 'sometimes'"),
    (SearchSettings, {"n_startup_trials": -1}, "search settings: n_startup_trials must be >= 0 or null, got -1"),
    (SearchSettings, {"heartbeat_interval": 10, "grace_period": 10},
     "search settings: grace_period must be > heartbeat_interval (10), got 10"),
    (SearchSettings, {"seed": 2**32}, "search settings: seed must be in [0, 4294967295], got 4294967296"),
]


@pytest.mark.parametrize("cls, values, message", BAD_CONFIGS, ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_core_configs_refuse_bad_values_naming_config_field_value_and_range(cls, values, message):
    with pytest.raises(ConfigError) as err:
        cls(**values)
    assert str(err.value) == message


def test_a_config_field_without_a_rule_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class HalfChecked:
        checked: int = 1
        forgotten: int = 2

        def __post_init__(self) -> None:
            check_fields(self, "half-checked config", {"checked": Integer(0)})

    with pytest.raises(TypeError, match=r"unchecked \['forgotten'\]"):
        HalfChecked()


@pytest.mark.parametrize(
    "run_config, values, message",
    [
        (GenerationRunConfig, {"temperature": 5.0}, "generation config: temperature must be in [0, 2], got 5.0"),
        (ValidationRunConfig, {"self_bleu_sample": 1},
         "validation config: self_bleu_sample must be in [2, 10000], got 1"),
        (LoraRunConfig, {"weight_decay": 2.0}, "training config: weight_decay must be in [0, 1], got 2.0"),
        (LoraRunConfig, {"rank_min": 64, "rank_max": 4}, "search space: rank_max must be >= rank_min (64), got 4"),
        (LoraRunConfig, {"pruner": "sometimes"}, "search settings: pruner must be one of"),
        (LoraRunConfig, {"n_trials": 0}, "lora_adapter config: n_trials must be in [1, 10000] or null, got 0"),
        # The three values `frd validate --config` accepted before the checks, here in the Dagster run config.
        (ValidationRunConfig, {"min_valid_records": 1e999}, "min_valid_records\n  Input should be a finite number"),
        (ValidationRunConfig, {"max_output_chars": -5}, "validation config: max_output_chars must be >= 1, got -5"),
        (ValidationRunConfig, {"seed": "abc"}, "seed\n  Input should be a valid integer"),
    ],
)
def test_a_bad_dagster_run_config_fails_when_built_with_the_core_message(run_config, values, message):
    with pytest.raises(ValidationError) as err:
        run_config(**values)
    assert message in str(err.value)


def test_run_configs_build_the_core_dataclasses_they_mirror():
    assert GenerationRunConfig(num_instructions=7).core() == GenerationConfig(num_instructions=7)
    assert ValidationRunConfig(max_self_bleu=40).core() == ValidationConfig(max_self_bleu=40.0)
    lora = LoraRunConfig(weight_decay=0.01, target_modules=["q_proj"], rank_max=32, pruner="none",
                         pruner_startup_trials=3, seed=5)
    assert lora.training() == TrainingConfig(weight_decay=0.01, target_modules=("q_proj",), seed=5)
    assert lora.space() == SearchSpace(rank_max=32)
    assert lora.settings() == SearchSettings(pruner="none", pruner_startup_trials=3, seed=5)
    # Every training and search-space field has its launchpad twin, with the core default.
    defaults = LoraRunConfig().model_dump()
    for core in (TrainingConfig(), SearchSpace()):
        for f in dataclasses.fields(core):
            expected = getattr(core, f.name)
            if f.name == "target_modules" and isinstance(expected, str):
                expected = (expected,)  # the launchpad spells "all-linear" as a one-item list; core accepts it
            assert defaults[f.name] == (list(expected) if isinstance(expected, tuple) else expected), f.name
    assert LoraRunConfig().training() == TrainingConfig()
