"""What the validation gate reports: each gate, and one typed account per filter (language, decontamination,
near-duplicates, judge scores).

Readers (the dataset card, `frd validate`, validated_dataset's metadata) use the attributes; `to_dict` is
the one place the stored form is written: `validation_report.json` and the Dagster metadata hold exactly
these keys, so a report read back from the store and one read from a run's metadata agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

from frd_assets.core.language import SeedLanguage

NO_JUDGE_NOTE = "no judge given: records were not scored and the judge_score_mean gate is absent"


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    passed: bool
    signature: str = ""


@dataclass(frozen=True)
class LanguageAccount:
    """The language records were held to, and how many of those checked were confidently in another."""

    expected: SeedLanguage
    checked: int
    off_language: int
    off_language_share: float  # off_language / checked, rounded to 4 places; 0.0 when none was checked
    signature: str

    def to_dict(self) -> dict[str, Any]:
        # The seed's language metadata keys (language, language_name, ...) sit beside the counts, flat.
        return {**self.expected.metadata(), "checked": self.checked, "off_language": self.off_language,
                "off_language_share": self.off_language_share, "signature": self.signature}


@dataclass(frozen=True)
class ContaminatedRecord:
    """A dropped record and the evaluation task it shares a word n-gram with."""

    row: int  # its position in the rows validated
    id: Any  # the row's "id" as given (None when it has none): generated rows carry one, a local file may not
    instruction: str
    task_id: str
    task_instruction: str
    ngram: str  # the first shared n-gram, as evidence


@dataclass(frozen=True)
class DecontaminationAccount:
    ngram: int
    eval_tasks: int  # how many evaluation tasks records were checked against
    contaminated: tuple[ContaminatedRecord, ...]
    signature: str
    note: str | None = None  # why nothing was checked (no evaluation tasks); None when records were checked

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ngram": self.ngram, "eval_tasks": self.eval_tasks,
                               "contaminated": [asdict(c) for c in self.contaminated], "signature": self.signature}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class NearDuplicateExample:
    """A dropped record and what it repeats: a seed task, or an earlier kept record (other_row)."""

    row: int
    instruction: str
    input: str
    jaccard: float  # rounded to 4 places
    duplicate_of: Literal["seed", "row"]
    other_instruction: str
    other_input: str
    other_row: int | None = None  # the earlier record's position; None for a seed task

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"row": self.row, "instruction": self.instruction, "input": self.input,
                               "jaccard": self.jaccard, "duplicate_of": self.duplicate_of}
        if self.other_row is not None:
            out["other_row"] = self.other_row
        return {**out, "other_instruction": self.other_instruction, "other_input": self.other_input}


@dataclass(frozen=True)
class NearDuplicateAccount:
    threshold: float
    shingle_size: int
    num_perm: int
    of_seed: int  # records dropped as copies of a seed task
    within_set: int  # records dropped as repeats of an earlier kept record
    examples: tuple[NearDuplicateExample, ...]  # the first few, not all
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "shingle_size": self.shingle_size, "num_perm": self.num_perm,
                "of_seed": self.of_seed, "within_set": self.within_set,
                "examples": [e.to_dict() for e in self.examples], "signature": self.signature}


@dataclass(frozen=True)
class JudgeAccount:
    """How the judge scored the records it saw, and how many it cost."""

    model: str
    rubric_version: str
    records_judged: int
    records_scored: int
    unparsable: int  # replies with no score: those records are kept, not scored
    distribution: Mapping[str, int]  # records per score "1".."5" and "unparsable"
    mean: float | None  # over the scored records; None when none was scored
    min_judge_score: int
    dropped_low_score: int
    unparsable_examples: tuple[str, ...]
    temperature: int = 0  # records are always judged greedily

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rubric_version": self.rubric_version, "temperature": self.temperature,
                "records_judged": self.records_judged, "records_scored": self.records_scored,
                "unparsable": self.unparsable, "distribution": dict(self.distribution), "mean": self.mean,
                "min_judge_score": self.min_judge_score, "dropped_low_score": self.dropped_low_score,
                "unparsable_examples": list(self.unparsable_examples)}


@dataclass(frozen=True)
class ValidationReport:
    verdict: str
    records: int
    valid_records: int  # records kept: well-formed, and no filter dropped them
    invalid_records: dict[str, int]  # records not kept, by their first reason
    gates: list[Gate]
    near_duplicates: NearDuplicateAccount
    decontamination: DecontaminationAccount
    valid_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    judge: JudgeAccount | None = None  # None: no judge was given, and so no judge gate
    judge_note: str = NO_JUDGE_NOTE
    # The language records were held to (see drop_off_language); None: no language could be told (no seed
    # and none configured), so none was checked.
    language: LanguageAccount | None = None

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    @property
    def failed_gate_names(self) -> list[str]:
        return [g.name for g in self.failed_gates]

    def to_dict(self) -> dict[str, Any]:
        """The status record: everything but the rows themselves. An absent judge is null and an absent
        language an empty object: the stored form that readers of validation_report.json expect."""
        return {
            "verdict": self.verdict,
            "records": self.records,
            "valid_records": self.valid_records,
            "invalid_records": dict(self.invalid_records),
            "gates": [asdict(g) for g in self.gates],
            "failed_gates": self.failed_gate_names,
            "near_duplicates": self.near_duplicates.to_dict(),
            "decontamination": self.decontamination.to_dict(),
            "judge": self.judge.to_dict() if self.judge is not None else None,
            "judge_note": self.judge_note,
            "language": self.language.to_dict() if self.language is not None else {},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
