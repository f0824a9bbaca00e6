"""The trial loop at the sizes users tune: models shaped like Llama-3.2-1B and Llama-3.1-8B (random weights
built from their configs, nothing downloaded), LoRA rank 16 on every linear layer, sequences of 2,048
tokens, one per micro-batch; bf16 and NF4 bases, each with and without gradient checkpointing.

Each configuration runs as a real trial (core/lora/trial.py's run_trial, after a one-step warm-up trial on
the same loaded model, so that CUDA's first-call costs are not timed) and reports training tokens per
second, the peak memory measured (torch.cuda.max_memory_allocated), the memory pre-flight's estimate
(core/lora/memory.py) and MFU: 4 x parameters x tokens/s over the device's peak dense bf16 FLOP/s (LoRA
computes no weight gradients for the frozen base: forward 2N, backward through the activations 2N).

Baselines measured in the same run: checkpointing against none on the same model (memory and speed), and
the NF4 base against the bf16 one (memory). The peaks of the anchors it can be read against: LitGPT
measured Llama-3-8B LoRA at 19.7 GB and QLoRA at 17.4 GB (A10G, 512 tokens); torchtune Llama-3.1-8B LoRA
at 16.2 GiB and QLoRA at 7.4 GiB, 3,083 tokens/s on a 4090 (packed 2,048).

Without CUDA it runs a tiny Llama (hidden 64) on the CPU at 128 tokens, so that the tests can run it in
seconds; its figures say only that the code path works.

Run: .venv/bin/python -m benchmarks.gpu_trainer [--models llama-3.2-1b,llama-3.1-8b] [--steps 8] [--seq 2048]
(under 8 minutes on one H100; the 8B model is written to a temporary folder once, 16 GB, to be loaded
through the project's loader in bf16 and in NF4)
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from frd_assets.core.lora.data import Example
from frd_assets.core.lora.memory import model_shape
from frd_assets.core.lora.precision import load_training_model
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig, run_trial

SHAPES = {
    # Llama-3.2-1B and Llama-3.1-8B as their config.json give them.
    "llama-3.2-1b": dict(vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3.1-8b": dict(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=True),
}
COMMON = dict(max_position_embeddings=8192, rope_theta=500_000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets, without sparsity); the first match wins.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("4090", 165e12),
]
RANK = 16


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in device_name), None)


def build_random_model(shape: str, folder: Path, dtype) -> Path:
    """A model with this shape and random weights, saved as safetensors for the project's loader."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], **COMMON)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it is fastest, in its dtype: an 8B model in seconds on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def examples(n: int, seq: int, vocab: int) -> list[Example]:
    g = torch.Generator().manual_seed(n)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        out.append(Example(ids, [-100] * 16 + ids[16:]))  # a short masked prompt, as in the project's data
    return out


def measure(model, config: TrainingConfig, *, steps: int, seq: int, vocab: int) -> dict:
    hp = LoraHyperparams(RANK, 2 * RANK, 1e-4)
    evals = examples(1, 32, vocab)
    quiet = {"pad_id": 0, "print_fn": lambda _: None}
    warm = run_trial(model, examples(1, seq, vocab), evals, hp, config, **quiet)  # CUDA's first calls, untimed
    if warm.status != "ok":
        return {"status": warm.status, "error": warm.error[:200]}
    result = run_trial(model, examples(steps, seq, vocab), evals, hp, config, **quiet)
    return {
        "status": result.status,
        "tokens_per_s": round(result.tokens_per_second, 1),
        "seconds": round(result.seconds, 2),
        "peak_mb": result.peak_memory_mb,
        "estimate_mb": result.memory_estimate_mb,
        "estimate_over_peak": round(result.memory_estimate_mb / result.peak_memory_mb, 3)
        if result.peak_memory_mb else None,
        "weights": result.weights,
        "checkpointing": result.gradient_checkpointing,
    }


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b" if cuda else "tiny")
    parser.add_argument("--steps", type=int, default=8 if cuda else 3, help="timed optimizer steps per configuration")
    parser.add_argument("--seq", type=int, default=2048 if cuda else 128, help="tokens per sequence")
    parser.add_argument("--quantizations", default="none,nf4")
    args = parser.parse_args()
    if not cuda:
        torch.set_num_threads(1)
    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_flops(device_name) if cuda else None
    print(f"device {device_name}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else f"device {device_name}; "
          "no peak bf16 figure known for it: MFU not given")
    figures: dict = {"benchmark": "gpu_trainer", "device": device_name, "seq": args.seq, "rank": RANK,
                     "steps": args.steps}
    runs = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.models.split(","):
            folder = build_random_model(shape, Path(tmp) / shape, torch.bfloat16 if cuda else torch.float32)
            from transformers import AutoConfig

            n_params = model_shape(AutoConfig.from_pretrained(folder)).n_params
            for quantization in args.quantizations.split(","):
                config_fields = dict(epochs=1, batch_size=1, max_length=args.seq, evals_per_trial=1,
                                     warmup_ratio=0.0, quantization=quantization)
                model = load_training_model(str(folder), precision="auto", quantization=quantization, device=device)
                for checkpointing in (False, True):
                    config = TrainingConfig(**config_fields, gradient_checkpointing=checkpointing)
                    row = {"model": shape, "params": n_params, "quantization": quantization,
                           **measure(model, config, steps=args.steps, seq=args.seq, vocab=SHAPES[shape]["vocab_size"])}
                    if peak and row.get("tokens_per_s"):
                        row["mfu"] = round(4 * n_params * row["tokens_per_s"] / peak, 4)
                    runs.append(row)
                    print(json.dumps(row)[1:-1])  # a row per configuration; the one JSON object comes last
                del model
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            for weights in Path(folder).glob("*.safetensors"):  # the disk for the next model
                weights.unlink()

    def key(r):
        return f"{r['model']}_{r['quantization']}_{'ckpt' if r['checkpointing'] else 'nockpt'}"

    ok = {key(r): r for r in runs if r.get("status") == "ok"}
    for name, r in ok.items():
        figures[f"{name}_tokens_per_s"] = r["tokens_per_s"]
        figures[f"{name}_peak_mb"] = r["peak_mb"]
        figures[f"{name}_estimate_mb"] = r["estimate_mb"]
        if "mfu" in r:
            figures[f"{name}_mfu"] = r["mfu"]
    print()
    for shape in args.models.split(","):
        for q in args.quantizations.split(","):
            off, on = ok.get(f"{shape}_{q}_nockpt"), ok.get(f"{shape}_{q}_ckpt")
            if off and on:
                figures[f"{shape}_{q}_ckpt_memory_ratio"] = round(on["peak_mb"] / off["peak_mb"], 3)
                figures[f"{shape}_{q}_ckpt_speed_ratio"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)
                print(f"{shape} {q}: checkpointing peak {on['peak_mb']:.0f} vs {off['peak_mb']:.0f} MiB "
                      f"({figures[f'{shape}_{q}_ckpt_memory_ratio']}x), tokens/s "
                      f"{figures[f'{shape}_{q}_ckpt_speed_ratio']}x")
        for c in ("ckpt", "nockpt"):
            bf, q4 = ok.get(f"{shape}_none_{c}"), ok.get(f"{shape}_nf4_{c}")
            if bf and q4:
                figures[f"{shape}_nf4_vs_unquantized_memory_ratio_{c}"] = round(q4["peak_mb"] / bf["peak_mb"], 3)
                print(f"{shape} {c}: NF4 peak {q4['peak_mb']:.0f} vs {bf['weights']} {bf['peak_mb']:.0f} MiB "
                      f"({figures[f'{shape}_nf4_vs_unquantized_memory_ratio_{c}']}x)")
    figures["failed"] = [key(r) for r in runs if r.get("status") != "ok"]
    figures["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
