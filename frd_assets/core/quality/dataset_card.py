"""The dataset card: a README.md in the Hugging Face form that says where the data came from and what was cut.

The front matter is the Hub's metadata block (license, task_categories, language, size_categories,
pretty_name, and a `configs` entry naming the JSONL file, so `load_dataset` on the folder finds it), built
with huggingface_hub's DatasetCardData. Its YAML dump quotes and escapes a name holding quotes, colons or
control characters, but writes line breaks other than LF (NEL, U+2028) raw, which a reader folds into a
space: so the one free-text field, pretty_name, is put on one line first, as every name in the body is.
The body is Markdown: the source, the counts kept and dropped by reason, every gate with its value,
threshold and signature, and each filter's account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from huggingface_hub import DatasetCard, DatasetCardData

from frd_assets.core.datasets import data_file_name
from frd_assets.core.names import VALIDATED_DATASET

if TYPE_CHECKING:
    from frd_assets.core.validation_report import ValidationReport

# The Hub's size buckets: (upper bound, label); a count at or above every bound is the last label.
_SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]
CONTAMINATED_SHOWN = 50  # the card lists this many contaminated records; the report lists them all


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZE_CATEGORIES if n < bound), "n>1B")


def _cell(value: object) -> str:
    """A Markdown table cell: one line, pipes escaped (signatures are full of them)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _inline(value: object) -> str:
    """Prose: one line, so a name with a newline cannot start a heading."""
    return " ".join(str(value).split())


def dataset_card(
    report: ValidationReport,
    *,
    dataset_id: str,
    seed_name: str,
    teacher_name: str,
    license: str = "unknown",
    languages: Sequence[str] | None = None,
    pretty_name: str | None = None,
) -> str:
    """README.md text for the validated dataset: YAML front matter, then the provenance and the gate's
    account. license is a Hub license id ("apache-2.0", "cc-by-4.0"; "unknown" when the seed's is not known).
    languages: ISO 639-1 codes for the `language:` field; by default the one the gate held the records to,
    and none when it could not tell (the Hub reads a missing field as unknown, a wrong one as a fact)."""
    pretty = pretty_name or f"FRD.ai instructions {dataset_id}"
    if languages is None:
        languages = [report.language.expected.code] if report.language else []
    data = DatasetCardData(
        license=license,
        language=list(languages) or None,  # None: the field is left out
        task_categories=["text-generation"],
        tags=["synthetic", "self-instruct", "instruction-tuning"],
        size_categories=[size_category(report.valid_records)],
        pretty_name=_inline(pretty),
        configs=[{"config_name": "default",
                  "data_files": [{"split": "train", "path": data_file_name(VALIDATED_DATASET)}]}],
    )
    body = [
        f"# {_inline(pretty)}",
        "",
        "Instruction-following records (instruction, input, output) generated with Self-Instruct from a seed "
        "set by a teacher model, then screened by FRD.ai's validation gate. "
        f"Verdict: **{report.verdict}**.",
        "",
        "## Source",
        "",
        "| | |",
        "|---|---|",
        f"| dataset id | {_cell(dataset_id)} |",
        f"| seed | {_cell(seed_name)} |",
        f"| teacher | {_cell(teacher_name)} |",
        f"| judge | {_cell(report.judge.model if report.judge else 'none')} |",
        "",
        *_language(report),
        *_counts(report),
        *_gates(report),
        *_near_duplicates(report),
        *_decontamination(report),
        *_judge(report),
        "## Fields",
        "",
        f"`{data_file_name(VALIDATED_DATASET)}` holds one JSON object per line: `id`, `instruction`, `input` "
        "(empty when the task needs none), `output`, and `provenance` (where the record came from).",
        "",
    ]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(body)))


def _language(report: ValidationReport) -> list[str]:
    lang = report.language
    if lang is None:
        return ["## Language", "", "Not determined: no seed instructions and no `language` in the run config.", ""]
    return ["## Language", "",
            f"{_inline(lang.expected.note)} (detector: {_inline(lang.expected.detector)}). "
            f"{lang.off_language} of {lang.checked} records ({lang.off_language_share:.1%}) had an "
            "instruction confidently in another language and were dropped as `off_language`.", "",
            f"Signature: `{lang.signature}`", ""]


def _counts(report: ValidationReport) -> list[str]:
    dropped = sorted(report.invalid_records.items(), key=lambda kv: (-kv[1], kv[0]))
    lines = ["## Records", "",
             f"{report.valid_records} of {report.records} records kept; {report.records - report.valid_records} "
             "dropped, each for its first problem:", "",
             "| reason | records |", "|---|---|"]
    lines += [f"| {_cell(reason)} | {count} |" for reason, count in dropped] or ["| (none) | 0 |"]
    return lines + [""]


def _gates(report: ValidationReport) -> list[str]:
    lines = ["## Gates", "", "Each gate passes when its value is on the right side of its threshold.", "",
             "| gate | value | threshold | passed | signature |", "|---|---|---|---|---|"]
    lines += [f"| {_cell(g.name)} | {g.value:.4g} | {g.threshold:g} | {'yes' if g.passed else 'no'} | "
              f"{_cell(g.signature)} |" for g in report.gates]
    return lines + [""]


def _near_duplicates(report: ValidationReport) -> list[str]:
    nd = report.near_duplicates
    return ["## Near-duplicates", "",
            f"MinHash over word {nd.shingle_size}-gram shingles of instruction and input, {nd.num_perm} "
            f"permutations, LSH candidates confirmed by exact Jaccard >= {nd.threshold:g}: "
            f"{nd.of_seed} copies of seed tasks and {nd.within_set} repeats within the set dropped.",
            "", f"Signature: `{nd.signature}`", ""]


def _decontamination(report: ValidationReport) -> list[str]:
    dc = report.decontamination
    lines = ["## Decontamination", ""]
    if dc.note is not None:  # nothing was checked
        return lines + [_inline(dc.note) + ".", ""]
    found = dc.contaminated
    lines += [f"Records sharing a word {dc.ngram}-gram with any of the {dc.eval_tasks} evaluation tasks "
              f"were dropped: {len(found)}.", ""]
    if found:
        lines += ["| record | evaluation task | shared n-gram |", "|---|---|---|"]
        lines += [f"| {_cell(c.instruction)} | {_cell(c.task_id)}: {_cell(c.task_instruction)} | "
                  f"{_cell(c.ngram)} |" for c in found[:CONTAMINATED_SHOWN]]
        if len(found) > CONTAMINATED_SHOWN:
            lines.append(f"\n{len(found) - CONTAMINATED_SHOWN} more in the validation report.")
        lines.append("")
    return lines + [f"Signature: `{dc.signature}`", ""]


def _judge(report: ValidationReport) -> list[str]:
    lines = ["## Judge scores", ""]
    if report.judge is None:
        return lines + [_inline(report.judge_note) + ".", ""]
    j = report.judge
    mean = "none scored" if j.mean is None else f"{j.mean:.2f}"
    lines += [f"Judge `{_inline(j.model)}`, rubric {j.rubric_version}, temperature {j.temperature}: "
              f"{j.records_scored} of {j.records_judged} records scored, mean {mean}; "
              f"{j.dropped_low_score} scored below {j.min_judge_score} dropped; {j.unparsable} replies "
              "unparsable (kept, not scored).", "",
              "| score | records |", "|---|---|"]
    lines += [f"| {score} | {count} |" for score, count in j.distribution.items()]
    return lines + [""]
