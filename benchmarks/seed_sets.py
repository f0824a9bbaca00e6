"""Seed sets the benchmarks measure on.

The 175 human-written Self-Instruct seed tasks are the realistic set: their lengths vary the way a user's
seed does (59 to 6,387 characters). They are shared beside the checkout (../shared/data, Apache-2.0) and
deliberately not copied into the project, which ships only its own small sample seed; a benchmark that
finds no shared copy says so and measures the sample seed instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SELF_INSTRUCT_SEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct_seed_tasks.jsonl"


def sample_seed_bytes() -> bytes:
    """The project's own sample seed: what `frd demo` uploads."""
    return (resources.files("frd_assets") / "data" / "sample_seed.jsonl").read_bytes()


def self_instruct_seed_bytes() -> bytes | None:
    """The shared Self-Instruct seed tasks, or None where this checkout has no shared copy beside it."""
    return SELF_INSTRUCT_SEED.read_bytes() if SELF_INSTRUCT_SEED.exists() else None
