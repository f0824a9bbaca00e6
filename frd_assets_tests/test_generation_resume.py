"""Resume: kill a generating process with SIGKILL, run it again, and get one dataset with no repeats."""

import json
import os
import signal
import subprocess
import sys
import time

from frd_assets.core.generation.checkpoint import StoreCheckpoint
from frd_assets.core.generation.self_instruct import GenerationConfig, generate
from frd_assets.core.generation.teachers import TransformersTeacher
from frd_assets.core.records import loads_jsonl, parse_seed
from frd_assets.core.store import LocalStore


def frd_generate(seed, out, tiny_model_dir, *extra):
    return [sys.executable, "-m", "frd_assets.cli", "generate", str(seed), "--out", str(out), "--num", "14",
            "--prompts-per-round", "2", "--max-rounds", "40", "--checkpoint-every", "2",
            "--teacher-model", str(tiny_model_dir), *extra]


def test_killed_generation_resumes_without_duplicates(tmp_path, tiny_model_dir, sample_seed_bytes):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(sample_seed_bytes)
    out = tmp_path / "generated.jsonl"
    ckpt = tmp_path / "generated.jsonl.checkpoint.json"

    proc = subprocess.Popen(frd_generate(seed, out, tiny_model_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None, "generation ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(ckpt.read_text())
    assert 0 < len(before["kept"]) < 14 and not out.exists()

    done = subprocess.run(frd_generate(seed, out, tiny_model_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from checkpoint: {len(before['kept'])} instructions kept" in done.stdout
    rows = loads_jsonl(out.read_bytes(), str(out))
    instructions = [r["instruction"] for r in rows]
    assert len(instructions) == len(set(instructions))
    assert len({r["id"] for r in rows}) == len(rows)
    # What was kept before the kill is kept after it, in order: the run continued, it did not restart.
    kept_ids = {r["id"]: r["instruction"] for r in rows}
    for n, ins in enumerate(before["kept"]):
        assert kept_ids.get(f"gen-{n}", ins) == ins
    assert not ckpt.exists()  # a finished run leaves no checkpoint behind


def test_resume_continues_in_process_and_ignores_a_foreign_checkpoint(tmp_path, tiny_model_dir, sample_seed_bytes):
    seeds = parse_seed(sample_seed_bytes, "s")
    teacher = TransformersTeacher(str(tiny_model_dir))
    store = LocalStore(tmp_path)
    ckpt = StoreCheckpoint(store, "datasets", "u/generation_checkpoint.json")
    small = GenerationConfig(num_instructions=4, prompts_per_round=2, max_rounds=10, checkpoint_every=1,
                             max_new_tokens_instructions=96, max_new_tokens_instance=48, temperature=1.0)
    first = generate(seeds, teacher, small, checkpoint=ckpt, log=lambda _: None)
    rounds_first = first.rounds
    logs = []
    larger = GenerationConfig(**{**small.__dict__, "num_instructions": 8})
    second = generate(seeds, teacher, larger, checkpoint=ckpt, log=logs.append)
    assert second.resumed_from == 4 and logs[0].startswith("resuming from checkpoint: 4 instructions kept")
    assert second.rounds >= rounds_first
    # The first run's records come back unchanged: their instances were checkpointed, not regenerated.
    pairs = {r.instruction: (r.input, r.output) for r in first.records}
    assert pairs.items() <= {r.instruction: (r.input, r.output) for r in second.records}.items()

    other = GenerationConfig(**{**small.__dict__, "temperature": 0.5})
    logs.clear()
    third = generate(seeds, teacher, other, checkpoint=ckpt, log=logs.append)
    assert logs[0].startswith("checkpoint was made with another seed, teacher or settings")
    assert third.resumed_from == 0
