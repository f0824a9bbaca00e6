"""LoRA tuning: (a) the project's trial loop versus a plain peft + torch loop, training tokens per second;
(b) the same number of Optuna trials with and without the median pruner, wall time and best eval loss.

Both parts run in one process on the same records (the project's sample seed plus deterministic
recombinations), the same base model (the prepared SmolLM2-135M-Instruct unless --model) and the same
settings. Goals: (a) at least 0.9x, no overhead; (b) at least 30% of the wall time saved with the same
best loss within noise.

Run: .venv/bin/python -m benchmarks.tuning [--model NAME_OR_PATH] [--trials 8] [--part a|b|both]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from benchmarks.synthetic import make_candidates, seed_instructions
from frd_assets.core.lora.data import batches, split_records, tokenize_record
from frd_assets.core.lora.search import SearchSettings, run_search
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig, run_trial
from frd_assets.core.models import load_causal_lm, load_tokenizer
from frd_assets.core.records import Record, parse_seed


def records(n: int = 40) -> list[Record]:
    data = (resources.files("frd_assets") / "data" / "sample_seed.jsonl").read_bytes()
    seeds = parse_seed(data, "sample_seed.jsonl")
    rng = random.Random(0)
    extra = make_candidates(seed_instructions(), n - len(seeds), seed=5)
    return seeds + [Record(f"x{i}", ins, "", rng.choice(seeds).output) for i, ins in enumerate(extra)]


def plain_loop(model, train, hp: LoraHyperparams, cfg: TrainingConfig, pad_id: int) -> tuple[int, float]:
    """What a user would write by hand: peft model, AdamW, forward, backward, step."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, LoraConfig(r=hp.rank, lora_alpha=hp.lora_alpha,
                                                  lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=hp.learning_rate)
    peft_model.train()
    tokens = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        for batch in batches(train, cfg.batch_size, pad_id, shuffle_seed=cfg.seed + epoch):
            loss = peft_model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - t0
    peft_model.unload()
    return tokens, seconds


def part_a(model_name: str, recs: list[Record]) -> None:
    tokenizer = load_tokenizer(model_name)
    cfg = TrainingConfig(epochs=1, batch_size=4, max_length=256, evals_per_trial=1)
    train_recs, eval_recs = split_records(recs, eval_fraction=0.2, seed=0)
    train = [tokenize_record(tokenizer, r, max_length=cfg.max_length) for r in train_recs]
    evals = [tokenize_record(tokenizer, r, max_length=cfg.max_length) for r in eval_recs]
    model = load_causal_lm(model_name)
    hp = LoraHyperparams(rank=8, lora_alpha=16, learning_rate=2e-4)
    plain_loop(model, train[:4], hp, cfg, tokenizer.pad_token_id)  # warm-up: first-call allocations
    best_plain, best_ours = 0.0, 0.0
    for _ in range(2):  # alternate and keep each side's best: the machine is noisy
        tokens, seconds = plain_loop(model, train, hp, cfg, tokenizer.pad_token_id)
        best_plain = max(best_plain, tokens / seconds)
        result = run_trial(model, train, evals, hp, cfg, pad_id=tokenizer.pad_token_id, print_fn=lambda _: None)
        best_ours = max(best_ours, result.tokens_per_second)
    print(f"(a) plain peft + torch loop: {best_plain:.1f} train tok/s")
    print(f"    project trial:           {best_ours:.1f} train tok/s (includes its clipping; evals not counted)")
    print(f"    ratio: {best_ours / best_plain:.2f}x")


def part_b(model_name: str, recs: list[Record], n_trials: int) -> None:
    training = TrainingConfig(epochs=1, batch_size=4, max_length=256, evals_per_trial=4)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in ("none", "median"):
            t0 = time.perf_counter()
            res = run_search(recs, base_model=model_name, n_trials=n_trials,
                             storage_url=f"sqlite:///{tmp}/{pruner}.db", study_name=pruner,
                             work_dir=Path(tmp) / pruner, out_dir=Path(tmp) / f"{pruner}-best", training=training,
                             settings=SearchSettings(pruner=pruner), print_fn=lambda _: None)
            results[pruner] = (time.perf_counter() - t0, res)
    (t_none, r_none), (t_med, r_med) = results["none"], results["median"]
    pruned = sum(t["state"] == "PRUNED" for t in r_med.trials)
    print(f"(b) {n_trials} trials without pruning: {t_none:.1f} s, best eval loss {r_none.best_eval_loss:.4f}")
    print(f"    {n_trials} trials, median pruner: {t_med:.1f} s, best eval loss {r_med.best_eval_loss:.4f} "
          f"({pruned} pruned)")
    print(f"    wall time saved: {100 * (1 - t_med / t_none):.0f}%; best-loss difference "
          f"{r_med.best_eval_loss - r_none.best_eval_loss:+.4f} (base model {r_none.base_eval_loss:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    args = parser.parse_args()
    recs = records()
    print(f"model: {args.model}; {len(recs)} records; torch threads {torch.get_num_threads()}")
    if args.part in ("a", "both"):
        part_a(args.model, recs)
    if args.part in ("b", "both"):
        part_b(args.model, recs, args.trials)


if __name__ == "__main__":
    main()
