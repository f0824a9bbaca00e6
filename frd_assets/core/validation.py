"""The validation gate: per-record checks, filters, corpus metrics against thresholds, and a verdict.

Two phases. `screen_records` decides which records are kept, dropping each for its first problem in the
order the checks cost: well-formed and not an exact repeat (`check_records`), an instruction in the
dataset's language (`off_language`: the seed's majority language or the config's, and only a confident
call drops; see core/language.py), not sharing a word n-gram with an evaluation task (`contaminated`),
not a near-duplicate of a seed task or of an earlier kept record (`near_duplicate`), and, when a judge is
given, not scored below `min_judge_score` (`low_judge_score`): the judge is the only check that costs model
calls, so it sees the fewest records. Then `validate` measures the kept records against every gate's
threshold and gives the verdict, a ValidationReport (core/validation_report.py: each filter's account typed).

Exact repeats within the set keep their own reason, `duplicate` (same instruction and input after case
and surrounding space), because that check needs no words and so also covers text with no letter or digit
at all, which MinHash cannot see. Exact and near copies of a seed task are both `near_duplicate`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from frd_assets.core import language as languages
from frd_assets.core.config_checks import SEED, Integer, Number, check_fields
from frd_assets.core.metrics.bleu import bleu_tokenizer, corpus_bleu, self_bleu
from frd_assets.core.metrics.json_checks import REQUIRED_FIELDS, record_problem
from frd_assets.core.metrics.rouge_l import SIGNATURE as ROUGE_SIGNATURE
from frd_assets.core.metrics.rouge_l import TokenEncoder, f_matrix
from frd_assets.core.metrics.text_units import TOKENIZER_SIGNATURE
from frd_assets.core.quality import decontamination, near_duplicates
from frd_assets.core.quality.decontamination import EvalNgramIndex, EvalSource
from frd_assets.core.quality.record_judge import RECORD_RUBRIC_VERSION, RecordScores, score_records
from frd_assets.core.records import Record, loads_strict_json
from frd_assets.core.validation_report import (
    NO_JUDGE_NOTE,
    ContaminatedRecord,
    DecontaminationAccount,
    Gate,
    JudgeAccount,
    LanguageAccount,
    NearDuplicateAccount,
    NearDuplicateExample,
    ValidationReport,
)

if TYPE_CHECKING:
    from frd_assets.core.evaluation.judge import Judge

READY = "READY_FOR_FINE_TUNING"
DELETED = "DELETED"


def unready_reason(dataset_id: str, status: Mapping[str, Any]) -> str | None:
    """None when a validated version's status ({"verdict", "failed_gates"}: its stored meta, or the
    materialization's metadata values) allows an adapter; else why not, naming the dataset and the gates.
    The one reading of a verdict, for the verdict sensor and lora_adapter alike."""
    if status.get("verdict") == READY:
        return None
    return f"dataset {dataset_id} is {status.get('verdict')} (failed gates {status.get('failed_gates')})"


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
    # Exact Jaccard of two records' shingle sets (instruction + input) at or above which the later record is
    # a near-duplicate; 0.7 is Self-Instruct's ROUGE-L novelty threshold, the same notion of "too close".
    near_duplicate_threshold: float = 0.7
    # Words per shingle. Instructions are short (the 175 Self-Instruct seed tasks: median 11 words, 20 with
    # input), and one changed word breaks n shingles, so larger n misses one-word variants: at 0.7 a
    # one-word substitution is caught in 169 of 172 seed tasks with single words, 130 of 175 with word
    # pairs, 97 of 171 with triples, while no two distinct seed tasks reach 0.7 with any of them.
    shingle_size: int = 1
    num_perm: int = 128  # MinHash permutations: LSH recall at the threshold grows with them, and so does cost
    decontamination_ngram: int = 8  # a record sharing a word n-gram this long with an evaluation task is dropped
    min_judge_score: int = 3  # records the judge scores below this (1-5 rubric) are dropped
    min_judge_score_mean: float = 3.5  # mean judge score over the scored records
    seed: int = 0
    # ISO 639-1 code the records must be written in ("ru"); "": the seed's language, detected from its
    # instructions. A record whose instruction is confidently in another language is `off_language`.
    language: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "validation config", _VALIDATION_RULES)


_VALIDATION_RULES = {
    "min_valid_records": Integer(2, 10_000_000),
    "min_valid_share": Number(0, 1),
    "max_seed_rouge_l": Number(0, 1),
    "max_seed_bleu": Number(0, 100),
    "max_self_bleu": Number(0, 100),
    "max_pairwise_rouge_l": Number(0, 1),
    # Self-BLEU needs two sentences; the pairwise ROUGE-L gate holds a sample-by-sample matrix in memory.
    "self_bleu_sample": Integer(2, 10_000),
    "max_instruction_words": Integer(1, 100_000),
    "max_output_chars": Integer(1, 10_000_000),
    # 0 would make every pair of records duplicates.
    "near_duplicate_threshold": Number(0, 1, low_open=True),
    # Longer shingles than 8 words are longer than most instructions: one shingle per record, exact matching.
    "shingle_size": Integer(1, 8),
    # Fewer than 16 permutations leave LSH too few bands to find pairs near the threshold; more than 1024
    # cost time for no recall worth having, since every candidate is confirmed exactly anyway.
    "num_perm": Integer(16, 1024),
    # Shorter n-grams are everyday phrases ("one of the"), and would mark most records contaminated.
    "decontamination_ngram": Integer(4, 64),
    "min_judge_score": Integer(1, 5),
    "min_judge_score_mean": Number(1, 5),
    "seed": SEED,
    "language": languages.LANGUAGE,
}


# Reasons a well-formed record is dropped, besides json_checks' per-record problems and `duplicate`.
CONTAMINATED, NEAR_DUPLICATE, LOW_JUDGE_SCORE = "contaminated", "near_duplicate", "low_judge_score"
OFF_LANGUAGE = "off_language"
NO_EVAL_TASKS_NOTE = "no evaluation tasks given: records were not checked for contamination"
EXAMPLES = 5  # near-duplicate pairs shown in the report: enough to see what was dropped, not all of them


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
        f"|words:{TOKENIZER_SIGNATURE}"
        f"|max_output_chars:{config.max_output_chars}|json:asked-for-or-starts-with-brace|dedup:instruction+input"
    )


def _gate(name: str, value: float, threshold: float, *, at_most: bool, signature: str) -> Gate:
    passed = value <= threshold if at_most else value >= threshold
    return Gate(name, float(value), float(threshold), bool(passed), signature)


def _exact_key(instruction: str, input_text: str) -> tuple[str, str]:
    return instruction.strip().lower(), input_text.strip().lower()


def check_records(rows: Sequence[Any], config: ValidationConfig) -> tuple[list[tuple[int, dict[str, Any]]], Counter]:
    """(position, row) of the rows passing every per-record check, the exact-duplicate check included; the
    rest counted by their first problem. Positions are kept so the report can point at a dropped row."""
    invalid: Counter = Counter()
    valid: list[tuple[int, dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        problem = record_problem(
            row, max_instruction_words=config.max_instruction_words, max_output_chars=config.max_output_chars
        )
        if problem is None:
            key = _exact_key(row["instruction"], row["input"])
            problem = "duplicate" if key in seen else None
            seen.add(key)
        if problem:
            invalid[problem] += 1
        else:
            valid.append((i, row))
    return valid, invalid


# A seed task as validate() takes it: seed_dataset's rows, canonical Records, or bare instructions.
SeedTask = Union[str, Record, Mapping[str, Any]]


def _seed_text(task: SeedTask) -> tuple[str, str]:
    """(instruction, input) of a seed task."""
    if isinstance(task, str):
        return task, ""
    if isinstance(task, Record):
        return task.instruction, task.input
    if isinstance(task, Mapping) and isinstance(task.get("instruction"), str):
        return task["instruction"], str(task.get("input") or "")
    raise TypeError(
        f"validate: a seed task must be an instruction string, a Record or a row with an 'instruction' string, "
        f"got {type(task).__name__}; pass seed_dataset's rows as they are"
    )


@dataclass
class Screening:
    """What screen_records decided: the kept (position, row) pairs, drops by reason, and each filter's account."""

    kept: list[tuple[int, dict[str, Any]]]
    invalid: Counter
    near_duplicates: NearDuplicateAccount
    decontamination: DecontaminationAccount
    scores: RecordScores | None  # None: no judge
    judge: JudgeAccount | None
    signature: str  # how the kept set was chosen: every check and filter with its settings
    language: LanguageAccount | None  # None: no language could be told, so none was checked


def _count(invalid: Counter, reason: str, n: int) -> None:
    if n:  # no zero entries: invalid_records lists only reasons that dropped something
        invalid[reason] += n


def drop_off_language(
    kept: list[tuple[int, dict[str, Any]]], language: languages.SeedLanguage
) -> tuple[list[tuple[int, dict[str, Any]]], LanguageAccount]:
    """Drops records whose instruction is confidently in another language than the dataset's. Only a
    confident call drops (the detector gives the dataset's language under OFF_LANGUAGE_BELOW; see
    core/language.py): short instructions are often ambiguous between related languages, and a record in
    the right language must never be lost to a doubtful guess."""
    clean = [(i, row) for i, row in kept if not languages.is_off_language(row["instruction"], language.code)]
    dropped = len(kept) - len(clean)
    return clean, LanguageAccount(
        language, checked=len(kept), off_language=dropped,
        off_language_share=round(dropped / len(kept), 4) if kept else 0.0,
        signature=f"off_language|detector:{languages.detector_name()}|language:{language.code}"
                  f"|below:{languages.OFF_LANGUAGE_BELOW}")


def dataset_language(
    seed: Sequence[tuple[str, str]], config: ValidationConfig, stored: languages.SeedLanguage | None = None
) -> languages.SeedLanguage | None:
    """The language records are held to: the config's, else the one stored for the seed, else the seed's
    majority; None when none says (no seed instruction with a letter)."""
    instructions = [ins for ins, _ in seed]
    if not (config.language or stored) and not any(any(ch.isalpha() for ch in ins) for ins in instructions):
        return None
    return languages.seed_language(instructions, config.language, stored=stored)


def drop_contaminated(
    kept: list[tuple[int, dict[str, Any]]], eval_tasks: Sequence[EvalSource], config: ValidationConfig
) -> tuple[list[tuple[int, dict[str, Any]]], DecontaminationAccount]:
    """Drops records sharing a word n-gram with an evaluation task; the account lists each with its task."""
    n = config.decontamination_ngram
    signature = decontamination.signature(n, len(eval_tasks))
    if not eval_tasks:
        return kept, DecontaminationAccount(n, 0, (), signature, note=NO_EVAL_TASKS_NOTE)
    index = EvalNgramIndex(eval_tasks, n)
    clean, found = [], []
    for i, row in kept:
        hit = index.match((row["instruction"], row["input"], row["output"]))
        if hit is None:
            clean.append((i, row))
            continue
        found.append(ContaminatedRecord(i, row.get("id"), row["instruction"], hit.task_id, hit.task_instruction,
                                        hit.ngram))
    return clean, DecontaminationAccount(n, len(eval_tasks), tuple(found), signature)


def drop_near_duplicates(
    kept: list[tuple[int, dict[str, Any]]], seed: Sequence[tuple[str, str]], config: ValidationConfig
) -> tuple[list[tuple[int, dict[str, Any]]], NearDuplicateAccount]:
    """Drops exact and near copies of seed tasks, and all but the first record of each near-duplicate cluster."""
    seed_keys = {_exact_key(ins, inp): j for j, (ins, inp) in enumerate(seed)}
    matches: list[near_duplicates.NearDuplicate | None] = [None] * len(kept)
    rest = []  # positions in kept that are not an exact seed copy: MinHash decides those
    for k, (_, row) in enumerate(kept):
        j = seed_keys.get(_exact_key(row["instruction"], row["input"]))
        if j is None:
            rest.append(k)
        else:
            matches[k] = near_duplicates.NearDuplicate(k, True, j, 1.0)
    found = near_duplicates.find_near_duplicates(
        [f"{kept[k][1]['instruction']}\n{kept[k][1]['input']}" for k in rest],
        [f"{ins}\n{inp}" for ins, inp in seed],
        threshold=config.near_duplicate_threshold, shingle_size=config.shingle_size, num_perm=config.num_perm,
    )
    for k, match in zip(rest, found, strict=True):
        if match is not None:  # map positions among `rest` back to positions in kept
            other = match.other if match.of_reference else rest[match.other]
            matches[k] = near_duplicates.NearDuplicate(k, match.of_reference, other, match.jaccard)
    dropped = [m for m in matches if m is not None]
    account = NearDuplicateAccount(
        threshold=config.near_duplicate_threshold, shingle_size=config.shingle_size, num_perm=config.num_perm,
        of_seed=sum(m.of_reference for m in dropped), within_set=sum(not m.of_reference for m in dropped),
        examples=tuple(_near_duplicate_example(m, kept, seed) for m in dropped[:EXAMPLES]),
        signature=near_duplicates.lsh_signature(threshold=config.near_duplicate_threshold,
                                                shingle_size=config.shingle_size, num_perm=config.num_perm),
    )
    return [pair for pair, m in zip(kept, matches, strict=True) if m is None], account


def _near_duplicate_example(
    m: near_duplicates.NearDuplicate, kept: list[tuple[int, dict[str, Any]]], seed: Sequence[tuple[str, str]]
) -> NearDuplicateExample:
    i, row = kept[m.index]
    jaccard = round(m.jaccard, 4)
    if m.of_reference:
        other_instruction, other_input = seed[m.other]
        return NearDuplicateExample(i, row["instruction"], row["input"], jaccard, "seed", other_instruction,
                                    other_input)
    other_i, other = kept[m.other]
    return NearDuplicateExample(i, row["instruction"], row["input"], jaccard, "row", other["instruction"],
                                other["input"], other_row=other_i)


def drop_low_judge_scores(
    kept: list[tuple[int, dict[str, Any]]], judge: Judge, config: ValidationConfig
) -> tuple[list[tuple[int, dict[str, Any]]], RecordScores, JudgeAccount]:
    """Scores every kept record; drops those scored below min_judge_score and keeps the unparsable ones."""
    scores = score_records([row for _, row in kept], judge)
    survivors = [pair for pair, s in zip(kept, scores.scores, strict=True)
                 if s is None or s >= config.min_judge_score]
    account = JudgeAccount(
        model=scores.judge, rubric_version=scores.rubric_version,
        records_judged=len(scores.scores), records_scored=len(scores.scored), unparsable=scores.unparsable,
        distribution=scores.distribution(), mean=scores.mean,
        min_judge_score=config.min_judge_score, dropped_low_score=len(kept) - len(survivors),
        unparsable_examples=tuple(scores.unparsable_examples()),
    )
    return survivors, scores, account


def judge_signature(scores: RecordScores) -> str:
    return (f"judge_score|judge:{scores.judge}|rubric:{scores.rubric_version}|temperature:0"
            f"|scored:{len(scores.scored)}|unparsable:{scores.unparsable}")


def screen_records(
    rows: Sequence[Any],
    seed: Sequence[SeedTask],
    config: ValidationConfig,
    *,
    eval_tasks: Sequence[EvalSource] = (),
    judge: Judge | None = None,
    seed_language_found: languages.SeedLanguage | None = None,
) -> Screening:
    """Phase one of the gate: which records are kept, and why each of the others is not."""
    seed_texts = [_seed_text(t) for t in seed]
    kept, invalid = check_records(rows, config)
    language = dataset_language(seed_texts, config, seed_language_found)
    lang_account = None
    if language is not None:
        before = len(kept)
        kept, lang_account = drop_off_language(kept, language)
        _count(invalid, OFF_LANGUAGE, before - len(kept))
    before = len(kept)
    kept, contamination = drop_contaminated(kept, eval_tasks, config)
    _count(invalid, CONTAMINATED, before - len(kept))
    before = len(kept)
    kept, near = drop_near_duplicates(kept, seed_texts, config)
    _count(invalid, NEAR_DUPLICATE, before - len(kept))
    scores = judged = None
    if judge is not None:
        before = len(kept)
        kept, scores, judged = drop_low_judge_scores(kept, judge, config)
        _count(invalid, LOW_JUDGE_SCORE, before - len(kept))
    parts = [record_checks_signature(config), *([lang_account.signature] if lang_account else []),
             contamination.signature, near.signature]
    if scores is not None:
        parts.append(f"{judge_signature(scores)}|min_judge_score:{config.min_judge_score}")
    return Screening(kept, invalid, near, contamination, scores, judged, "; ".join(parts), lang_account)


def novelty_gates(
    instructions: Sequence[str],
    seed_instructions: Sequence[str],
    config: ValidationConfig,
    *,
    bleu_tokenize: str | None = None,
) -> list[Gate]:
    """Too close to the seed means copying: mean of each record's max ROUGE-L F to any seed instruction,
    and corpus BLEU of the instructions against their nearest (by ROUGE-L) seed instruction.
    bleu_tokenize: sacrebleu's tokenizer for the dataset's language; None picks it from these texts."""
    enc = TokenEncoder()
    f = f_matrix([enc.encode(s) for s in instructions], [enc.encode(s) for s in seed_instructions])
    nearest = f.argmax(axis=1)
    bleu = corpus_bleu(instructions, [seed_instructions[i] for i in nearest], tokenize=bleu_tokenize)
    return [
        _gate("seed_rouge_l_mean", f.max(axis=1).mean(), config.max_seed_rouge_l, at_most=True,
              signature=ROUGE_SIGNATURE),
        _gate("seed_bleu", bleu.value, config.max_seed_bleu, at_most=True, signature=bleu.signature),
    ]


def diversity_gates(
    instructions: Sequence[str], config: ValidationConfig, *, bleu_tokenize: str | None = None
) -> list[Gate]:
    """A set that repeats itself: self-BLEU and mean pairwise ROUGE-L F on one seeded sample.
    bleu_tokenize: as in novelty_gates."""
    sample = list(instructions)
    if len(sample) > config.self_bleu_sample:
        sample = random.Random(config.seed).sample(sample, config.self_bleu_sample)
    sb = self_bleu(sample, sample_size=len(sample), seed=config.seed, tokenize=bleu_tokenize)
    enc = TokenEncoder()
    encoded = [enc.encode(s) for s in sample]
    pair = f_matrix(encoded, encoded)
    mean_pair = pair[~np.eye(len(sample), dtype=bool)].mean()
    return [
        _gate("self_bleu", sb.value, config.max_self_bleu, at_most=True, signature=sb.signature),
        _gate("pairwise_rouge_l_mean", mean_pair, config.max_pairwise_rouge_l, at_most=True,
              signature=f"{ROUGE_SIGNATURE}|sample:{len(sample)}|seed:{config.seed}"),
    ]


def judge_gate(scores: RecordScores, config: ValidationConfig) -> Gate:
    """Mean score over the scored records, the low ones included: the mean of what survived the
    min_judge_score cut could never fall below it. No record scored at all fails, at 0: a judge was asked
    to vouch for the set and did not."""
    mean = scores.mean if scores.mean is not None else 0.0
    return _gate("judge_score_mean", mean, config.min_judge_score_mean, at_most=False,
                 signature=judge_signature(scores))


def validate(
    rows: Sequence[Any],
    seed: Sequence[SeedTask],
    config: ValidationConfig,
    *,
    eval_tasks: Sequence[EvalSource] = (),
    judge: Judge | None = None,
    unreadable: Counter | None = None,
    seed_language_found: languages.SeedLanguage | None = None,
) -> ValidationReport:
    """The gate. rows are parsed records of any shape; unreadable counts lines that did not even parse.

    seed: the seed tasks (seed_dataset's rows, Records or bare instructions), for the novelty gates and the
    near-duplicate check. eval_tasks: the tasks the adapter is evaluated on (held-out seed Records or
    EvalTasks); records sharing a word n-gram with one are dropped. judge: make_judge's Judge, to score
    each record; None leaves the judge gate out, and the report says so. Seed gates need seed tasks and
    diversity gates two kept records; absent, they are not reported. Records are held to config.language,
    else seed_language_found (what seed_dataset detected), else the seed's majority language; that language
    also picks BLEU's tokenizer (`metrics.bleu.bleu_tokenizer`), and with none the script of the seed
    instructions (of the kept ones without a seed) does."""
    screened = screen_records(rows, seed, config, eval_tasks=eval_tasks, judge=judge,
                              seed_language_found=seed_language_found)
    invalid = screened.invalid
    invalid.update(unreadable or {})
    n = len(rows) + sum((unreadable or {}).values())
    kept = [row for _, row in screened.kept]
    gates = [
        _gate("valid_records", len(kept), config.min_valid_records, at_most=False, signature=screened.signature),
        _gate("valid_share", len(kept) / n if n else 0.0, config.min_valid_share, at_most=False,
              signature=screened.signature),
    ]
    instructions = [r["instruction"] for r in kept]
    seed_instructions = [_seed_text(t)[0] for t in seed]
    # One tokenizer for both BLEU gates, from the seed: the dataset's language is the seed's, and a few
    # off-script records must not switch the tokenizer under the other gate.
    language = screened.language.expected.code if screened.language else None
    tokenize = bleu_tokenizer(seed_instructions or instructions, language=language)
    if instructions and seed_instructions:
        gates += novelty_gates(instructions, seed_instructions, config, bleu_tokenize=tokenize)
    if len(instructions) >= 2:
        gates += diversity_gates(instructions, config, bleu_tokenize=tokenize)
    note = NO_JUDGE_NOTE
    if screened.scores is not None:
        gates.append(judge_gate(screened.scores, config))
        note = f"scored by {screened.scores.judge} on rubric {RECORD_RUBRIC_VERSION}"
    verdict = READY if all(g.passed for g in gates) else DELETED
    return ValidationReport(verdict, n, len(kept), dict(invalid), gates, screened.near_duplicates,
                            screened.decontamination, valid_rows=kept, judge=screened.judge, judge_note=note,
                            language=screened.language)
