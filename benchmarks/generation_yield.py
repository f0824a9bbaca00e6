"""Instance yield: records per kept instruction, with instances asked as text versus schema-constrained JSON.

For each seed (the demo's sample seed, what `frd demo` uploads, and the shared 175-task Self-Instruct
seed), the tasks are split as seed_dataset splits them (held-out tasks are never shown to the teacher),
then one generate() run with instance_format "text" (the loop as it was before JSON instances) keeps
--num instructions and writes their instances; then write_instances() asks for instances of the same
kept instructions again with instance_format "json" (llguidance-constrained JSON, the text prompt as
the fallback for replies that give no instance). Same teacher (the project's default local one unless
--model), settings and sampling seed; reusing the kept instructions leaves the instance step as the only
difference, and spares a second instruction phase on a 2-core machine.

Per seed and format it prints the yield, where the instances came from (constrained JSON, the text
parser) and what was lost (unparsable, cut off by max_new_tokens_instance), and the instance step's
teacher tokens and seconds (JSON pays for its text re-asks there). "json_only_yield" is the share read
from JSON replies before any re-ask. Ends with one line holding a JSON object of the figures.
Goal: yield >= 0.8 with JSON on both seeds.

Run: .venv/bin/python -m benchmarks.generation_yield [--num 24] [--model NAME_OR_PATH] [--seed-file PATH ...]
--num limits the instructions kept per seed (and so per run); the default, 24, is what `frd demo` asks
for. Measured: 6.4 minutes on 2 idle CPU cores; about three times that on cores another torch process uses.
A killed run continues from its checkpoints under .cache/benchmarks/ (its seconds then cover only the
calls it made); a finished run removes them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.seed_sets import SELF_INSTRUCT_SEED, self_instruct_seed_bytes
from frd_assets.core.generation.checkpoint import StoreCheckpoint
from frd_assets.core.generation.self_instruct import (
    GenerationConfig,
    InstanceCounts,
    generate,
    write_instances,
)
from frd_assets.core.generation.teachers import TransformersTeacher
from frd_assets.core.held_out import HeldOutConfig, split_held_out
from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import sample_seed_bytes
from frd_assets.core.store import LocalStore

# Progress of an unfinished run (the loop's own checkpoints): a killed run continues where it stopped.
PROGRESS = Path(__file__).resolve().parents[1] / ".cache" / "benchmarks" / "generation_yield"


def seed_files(extra: list[str]) -> dict[str, bytes]:
    files = {"demo_seed": sample_seed_bytes()}
    shared = self_instruct_seed_bytes()
    if shared is not None:
        files["shared_175"] = shared
    else:
        print(f"note: {SELF_INSTRUCT_SEED} not found; the shared 175-task seed is not measured")
    for path in extra:
        files[Path(path).stem] = Path(path).read_bytes()
    return files


class InstanceCallMeter:
    """The teacher, with the tokens and seconds of its instance calls added up apart from the instruction
    calls, so one generate() run gives the text format's instance cost without asking twice."""

    def __init__(self, teacher: TransformersTeacher):
        self.teacher, self.name = teacher, teacher.name
        self.tokens, self.seconds = 0, 0.0

    def complete(self, prompts, params):
        t0 = time.perf_counter()
        out = self.teacher.complete(prompts, params)
        # Instruction prompts prefill a list number ("7."); text instance prompts "Input:" or "Output:".
        if all(p.prefill in ("Input:", "Output:") for p in prompts):
            self.tokens += sum(c.completion_tokens for c in out)
            self.seconds += time.perf_counter() - t0
        return out


def figures(counts: InstanceCounts, tokens: int, seconds: float) -> dict:
    from_json = (counts.constrained + counts.json) / counts.kept_instructions if counts.kept_instructions else 0.0
    return {**counts.to_dict(), "json_only_yield": round(from_json, 3), "instance_tokens": tokens,
            "instance_seconds": round(seconds, 1)}


def progress_key(name: str, num: int, fmt: str) -> str:
    return f"{name}-{num}-{fmt}.json"


def measure(name: str, data: bytes, teacher: TransformersTeacher, config: GenerationConfig, progress: LocalStore,
            ) -> dict:
    split = split_held_out(parse_seed(data, name), HeldOutConfig())

    def log(message: str) -> None:  # the loop's progress, so a slow machine shows where it is
        print(f"  [{name}] {message}", flush=True)

    log(split.note)
    classification = {r.instruction for r in split.train if r.provenance.get("is_classification")}
    t0 = time.perf_counter()
    meter = InstanceCallMeter(teacher)
    text = generate(split.train, meter, replace(config, instance_format="text"), held_out=split.held_out, log=log,
                    checkpoint=StoreCheckpoint(progress, ".", progress_key(name, config.num_instructions, "text")))
    kept = text.instructions
    json_progress = StoreCheckpoint(progress, ".", progress_key(name, config.num_instructions, "json"))
    saved = json_progress.load() or {}
    outcomes = saved.get("outcomes", {}) if saved.get("kept") == kept else {}
    todo = [ins for ins in kept if ins not in outcomes]
    t_json = time.perf_counter()
    tokens = write_instances(todo, teacher, replace(config, instance_format="json"), classification, outcomes,
                             log=log,
                             after_batch=lambda _tokens: json_progress.save({"kept": kept, "outcomes": outcomes}))
    return {
        "kept_instructions": len(kept),
        "text": figures(text.instances, meter.tokens, meter.seconds),
        "json": figures(InstanceCounts.tally([outcomes.get(ins) for ins in kept]), tokens,
                        time.perf_counter() - t_json),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the prepared SmolLM2)")
    parser.add_argument("--num", type=int, default=24, help="instructions to keep per seed (default 24, as frd demo)")
    parser.add_argument("--seed-file", action="append", default=[], help="another seed file to measure")
    args = parser.parse_args()
    t0 = time.perf_counter()
    teacher = TransformersTeacher(args.model)
    config = GenerationConfig(num_instructions=args.num, seed=0)
    constraint = "llguidance" if teacher.supports_json_schema else teacher.json_schema_fallback_reason
    print(f"model: {teacher.name}; limit: {args.num} kept instructions per seed and run; temperature "
          f"{config.temperature}, top_p {config.top_p}, up to {config.max_new_tokens_instance} new tokens per "
          f"instance; JSON constraint: {constraint}", flush=True)
    result = {"benchmark": "generation_yield", "model": teacher.name, "num_instructions": args.num,
              "max_new_tokens_instance": config.max_new_tokens_instance}
    progress = LocalStore(PROGRESS)
    files = seed_files(args.seed_file)
    for name, data in files.items():
        row = measure(name, data, teacher, config, progress)
        result[name] = row
        for label in ("text", "json"):
            r = row[label]
            print(f"{name} {label:>4}: yield {r['yield']:.2f} ({r['records']}/{row['kept_instructions']}: "
                  f"{r['constrained']} constrained JSON, {r['json']} free JSON, {r['text']} text parser; lost "
                  f"{r['unparsable']} unparsable, {r['truncated']} truncated), instance step "
                  f"{r['instance_tokens']} tokens in {r['instance_seconds']:.0f} s", flush=True)
    for name in files:  # finished: the next run measures afresh
        for fmt in ("text", "json"):
            StoreCheckpoint(progress, ".", progress_key(name, args.num, fmt)).clear()
    result["goal_met"] = all(result[name]["json"]["yield"] >= 0.8 for name in files)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
