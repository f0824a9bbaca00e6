"""The validation gate: per-record checks, corpus metrics against thresholds, and a verdict."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from frd_assets.core.config_checks import SEED, Integer, Number, check_fields
from frd_assets.core.metrics.bleu import corpus_bleu, self_bleu
from frd_assets.core.metrics.json_checks import REQUIRED_FIELDS, record_problem
from frd_assets.core.metrics.rouge_l import SIGNATURE as ROUGE_SIGNATURE
from frd_assets.core.metrics.rouge_l import TokenEncoder, f_matrix
from frd_assets.core.records import loads_strict_json

READY = "READY_FOR_FINE_TUNING"
DELETED = "DELETED"


@dataclass(frozen=True)
class ValidationConfig:
    """Every threshold of the gate; a gate passes when its value is on the right side of its threshold."""

    min_valid_records: int = 4  # fewer usable records than this cannot train and hold out an eval split
    min_valid_share: float = 0.5  # share of records passing per-record checks
    max_seed_rouge_l: float = 0.7  # mean over records of max ROUGE-L F to any seed instruction: copying
    max_seed_bleu: float = 50.0  # corpus BLEU of instructions against their nearest seed instruction
    max_self_bleu: float = 60.0  # self-BLEU of instructions on a sample: the set repeats itself
    max_pairwise_rouge_l: float = 0.5  # mean pairwise ROUGE-L F of instructions on the same sample
    self_bleu_sample: int = 100
    max_instruction_words: int = 150
    max_output_chars: int = 8000
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "validation config", _VALIDATION_RULES)


_VALIDATION_RULES = {
    "min_valid_records": Integer(2),
    "min_valid_share": Number(0, 1),
    "max_seed_rouge_l": Number(0, 1),
    "max_seed_bleu": Number(0, 100),
    "max_self_bleu": Number(0, 100),
    "max_pairwise_rouge_l": Number(0, 1),
    # Self-BLEU needs two sentences; the pairwise ROUGE-L gate holds a sample-by-sample matrix in memory.
    "self_bleu_sample": Integer(2, 10_000),
    "max_instruction_words": Integer(1),
    "max_output_chars": Integer(1),
    "seed": SEED,
}


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    passed: bool
    signature: str = ""


@dataclass
class ValidationReport:
    verdict: str
    records: int
    valid_records: int
    invalid_records: dict[str, int]
    gates: list[Gate]
    valid_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        """The status record: everything but the rows themselves."""
        return {
            "verdict": self.verdict,
            "records": self.records,
            "valid_records": self.valid_records,
            "invalid_records": dict(self.invalid_records),
            "gates": [asdict(g) for g in self.gates],
            "failed_gates": [g.name for g in self.failed_gates],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def read_records(data: bytes) -> tuple[list[Any], Counter]:
    """Reads JSONL for validation without ever raising: a line that is not UTF-8 or not strict JSON (NaN and
    Infinity are not JSON) is counted by reason; lines that parse (objects or not) are returned for the
    per-record checks. Blank lines are skipped."""
    rows: list[Any] = []
    unreadable: Counter = Counter()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            unreadable["not_utf8"] += 1
            continue
        try:
            rows.append(loads_strict_json(line))
        except ValueError:  # bad JSON, NaN or Infinity, a number too long to convert, absurd nesting
            unreadable["invalid_json"] += 1
    return rows, unreadable


def record_checks_signature(config: ValidationConfig) -> str:
    return (
        f"record_checks|fields:{','.join(REQUIRED_FIELDS)}|max_instruction_words:{config.max_instruction_words}"
        f"|max_output_chars:{config.max_output_chars}|json:asked-for-or-starts-with-brace|dedup:instruction+input"
    )


def _gate(name: str, value: float, threshold: float, *, at_most: bool, signature: str) -> Gate:
    passed = value <= threshold if at_most else value >= threshold
    return Gate(name, float(value), float(threshold), bool(passed), signature)


def check_records(rows: Sequence[Any], config: ValidationConfig) -> tuple[list[dict[str, Any]], Counter]:
    """Keeps the records that pass every per-record check; counts the rest by their first problem."""
    invalid: Counter = Counter()
    valid: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        problem = record_problem(
            row, max_instruction_words=config.max_instruction_words, max_output_chars=config.max_output_chars
        )
        if problem is None:
            key = (row["instruction"].strip().lower(), row["input"].strip().lower())
            problem = "duplicate" if key in seen else None
            seen.add(key)
        if problem:
            invalid[problem] += 1
        else:
            valid.append(row)
    return valid, invalid


def novelty_gates(
    instructions: Sequence[str], seed_instructions: Sequence[str], config: ValidationConfig
) -> list[Gate]:
    """Too close to the seed means copying: mean of each record's max ROUGE-L F to any seed instruction,
    and corpus BLEU of the instructions against their nearest (by ROUGE-L) seed instruction."""
    enc = TokenEncoder()
    f = f_matrix([enc.encode(s) for s in instructions], [enc.encode(s) for s in seed_instructions])
    nearest = f.argmax(axis=1)
    bleu = corpus_bleu(instructions, [seed_instructions[i] for i in nearest])
    return [
        _gate("seed_rouge_l_mean", f.max(axis=1).mean(), config.max_seed_rouge_l, at_most=True,
              signature=ROUGE_SIGNATURE),
        _gate("seed_bleu", bleu.value, config.max_seed_bleu, at_most=True, signature=bleu.signature),
    ]


def diversity_gates(instructions: Sequence[str], config: ValidationConfig) -> list[Gate]:
    """A set that repeats itself: self-BLEU and mean pairwise ROUGE-L F on one seeded sample."""
    sample = list(instructions)
    if len(sample) > config.self_bleu_sample:
        sample = random.Random(config.seed).sample(sample, config.self_bleu_sample)
    sb = self_bleu(sample, sample_size=len(sample), seed=config.seed)
    enc = TokenEncoder()
    encoded = [enc.encode(s) for s in sample]
    pair = f_matrix(encoded, encoded)
    mean_pair = pair[~np.eye(len(sample), dtype=bool)].mean()
    return [
        _gate("self_bleu", sb.value, config.max_self_bleu, at_most=True, signature=sb.signature),
        _gate("pairwise_rouge_l_mean", mean_pair, config.max_pairwise_rouge_l, at_most=True,
              signature=f"{ROUGE_SIGNATURE}|sample:{len(sample)}|seed:{config.seed}"),
    ]


def validate(
    rows: Sequence[Any],
    seed_instructions: Sequence[str],
    config: ValidationConfig,
    *,
    unreadable: Counter | None = None,
) -> ValidationReport:
    """The gate. rows are parsed records of any shape; unreadable counts lines that did not even parse.
    Seed gates need seed instructions and diversity gates two valid records; absent, they are not reported."""
    valid, invalid = check_records(rows, config)
    invalid.update(unreadable or {})
    n = len(rows) + sum((unreadable or {}).values())
    checks = record_checks_signature(config)
    gates = [
        _gate("valid_records", len(valid), config.min_valid_records, at_most=False, signature=checks),
        _gate("valid_share", len(valid) / n if n else 0.0, config.min_valid_share, at_most=False, signature=checks),
    ]
    instructions = [r["instruction"] for r in valid]
    if instructions and seed_instructions:
        gates += novelty_gates(instructions, seed_instructions, config)
    if len(instructions) >= 2:
        gates += diversity_gates(instructions, config)
    verdict = READY if all(g.passed for g in gates) else DELETED
    return ValidationReport(verdict, n, len(valid), dict(invalid), gates, valid)
