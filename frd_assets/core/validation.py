"""The validation gate: per-record checks, corpus metrics against thresholds, and a verdict."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from frd_assets.core.metrics.bleu import corpus_bleu, self_bleu
from frd_assets.core.metrics.json_checks import record_problem
from frd_assets.core.metrics.rouge_l import SIGNATURE as ROUGE_SIGNATURE
from frd_assets.core.metrics.rouge_l import TokenEncoder, f_matrix

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
        for name in ("min_valid_share", "max_seed_rouge_l", "max_pairwise_rouge_l"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"validation config: {name} must be in [0, 1], got {v}")
        for name in ("max_seed_bleu", "max_self_bleu"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ValueError(f"validation config: {name} must be in [0, 100], got {v}")
        if self.min_valid_records < 2:
            raise ValueError(f"validation config: min_valid_records must be >= 2, got {self.min_valid_records}")


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


def validate(rows: Sequence[Any], seed_instructions: Sequence[str], config: ValidationConfig) -> ValidationReport:
    invalid: Counter = Counter()
    valid: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        problem = record_problem(
            row, max_instruction_words=config.max_instruction_words, max_output_chars=config.max_output_chars
        )
        if problem is None:
            key = (row["instruction"].strip().lower(), row["input"].strip().lower())
            if key in seen:
                problem = "duplicate"
            seen.add(key)
        if problem:
            invalid[problem] += 1
        else:
            valid.append(row)

    n = len(rows)
    gates = [
        Gate("valid_records", len(valid), config.min_valid_records, len(valid) >= config.min_valid_records),
        Gate(
            "valid_share",
            len(valid) / n if n else 0.0,
            config.min_valid_share,
            n > 0 and len(valid) / n >= config.min_valid_share,
        ),
    ]
    instructions = [r["instruction"] for r in valid]
    if instructions and seed_instructions:
        enc = TokenEncoder()
        f = f_matrix([enc.encode(s) for s in instructions], [enc.encode(s) for s in seed_instructions])
        nearest = f.argmax(axis=1)
        seed_rouge = float(f.max(axis=1).mean())
        gates.append(
            Gate(
                "seed_rouge_l_mean",
                seed_rouge,
                config.max_seed_rouge_l,
                seed_rouge <= config.max_seed_rouge_l,
                ROUGE_SIGNATURE,
            )
        )
        bleu = corpus_bleu(instructions, [seed_instructions[i] for i in nearest])
        gates.append(
            Gate("seed_bleu", bleu.value, config.max_seed_bleu, bleu.value <= config.max_seed_bleu, bleu.signature)
        )
    if len(instructions) >= 2:
        sb = self_bleu(instructions, sample_size=config.self_bleu_sample, seed=config.seed)
        gates.append(Gate("self_bleu", sb.value, config.max_self_bleu, sb.value <= config.max_self_bleu, sb.signature))
        sample = instructions
        if len(sample) > config.self_bleu_sample:
            rng = np.random.default_rng(config.seed)
            sample = [sample[i] for i in rng.choice(len(sample), config.self_bleu_sample, replace=False)]
        enc = TokenEncoder()
        encoded = [enc.encode(s) for s in sample]
        pair = f_matrix(encoded, encoded)
        mean_pair = float(pair[~np.eye(len(sample), dtype=bool)].mean())
        gates.append(
            Gate(
                "pairwise_rouge_l_mean",
                mean_pair,
                config.max_pairwise_rouge_l,
                mean_pair <= config.max_pairwise_rouge_l,
                ROUGE_SIGNATURE + f"|sample:{len(sample)}",
            )
        )
    verdict = READY if all(g.passed for g in gates) else DELETED
    return ValidationReport(verdict, n, len(valid), dict(invalid), gates, valid)
