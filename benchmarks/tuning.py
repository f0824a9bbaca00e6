"""LoRA tuning: (a) the project's trial loop versus a plain peft + torch loop, training tokens per second
and the final eval loss of each;
(b) the same number of Optuna trials with and without the median pruner, wall time and best eval loss;
(c) trials per hour with 2 trial workers of 1 thread each versus 1 worker of 1 thread;
(d) the peak RSS of one worker's trial processes after its 2nd and after its 10th trial.

All parts run in one process on the same records, the same base model and the same settings. The records
are the first 48 of the 175 Self-Instruct seed tasks (../shared/data, see benchmarks/seed_sets.py), in file
order: real instruction data whose lengths vary as a user's seed does, which is what padding waste is
about. Where the checkout has no shared copy, the project's sample seed plus deterministic recombinations
stand in (a note says so): their lengths vary less, so less padding can be saved there.
Everything runs with one torch thread per process: on a shared 2-core machine two OpenMP threads per
process spin on each other (the same trial ran 10x slower with 2 threads than with 1 while other jobs ran)
and would measure the neighbours, not the code. The default model is the tiny Llama the tests build
(hidden size 64, built here in seconds): on 2 cores SmolLM2-135M-Instruct trains at about 5 s a step, and
the 28 trials of (b)-(d) would take most of an hour; --model SmolLM2-135M-Instruct measures it anyway.
Every trial runs in its own process, as in production, so a trial's time
includes starting Python and loading the model (about 3 s on an idle machine).

The searches of (b) and (c) run in interleaved rounds (one worker, two workers, median pruner, again) so
that a neighbour's load falls on both sides of each ratio alike. Before and after them the benchmark times
two plain Python loops side by side against one (parallel_ceiling): what 2 processes could gain on this
machine at that moment at best, the yardstick for (c) where other jobs share the cores.

The plain loop is what one writes by hand: shuffled batches padded to their longest example, as a
DataLoader with a padding collator gives; the project's trial groups batches by length (core/lora/data.py).
Both train the same layers with the same hyperparameters, and both are evaluated by the project's
evaluate_loss, so the two eval losses say whether the speed cost anything. Grouping saves the positions
the plain loop pads, so (a) also prints the ratio those positions alone would give on this data.

Goals: (a) at least 1.3x on CPU; (b) at least 30% of the wall time saved with the same best loss
within noise; (c) at least 1.7x on 2 cores; (d) at most 10% growth from trial 2 to trial 10.
The last line is one JSON object with every figure.

Run: .venv/bin/python -m benchmarks.tuning [--model NAME_OR_PATH] [--data SEED_FILE] [--records 48] [--max-length N]
     [--trials 10] [--epochs 8]
(about 3 minutes on 2 idle cores; --trials 4 --epochs 4 for a quicker look)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import optuna
import torch

from benchmarks.seed_sets import SELF_INSTRUCT_SEED, self_instruct_seed_bytes
from benchmarks.synthetic import make_candidates, seed_instructions
from frd_assets.core.lora.data import collate, length_grouped_batches, padded_share, split_records, tokenize_record
from frd_assets.core.lora.search import SearchResult, SearchSettings, run_search
from frd_assets.core.lora.trial import LoraHyperparams, TrainingConfig, evaluate_loss, run_trial
from frd_assets.core.models import load_causal_lm, load_tokenizer
from frd_assets.core.records import Record, parse_seed
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes
from frd_assets.core.threads import apply_thread_budget


def records(n: int = 48, data: Path | None = None) -> tuple[list[Record], str]:
    """The first n tasks of a seed file (the shared Self-Instruct seed by default), and what they are."""
    if data is None and self_instruct_seed_bytes() is not None:
        data = SELF_INSTRUCT_SEED
    if data is not None:
        recs = parse_seed(data.read_bytes(), data.name)[:n]
        return recs, f"the first {len(recs)} tasks of {data.name}"
    print(f"note: {SELF_INSTRUCT_SEED} not found; measuring the sample seed plus recombinations, whose lengths "
          "vary less than a real seed's")
    seeds = parse_seed(sample_seed_bytes(), SAMPLE_SEED)
    rng = random.Random(0)
    extra = make_candidates(seed_instructions(), n - len(seeds), seed=5)
    return (seeds + [Record(f"x{i}", ins, "", rng.choice(seeds).output) for i, ins in enumerate(extra)],
            f"the sample seed plus {n - len(seeds)} recombinations")


def plain_groups(n: int, batch_size: int, *, seed: int) -> list[list[int]]:
    """A shuffled DataLoader's batches: random members, in random order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


def plain_batches(examples, batch_size: int, pad_id: int, *, seed: int):
    """A shuffled DataLoader with a padding collator: random batches, each padded to its longest example."""
    for group in plain_groups(len(examples), batch_size, seed=seed):
        yield collate([examples[i] for i in group], pad_id)


def plain_loop(model, train, evals, hp: LoraHyperparams, cfg: TrainingConfig,
               pad_id: int) -> tuple[int, float, float]:
    """What a user would write by hand: peft model, AdamW, forward, backward, step; (train tokens, seconds,
    final eval loss)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    # The same layers as the project's trial: comparing all-linear with q/v only would measure the choice.
    targets = list(cfg.target_modules) if isinstance(cfg.target_modules, tuple) else cfg.target_modules
    peft_model = get_peft_model(model, LoraConfig(r=hp.rank, lora_alpha=hp.lora_alpha, target_modules=targets,
                                                  lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=hp.learning_rate)
    peft_model.train()
    tokens = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        for batch in plain_batches(train, cfg.batch_size, pad_id, seed=cfg.seed + epoch):
            loss = peft_model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - t0
    eval_loss = evaluate_loss(peft_model, evals, batch_size=cfg.batch_size, pad_id=pad_id)
    peft_model.unload()
    return tokens, seconds, eval_loss


def part_a(model_name: str, recs: list[Record], max_length: int, *, rounds: int = 3) -> dict:
    """Train tokens per second and final eval loss of the project's trial and of the plain loop, best of
    `rounds` each, alternated so that a neighbour's load falls on both."""
    tokenizer = load_tokenizer(model_name)
    # The plain loop's constant learning rate, so that the two eval losses compare the loops, not schedules.
    cfg = TrainingConfig(epochs=2, batch_size=4, max_length=max_length, evals_per_trial=1, lr_scheduler="constant",
                         warmup_ratio=0.0)
    train_recs, eval_recs = split_records(recs, eval_fraction=0.2, seed=0)
    train = [tokenize_record(tokenizer, r, max_length=cfg.max_length) for r in train_recs]
    evals = [tokenize_record(tokenizer, r, max_length=cfg.max_length) for r in eval_recs]
    model = load_causal_lm(model_name)
    hp = LoraHyperparams(rank=8, lora_alpha=16, learning_rate=2e-4)
    pad = tokenizer.pad_token_id
    plain_loop(model, train[:4], evals[:4], hp, cfg, pad)  # warm-up: first-call allocations
    best_plain, best_ours, loss_plain, loss_ours = 0.0, 0.0, float("nan"), float("nan")
    for _ in range(rounds):
        tokens, seconds, loss_plain = plain_loop(model, train, evals, hp, cfg, pad)
        best_plain = max(best_plain, tokens / seconds)
        result = run_trial(model, train, evals, hp, cfg, pad_id=pad, print_fn=lambda _: None)
        best_ours, loss_ours = max(best_ours, result.tokens_per_second), result.eval_loss
    print(f"(a) plain peft + torch loop: {best_plain:.1f} train tok/s, final eval loss {loss_plain:.4f}")
    print(f"    project trial:           {best_ours:.1f} train tok/s, final eval loss {loss_ours:.4f} "
          "(includes its clipping; evals not counted)")
    # What grouping gains on this data where compute grows with positions: the padded positions it no longer
    # computes. Attention grows with the square of a row's length, so long padded rows cost more than this.
    lengths = [len(e.input_ids) for e in train]
    pad_plain = sum(padded_share(lengths, plain_groups(len(train), cfg.batch_size, seed=cfg.seed + epoch))
                    for epoch in range(cfg.epochs)) / cfg.epochs
    pad_ours = sum(padded_share(lengths, length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed + epoch))
                   for epoch in range(cfg.epochs)) / cfg.epochs
    ceiling = (1 - pad_ours) / (1 - pad_plain)
    print(f"    ratio: {best_ours / best_plain:.2f}x ({len(train)} train records, {cfg.epochs} epochs); padding "
          f"{100 * pad_plain:.0f}% of the plain loop's positions, {100 * pad_ours:.0f}% of the project's: "
          f"{ceiling:.2f}x where compute grows with positions (attention grows faster)")
    return {"ratio": best_ours / best_plain, "tokens_per_s_plain": best_plain, "tokens_per_s_project": best_ours,
            "eval_loss_plain": loss_plain, "eval_loss_project": loss_ours, "padding_plain": pad_plain,
            "padding_project": pad_ours, "ratio_ceiling": ceiling}


def _spin(n: int = 20_000_000) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def parallel_ceiling() -> float:
    """2 x the time of one busy loop / the wall time of two at once: 2.0 on two idle cores."""
    import multiprocessing

    one, two = [], []
    # fork: the children start at once and only run the loop, never torch.
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for _ in range(2):  # alternate, best of each: the machine is noisy
            one.append(_spin())
            t0 = time.perf_counter()
            pool.map(_spin, [20_000_000, 20_000_000])
            two.append(time.perf_counter() - t0)
    return 2 * min(one) / min(two)


def own_rss_mb() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Searches:
    """Runs searches of one model and data in a scratch folder, each in its own study; sums their times."""

    def __init__(self, model_name: str, recs: list[Record], tmp: Path, training: TrainingConfig):
        self.model_name, self.recs, self.tmp, self.training = model_name, recs, tmp, training
        self.seconds: dict[str, list[float]] = {}

    def storage(self, name: str) -> str:
        return f"sqlite:///{self.tmp}/{name}.db"

    def run(self, name: str, n_trials: int, *, pruner: str, n_workers: int) -> SearchResult:
        """Continues study `name` until it holds n_trials finished trials."""
        t0 = time.perf_counter()
        result = run_search(self.recs, base_model=self.model_name, n_trials=n_trials,
                            storage_url=self.storage(name), study_name=name,
                            work_dir=self.tmp / name, out_dir=self.tmp / f"{name}-best", training=self.training,
                            settings=SearchSettings(pruner=pruner, n_workers=n_workers), print_fn=lambda _: None)
        self.seconds.setdefault(name, []).append(time.perf_counter() - t0)
        return result

    def worker_peak_rss_mb(self, name: str, up_to: int) -> float:
        """The largest peak RSS among the processes of trials 0..up_to-1, as each worker recorded it. Not
        getrusage(RUSAGE_CHILDREN): on Linux a child's ru_maxrss starts at its parent's peak."""
        trials = optuna.load_study(study_name=name, storage=self.storage(name)).trials
        return max(t.user_attrs["peak_rss_mb"] for t in trials[:up_to])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or folder (default: the tests' tiny Llama, built here)")
    parser.add_argument("--trials", type=int, default=10, help="trials of the searches of (b) and (d); >= 4")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial in (b), (c) and (d)")
    parser.add_argument("--data", type=Path, help="a seed file (default: the shared Self-Instruct seed tasks)")
    parser.add_argument("--max-length", type=int, help="tokens per example (default: the product's, twice it "
                        "for the tiny Llama)")
    parser.add_argument("--records", type=int, default=48, help="how many of its tasks, from the first")
    args = parser.parse_args()
    if args.trials < 4:
        parser.error("--trials must be at least 4: (d) compares the 2nd trial with the last, in two more rounds")
    if args.records < 10:
        parser.error("--records must be at least 10: a fifth of them is the eval split")
    recs, data_label = records(args.records, args.data)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_name = args.model
        if model_name is None:
            from frd_assets_tests.tiny_model import build_tiny_chat_model

            model_name = str(build_tiny_chat_model(tmp / "tiny-model"))
        # The tiny Llama's tokenizer has 300 tokens and takes about twice SmolLM2's tokens for the same text,
        # so it gets twice the product's default max_length (256): the same share of each record fits.
        max_length = args.max_length or (TrainingConfig().max_length * (2 if args.model is None else 1))
        apply_thread_budget(1)  # (a) here, and through FRD_TORCH_THREADS, one thread for every worker
        label = args.model or "tiny test Llama"
        print(f"model: {label}; data: {data_label}; max_length {max_length}; 1 torch thread per process; "
              f"{os.cpu_count()} cores")
        part = part_a(model_name, recs, max_length)

        training = TrainingConfig(epochs=args.epochs, batch_size=4, max_length=max_length, evals_per_trial=4)
        searches = Searches(model_name, recs, tmp, training)
        # "one": one worker, no pruning; (d) reads its trials' peak RSS after trial 2 and after the last; it is
        # also (c)'s baseline and (b)'s unpruned search. "two": two workers, no pruning, for (c) only.
        half = 2 + (args.trials - 2) // 2
        ceilings = [parallel_ceiling()]
        searches.run("one", 2, pruner="none", n_workers=1)
        parent_2 = own_rss_mb()
        searches.run("two", 4, pruner="none", n_workers=2)
        searches.run("median", 2, pruner="median", n_workers=1)
        searches.run("one", half, pruner="none", n_workers=1)
        r_two = searches.run("two", 8, pruner="none", n_workers=2)
        ceilings.append(parallel_ceiling())
        searches.run("median", half, pruner="median", n_workers=1)
        r_none = searches.run("one", args.trials, pruner="none", n_workers=1)
        parent_n = own_rss_mb()
        r_med = searches.run("median", args.trials, pruner="median", n_workers=1)
        rss_2, rss_n = searches.worker_peak_rss_mb("one", 2), searches.worker_peak_rss_mb("one", args.trials)

    totals = {name: sum(times) for name, times in searches.seconds.items()}
    t_none, t_med = totals["one"], totals["median"]
    # (c) over the same two rounds for both: "one" ran trials 1-2 and 3-half, "two" ran 1-4 and 5-8.
    per_hour_1 = 3600 * half / sum(searches.seconds["one"][:2])
    per_hour_2 = 3600 * 8 / totals["two"]
    pruned = sum(t["state"] == "PRUNED" for t in r_med.trials)
    saved = 1 - t_med / t_none
    print(f"(b) {args.trials} trials without pruning: {t_none:.1f} s, best eval loss {r_none.best_eval_loss:.4f}")
    print(f"    {args.trials} trials, median pruner: {t_med:.1f} s, best eval loss {r_med.best_eval_loss:.4f} "
          f"({pruned} pruned)")
    print(f"    wall time saved: {100 * saved:.0f}%; best-loss difference "
          f"{r_med.best_eval_loss - r_none.best_eval_loss:+.4f} (base model {r_none.base_eval_loss:.4f})")
    print(f"(c) 1 worker x 1 thread:  {per_hour_1:.0f} trials/hour ({half} trials in "
          f"{sum(searches.seconds['one'][:2]):.1f} s)")
    print(f"    2 workers x 1 thread: {per_hour_2:.0f} trials/hour (8 trials in {totals['two']:.1f} s, in the same "
          f"rounds); best eval loss {r_two.best_eval_loss:.4f}")
    ceiling = sum(ceilings) / len(ceilings)
    print(f"    ratio: {per_hour_2 / per_hour_1:.2f}x on {os.cpu_count()} cores, where two busy loops at once got "
          f"{ceiling:.2f}x of one (before and after: {', '.join(f'{c:.2f}' for c in ceilings)})")
    growth = rss_n / rss_2 - 1
    print(f"(d) peak RSS of the worker's trial processes: {rss_2:.0f} MB after trial 2, {rss_n:.0f} MB after trial "
          f"{args.trials} ({100 * growth:+.1f}%); the coordinating process holds {parent_2:.0f} MB, then "
          f"{parent_n:.0f} MB")
    print(json.dumps({
        "benchmark": "tuning",
        "model": label,
        "data": data_label,
        "records": len(recs),
        "max_length": max_length,
        "tokens_per_s_ratio": round(part["ratio"], 3),
        "tokens_per_s_plain": round(part["tokens_per_s_plain"], 1),
        "tokens_per_s_project": round(part["tokens_per_s_project"], 1),
        "eval_loss_plain": round(part["eval_loss_plain"], 4),
        "eval_loss_project": round(part["eval_loss_project"], 4),
        "padding_share_plain": round(part["padding_plain"], 3),
        "padding_share_project": round(part["padding_project"], 3),
        "tokens_per_s_ratio_ceiling": round(part["ratio_ceiling"], 3),
        "pruning_saved": round(saved, 3),
        "pruned_trials": pruned,
        "best_loss_unpruned": round(r_none.best_eval_loss, 4),
        "best_loss_pruned": round(r_med.best_eval_loss, 4),
        "workers_ratio": round(per_hour_2 / per_hour_1, 3),
        "trials_per_hour_1_worker": round(per_hour_1, 1),
        "trials_per_hour_2_workers": round(per_hour_2, 1),
        "parallel_ceiling": round(ceiling, 3),
        "rss_growth": round(growth, 4),
        "worker_peak_rss_mb_after_2": round(rss_2, 1),
        f"worker_peak_rss_mb_after_{args.trials}": round(rss_n, 1),
        "parent_rss_mb_after_2": round(parent_2, 1),
        f"parent_rss_mb_after_{args.trials}": round(parent_n, 1),
        "parent_rss_growth": round(parent_n / parent_2 - 1, 4),
        "trials": args.trials,
        "epochs": args.epochs,
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
