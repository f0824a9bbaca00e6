"""`frd export --merge`: a merged model is published only when its greedy outputs equal the adapter's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frd_assets.cli import main
from frd_assets.core.lora.data import tokenize_record
from frd_assets.core.lora.export import (
    MergeMismatch,
    check_merged,
    check_prompts,
    greedy_token_ids,
    merge_to_staging,
    publish_if_identical,
)
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig, run_trial
from frd_assets.core.models import load_causal_lm, load_tokenizer
from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import sample_seed
from frd_assets_tests.test_standalone import MAIN_WITHOUT_DAGSTER

# The bundled sample seed as a file (core/seeds.py names it once).
SAMPLE_SEED = Path(str(sample_seed()))
NEW_TOKENS = 16  # enough for a wrong merge to show; each check generates 20 prompts' worth twice


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tokenizer, tmp_path_factory) -> Path:
    """An adapter trained on the sample seed with a high learning rate, so that it changes greedy outputs."""
    records = parse_seed(SAMPLE_SEED.read_bytes(), SAMPLE_SEED.name)
    examples = [tokenize_record(tokenizer, r, max_length=256) for r in records]
    folder = tmp_path_factory.mktemp("export") / "adapter"
    result = run_trial(
        load_causal_lm(str(tiny_model_dir)), examples[:16], examples[16:20], LoraHyperparams(8, 16, 5e-3),
        TrainingConfig(epochs=2, batch_size=4), pad_id=tokenizer.pad_token_id, save_dir=folder,
        print_fn=lambda _: None,
    )
    assert result.status == "ok"
    return folder


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    return check_prompts(tokenizer, 20)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, adapter_dir, tokenizer, prompts) -> list[list[int]]:
    """The unmerged adapter's greedy outputs, which a correct merge reproduces."""
    return greedy_token_ids(_peft_model(tiny_model_dir, adapter_dir), tokenizer, prompts, max_new_tokens=NEW_TOKENS)


def _peft_model(tiny_model_dir, adapter_dir):
    import warnings

    from peft import PeftModel

    # peft calls a transformers property that transformers 5 renamed; the warning is theirs, not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    return PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(adapter_dir))


def test_frd_export_writes_a_merged_model_whose_greedy_outputs_equal_the_adapters(
    tiny_model_dir, adapter_dir, tmp_path, capsys
):
    out = tmp_path / "merged"
    # No --base-model: the adapter's own, as `frd evaluate` picks it.
    rc = main(["export", str(adapter_dir), "--merge", "--out", str(out), "--max-new-tokens", str(NEW_TOKENS)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "20/20 greedy outputs identical" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert not any(n.startswith("adapter_") or n.endswith((".bin", ".pt")) for n in names)  # plain, no pickles
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # the staging folder was renamed, not left
    merged = load_causal_lm(str(out))
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_the_adapter_matters_so_the_check_means_something(tiny_model_dir, tokenizer, prompts, reference):
    base = greedy_token_ids(load_causal_lm(str(tiny_model_dir)), tokenizer, prompts, max_new_tokens=NEW_TOKENS)
    assert sum(a != b for a, b in zip(base, reference, strict=True)) >= 15
    # So a "merge" that left the base weights alone fails the check.
    assert not check_merged(reference, load_causal_lm(str(tiny_model_dir)), tokenizer, prompts,
                            max_new_tokens=NEW_TOKENS).passed


def test_the_check_catches_a_merge_with_the_wrong_scale(tiny_model_dir, adapter_dir, tokenizer, prompts, reference):
    from peft.tuners.lora import LoraLayer

    model = _peft_model(tiny_model_dir, adapter_dir)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scaling["default"] *= 2  # lora_alpha / r taken twice: the kind of slip a hand-written merge makes
    check = check_merged(reference, model.merge_and_unload(), tokenizer, prompts, max_new_tokens=NEW_TOKENS)
    assert not check.passed and check.identical < 20
    assert check.summary() == f"{check.identical}/20 greedy outputs identical"
    assert check.first_difference.startswith(f"prompt {check.mismatched[0]} parts ways at new token ")


def test_a_corrupted_merged_weight_is_caught_and_nothing_is_published(
    tiny_model_dir, adapter_dir, tokenizer, prompts, tmp_path
):
    from safetensors.torch import load_file, save_file

    staging, out = tmp_path / ".merged.staging", tmp_path / "merged"
    reference = merge_to_staging(adapter_dir, str(tiny_model_dir), staging, prompts, tokenizer=tokenizer,
                                 max_new_tokens=NEW_TOKENS, batch_size=8, device="cpu")
    weights = load_file(staging / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
    weights[name] = weights[name] + 0.5 * torch.randn_like(weights[name])  # one merged weight gone wrong
    save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeMismatch, match=r"greedy outputs identical .*nothing was written to"):
        publish_if_identical(staging, out, reference, prompts, max_new_tokens=NEW_TOKENS, batch_size=8, device="cpu")
    assert not out.exists() and not staging.exists()  # the target never appears; staging is removed


def _bad_inputs(tmp: Path, adapter_dir: Path, tiny_model_dir: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "no-config").mkdir()
    (tmp / "no-config" / "adapter_model.safetensors").write_bytes(b"")
    (tmp / "taken").mkdir()
    (tmp / "taken" / "keep.txt").write_text("someone's file")
    out = str(tmp / "new")
    base = ["--base-model", str(tiny_model_dir)]
    return {
        "no adapter_config.json": (["export", str(tmp / "no-config"), "--merge", "--out", out, *base],
                                   "has no adapter_config.json"),
        "out is not empty": (["export", str(adapter_dir), "--merge", "--out", str(tmp / "taken"), *base],
                             "holds files frd export did not write"),
        "prompts out of range": (["export", str(adapter_dir), "--merge", "--out", out, "--prompts", "0", *base],
                             "merged export: prompts must be in [1, 118], got 0"),
        "no such base model": (["export", str(adapter_dir), "--merge", "--out", out, "--base-model",
                                str(tmp / "nowhere")], "no such folder"),
    }


@pytest.mark.parametrize("case", ["no adapter_config.json", "out is not empty", "prompts out of range",
                                  "no such base model"])
def test_bad_input_is_one_line_and_exit_2(case, adapter_dir, tiny_model_dir, tmp_path, capsys):
    argv, message = _bad_inputs(tmp_path, adapter_dir, tiny_model_dir)[case]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "taken" / "keep.txt").read_text() == "someone's file"


def test_frd_export_never_imports_dagster(adapter_dir, tiny_model_dir, tmp_path):
    # main() in a fresh interpreter, so sys.modules shows what the export command imported; --prompts 0 fails
    # after the adapter, the base model and the tokenizer were looked up, before any weights are read.
    code = MAIN_WITHOUT_DAGSTER
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", str(adapter_dir), "--merge", "--out", str(tmp_path / "out"),
         "--prompts", "0"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr
    assert "prompts must be in [1, 118]" in proc.stderr
