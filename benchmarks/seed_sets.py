"""Seed sets the benchmarks measure on.

The 175 human-written Self-Instruct seed tasks are the realistic set: their lengths vary the way a user's
seed does (59 to 6,387 characters). They are shared beside the checkout (../shared/data, Apache-2.0) and
deliberately not copied into the project, which ships only its own small sample seed; a benchmark that
finds no shared copy says so and measures the sample seed instead.
"""

from __future__ import annotations

from pathlib import Path

SELF_INSTRUCT_SEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct_seed_tasks.jsonl"


def self_instruct_seed_bytes() -> bytes | None:
    """The shared Self-Instruct seed tasks, or None where this checkout has no shared copy beside it."""
    return SELF_INSTRUCT_SEED.read_bytes() if SELF_INSTRUCT_SEED.exists() else None
