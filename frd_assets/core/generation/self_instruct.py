"""The Self-Instruct bootstrapping loop: propose instructions, filter them, then write instances.

Follows Wang et al. 2022 and Stanford Alpaca's generator: each prompt shows k seed tasks and m generated
ones, the teacher continues a numbered list, heuristic filters and a ROUGE-L novelty filter (> 0.7 against
anything in the pool, seeds included) drop bad or repeated instructions, then the teacher writes one
input/output instance per kept instruction (output first for classification tasks).

Instances are asked for as JSON objects constrained to a schema when the teacher can enforce one
(instance_format "json"): a free-text reply from a small teacher is often unreadable, a constrained one
always parses unless the token budget cuts it off. Teachers that cannot, and instance_format "text",
get the 'Input: ... Output: ...' prompt and its parser. The result counts where each instance came from
and the yield, records per kept instruction.

Progress is checkpointed after every round that kept checkpoint_every or more new instructions and after
every instance batch; a run given the same checkpoint continues from it instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Sequence

from frd_assets.core.config_checks import MAX_NEW_TOKENS, SEED, Integer, Number, OneOf, check_fields, check_order
from frd_assets.core.generation.checkpoint import Checkpoint
from frd_assets.core.generation.filters import FilterConfig, filters_signature, instruction_reject_reason
from frd_assets.core.generation.prompts import (
    DEFAULT_LANGUAGE,
    instance_prompt,
    instruction_prompt,
    parse_instance_reply,
    parse_instruction_list,
)
from frd_assets.core.generation.teachers import Completion, SamplingParams, Teacher
from frd_assets.core.language import LANGUAGE, SeedLanguage, is_off_language, seed_language
from frd_assets.core.metrics.rouge_l import NoveltyIndex
from frd_assets.core.records import Record

# The checkpoint's layout (an instance is [input, output, source]); a checkpoint of another layout is not
# continued: the run starts over.
CHECKPOINT_VERSION = 2
INSTANCE_FORMATS = ("json", "text")


@dataclass(frozen=True)
class GenerationConfig:
    num_instructions: int = 20  # how many new tasks to keep
    seed_tasks_per_prompt: int = 6  # k in the paper
    generated_per_prompt: int = 2  # m in the paper
    prompts_per_round: int = 8  # one teacher batch
    max_rounds: int = 10  # stop proposing after this many rounds even if short of the target
    novelty_threshold: float = 0.7  # drop an instruction whose ROUGE-L F to the pool exceeds this
    embedding_dedup_threshold: float | None = None  # also drop above this MiniLM cosine; None: off
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens_instructions: int = 160
    max_new_tokens_instance: int = 160
    min_words: int = 3
    max_words: int = 150
    checkpoint_every: int = 5  # save progress once this many new instructions were kept
    seed: int = 0
    # "json": instances as schema-constrained JSON where the teacher can enforce a schema, else as text;
    # "text": always the 'Input: ... Output: ...' prompt and parser.
    instance_format: str = "json"
    # ISO 639-1 code of the language the teacher is asked to write in ("ru"); "": the seed's language, as
    # detected from its instructions (core/language.py). Instructions confidently in another are dropped.
    language: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "generation config", _GENERATION_RULES)
        check_order("generation config", "min_words", self.min_words, "max_words", self.max_words)

    def filters(self) -> FilterConfig:
        return FilterConfig(self.min_words, self.max_words)

    def filters_signature(self) -> str:
        return filters_signature(self.filters(), novelty_threshold=self.novelty_threshold)


_GENERATION_RULES = {
    # Far above what one run should make (a seed is at most about 400,000 tasks); the bounds catch typos.
    "num_instructions": Integer(1, 1_000_000),
    "seed_tasks_per_prompt": Integer(1, 100),
    "generated_per_prompt": Integer(0, 100),
    # Each round's prompts are built and held at once: 1e9 would exhaust memory before the first reply.
    "prompts_per_round": Integer(1, 10_000),
    "max_rounds": Integer(1, 100_000),
    "novelty_threshold": Number(0, 1, low_open=True),
    "embedding_dedup_threshold": Number(0, 1, low_open=True, optional=True),
    "temperature": Number(0, 2),  # above 2 a teacher writes noise, and OpenAI's API refuses it
    "top_p": Number(0, 1, low_open=True),
    "max_new_tokens_instructions": MAX_NEW_TOKENS,
    "max_new_tokens_instance": MAX_NEW_TOKENS,
    "min_words": Integer(1, 10_000),
    "max_words": Integer(1, 10_000),
    "checkpoint_every": Integer(1, 1_000_000),
    "seed": SEED,
    "instance_format": OneOf(INSTANCE_FORMATS),
    "language": LANGUAGE,
}


@dataclass(frozen=True)
class InstanceCounts:
    """What the instance step made of the kept instructions: where each instance was read from, and
    what was lost. The yield, records per kept instruction, is the figure instance_format is judged by."""

    kept_instructions: int = 0
    constrained: int = 0  # JSON the teacher wrote under the schema constraint
    json: int = 0  # JSON the teacher wrote unconstrained (an endpoint that ignored response_format)
    text: int = 0  # read by the 'Input: ... Output: ...' text parser
    unparsable: int = 0  # replies neither parser could read
    truncated: int = 0  # replies cut off by max_new_tokens_instance

    @classmethod
    def tally(cls, outcomes: Sequence[list[str] | str | None]) -> "InstanceCounts":
        """From one outcome per kept instruction (see _instance_outcome; None: not asked yet)."""
        by_kind = Counter(o[2] if isinstance(o, list) else o for o in outcomes if o is not None)
        return cls(kept_instructions=len(outcomes), constrained=by_kind["constrained"], json=by_kind["json"],
                   text=by_kind["text"], unparsable=by_kind["unparsable_instance"],
                   truncated=by_kind["truncated_output"])

    @property
    def records(self) -> int:
        return self.constrained + self.json + self.text

    @property
    def instance_yield(self) -> float:
        """Records per kept instruction (1.0: every instruction became a record)."""
        return self.records / self.kept_instructions if self.kept_instructions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"yield": round(self.instance_yield, 3), "records": self.records, **asdict(self)}


@dataclass
class GenerationResult:
    records: list[Record]
    rejected: Counter = field(default_factory=Counter)
    proposed: int = 0
    rounds: int = 0
    teacher_tokens: int = 0
    seconds: float = 0.0
    resumed_from: int = 0  # instructions already kept in the checkpoint this run started from
    run_tokens: int = 0  # teacher tokens generated by this run (teacher_tokens counts earlier runs too)
    instructions: list[str] = field(default_factory=list)  # every kept instruction, with a record or not
    instances: InstanceCounts = field(default_factory=InstanceCounts)
    # Why instances were asked in the text format although instance_format is "json"; None: they were not.
    json_fallback_reason: str | None = None
    language: SeedLanguage | None = None  # the language the teacher was asked to write in

    @property
    def tokens_per_second(self) -> float:
        return self.run_tokens / self.seconds if self.seconds else 0.0

    @property
    def kept_instructions(self) -> int:
        """Instructions that passed every filter; each asked for one instance."""
        return len(self.instructions)

    @property
    def instance_yield(self) -> float:
        """Records per kept instruction: what the instance step turned into data (1.0: nothing lost)."""
        return self.instances.instance_yield

    def instance_report(self) -> dict[str, Any]:
        """The instance step's figures for a report or asset metadata."""
        return {**self.instances.to_dict(), "json_fallback_reason": self.json_fallback_reason}


def _fingerprint(seed_instructions: Sequence[str], teacher_name: str, config: GenerationConfig,
                 held_out: Sequence[str] = ()) -> str:
    """What a checkpoint must match to be continued: the seed, the teacher and every setting that shapes
    what was already written (not the target, nor the instance format)."""
    # instance_format is left out too: it changes only how the instances still to come are asked for,
    # and each stored instance records how it was read. So a checkpoint continues across a change of
    # format.
    settings = {k: v for k, v in asdict(config).items() if k not in ("num_instructions", "max_rounds",
                                                                     "checkpoint_every", "instance_format")}
    # An unset language is the seed's, which the seed (in the fingerprint) already decides, so it adds
    # nothing. A set language changes every prompt: it counts.
    if not settings["language"]:
        del settings["language"]
    parts = [sorted(seed_instructions), teacher_name, settings]
    if held_out:  # a checkpoint made with other tasks held out was made with other examples
        parts.append(sorted(held_out))
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _State:
    fingerprint: str
    kept: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    proposed: int = 0
    rounds: int = 0
    teacher_tokens: int = 0
    # instruction -> [input, output, source] (source: see _instance_outcome) or a reject reason
    instances: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, **asdict(self), "rejected": dict(self.rejected)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "_State":
        return cls(
            fingerprint=data["fingerprint"], kept=list(data["kept"]), rejected=Counter(data["rejected"]),
            proposed=int(data["proposed"]), rounds=int(data["rounds"]), teacher_tokens=int(data["teacher_tokens"]),
            instances=dict(data["instances"]),
        )


def _instance_outcome(comp: Completion, *, output_first: bool, asked_json: bool) -> list[str] | str:
    """[input, output, source] for a readable reply, else the reject reason. source is "constrained"
    (JSON written under the schema), "json" (JSON the teacher wrote unconstrained) or "text" (the text
    parser's reading)."""
    if comp.finish_reason == "length":
        return "truncated_output"
    parsed, how = parse_instance_reply(comp.text, output_first=output_first, asked_json=asked_json)
    if parsed is None:
        return "unparsable_instance"
    source = "constrained" if how == "json" and comp.constrained else how
    return [parsed[0], parsed[1], source]


def _asks_json(config: GenerationConfig, teacher: Teacher) -> bool:
    """Whether the next instance batch is asked for as JSON: only where the teacher can enforce the
    schema. Elsewhere the text prompt, whose parser was written for free replies, is the fallback."""
    return config.instance_format == "json" and bool(getattr(teacher, "supports_json_schema", False))


def _json_fallback_reason(teacher: Teacher) -> str:
    return getattr(teacher, "json_schema_fallback_reason", None) or "it does not support JSON schemas"


def generate(
    seeds: Sequence[Record],
    teacher: Teacher,
    config: GenerationConfig,
    *,
    checkpoint: Checkpoint | None = None,
    embedder=None,
    held_out: Sequence[Record] = (),
    seed_language_found: SeedLanguage | None = None,
    log: Callable[[str], None] = print,
) -> GenerationResult:
    """Runs the loop until num_instructions are kept or max_rounds pass; returns kept records and counts.

    Two phases, both checkpointed: instruction proposals (propose_instructions), then one instance per kept
    instruction (write_instances). held_out: tasks set aside for evaluation. The teacher never sees them
    (they are no seed examples and get no instance prompt), but they are in the novelty pool, so a
    near-copy of one is rejected. The teacher is asked to write in config.language, else in
    seed_language_found (the language seed_dataset detected and stored), else in the seeds' majority
    language, detected here."""
    seed_instructions = list(dict.fromkeys(r.instruction for r in seeds))
    if not seed_instructions:
        raise ValueError("generation needs at least one seed instruction")
    held_instructions = [i for i in dict.fromkeys(r.instruction for r in held_out) if i not in seed_instructions]
    classification = {r.instruction for r in seeds if r.provenance.get("is_classification")}
    language = seed_language(seed_instructions, config.language, stored=seed_language_found)
    fingerprint = _fingerprint(seed_instructions, teacher.name, config, held_instructions)

    state = _State(fingerprint)
    saved = checkpoint.load() if checkpoint else None
    if saved and saved.get("version") == CHECKPOINT_VERSION and saved.get("fingerprint") == fingerprint:
        state = _State.from_dict(saved)
        log(f"resuming from checkpoint: {len(state.kept)} instructions kept, {state.rounds} rounds, "
            f"{len(state.instances)} instances done")
    elif saved:
        log("checkpoint was made with another seed, teacher or settings; starting over")
    resumed_from = len(state.kept)
    log(f"language: {language.note}")  # after the checkpoint's word: whether this run starts over comes first

    def save() -> None:
        if checkpoint:
            checkpoint.save(state.to_dict())

    t0 = time.perf_counter()
    tokens_at_start = state.teacher_tokens
    propose_instructions(state, teacher, config, seed_instructions, held_instructions, embedder=embedder,
                         save=save, log=log, language=language)

    todo = [ins for ins in state.kept if ins not in state.instances]
    if todo and config.instance_format == "json" and not _asks_json(config, teacher):
        log(f"instances: teacher {teacher.name} cannot enforce a JSON schema ({_json_fallback_reason(teacher)}); "
            "asking in the text format")

    def instances_saved(tokens: int) -> None:
        state.teacher_tokens += tokens
        save()

    write_instances(todo, teacher, config, classification, state.instances, after_batch=instances_saved, log=log,
                    language=language.name)

    result = _result(state, teacher, config, resumed_from=resumed_from)
    result.language = language
    result.seconds = time.perf_counter() - t0
    result.run_tokens = state.teacher_tokens - tokens_at_start
    counts = result.instances
    log(f"done: {len(result.records)} records from {len(state.kept)} instructions "
        f"(yield {counts.instance_yield:.2f}; {counts.constrained + counts.json} from JSON, "
        f"{counts.text} from the text parser), rejected {dict(result.rejected)}, "
        f"{result.tokens_per_second:.1f} tok/s")
    return result


def propose_instructions(
    state: _State,
    teacher: Teacher,
    config: GenerationConfig,
    seed_instructions: list[str],
    held_instructions: list[str],
    *,
    embedder,
    save: Callable[[], None],
    log: Callable[[str], None],
    language: SeedLanguage,
) -> None:
    """The proposal phase: rounds of few-shot prompts asking for instructions in `language`, each candidate
    kept only when it passes the word filters, is not confidently in another language, and is no duplicate,
    not ROUGE-L-close (nor embedding-close) to the seed, held-out or kept instructions. Adds to state.kept;
    checkpoints every checkpoint_every kept and at the end."""
    filter_cfg = config.filters()
    pool = NoveltyIndex(seed_instructions + held_instructions + state.kept)
    seen = {s.lower() for s in seed_instructions + held_instructions + state.kept}
    semantic = None
    if config.embedding_dedup_threshold is not None:
        from frd_assets.core.generation.embeddings import EmbeddingIndex, SentenceEmbedder

        semantic = EmbeddingIndex(embedder or SentenceEmbedder(), seed_instructions + held_instructions + state.kept)
    t0 = time.perf_counter()
    tokens_at_start = state.teacher_tokens
    last_saved = len(state.kept)

    while len(state.kept) < config.num_instructions and state.rounds < config.max_rounds:
        # One RNG per round: a resumed run samples the same examples an uninterrupted run would have.
        rng = random.Random(config.seed * 1_000_003 + state.rounds)
        prompts = []
        for _ in range(config.prompts_per_round):
            examples = rng.sample(seed_instructions, min(config.seed_tasks_per_prompt, len(seed_instructions)))
            examples += rng.sample(state.kept, min(config.generated_per_prompt, len(state.kept)))
            rng.shuffle(examples)
            prompts.append(instruction_prompt(examples, language=language.name))
        params = SamplingParams(config.max_new_tokens_instructions, config.temperature, config.top_p,
                                config.seed + state.rounds * 7919)
        completions = teacher.complete(prompts, params)
        state.rounds += 1
        for comp in completions:
            state.teacher_tokens += comp.completion_tokens
            candidates = parse_instruction_list(comp.text)
            for i, cand in enumerate(candidates):
                if len(state.kept) >= config.num_instructions:
                    break
                state.proposed += 1
                # Only the last item can have been cut off by the token limit.
                truncated = comp.finish_reason == "length" and i == len(candidates) - 1
                reason = instruction_reject_reason(cand, truncated=truncated, config=filter_cfg)
                # Before the novelty checks: an instruction in another language would be dropped by the
                # gate anyway, so it should not take a place in the pool (nor an instance prompt).
                if reason is None and is_off_language(cand, language.code):
                    reason = "off_language"
                if reason is None and cand.lower() in seen:
                    reason = "duplicate"
                if reason is None and pool.max_f(cand)[0] > config.novelty_threshold:
                    reason = "not_novel"
                if reason is None and semantic and semantic.max_cosine(cand) > config.embedding_dedup_threshold:
                    reason = "similar_embedding"
                if reason:
                    state.rejected[reason] += 1
                    continue
                state.kept.append(cand)
                seen.add(cand.lower())
                pool.add(cand)
                if semantic:
                    semantic.add(cand)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        log(f"round {state.rounds}: kept {len(state.kept)}/{config.num_instructions} instructions, "
            f"rejected {dict(state.rejected)}, {(state.teacher_tokens - tokens_at_start) / elapsed:.1f} tok/s")
        if len(state.kept) - last_saved >= config.checkpoint_every:
            save()
            last_saved = len(state.kept)
    save()


def _result(state: _State, teacher: Teacher, config: GenerationConfig, *, resumed_from: int) -> GenerationResult:
    """Records from the kept instructions whose instance parsed; the others counted by why they did not."""
    result = GenerationResult(records=[], rejected=Counter(state.rejected), proposed=state.proposed,
                              rounds=state.rounds, teacher_tokens=state.teacher_tokens, resumed_from=resumed_from,
                              instructions=list(state.kept))
    for n, ins in enumerate(state.kept):
        outcome = state.instances.get(ins)
        if isinstance(outcome, list):
            result.records.append(Record(
                id=f"gen-{n}", instruction=ins, input=outcome[0], output=outcome[1],
                provenance={"source": "generated", "teacher": teacher.name},
            ))
        elif outcome:
            result.rejected[outcome] += 1
    result.instances = InstanceCounts.tally([state.instances.get(ins) for ins in state.kept])
    if config.instance_format == "json" and not _asks_json(config, teacher):
        result.json_fallback_reason = _json_fallback_reason(teacher)
    return result


def write_instances(
    instructions: Sequence[str],
    teacher: Teacher,
    config: GenerationConfig,
    classification: Collection[str] = (),
    outcomes: dict[str, Any] | None = None,
    *,
    after_batch: Callable[[int], None] = lambda tokens: None,
    log: Callable[[str], None] = print,
    language: str = DEFAULT_LANGUAGE,
) -> int:
    """Asks the teacher for one instance per instruction, a batch of prompts_per_round at a time, and
    stores each outcome (see _instance_outcome) in outcomes; after each batch calls after_batch with the
    teacher tokens it spent (generate checkpoints there); returns the tokens of all batches. language: the
    English name of the language the instances are asked in.

    With instance_format "json" and a teacher that can enforce the schema, a batch is asked for as JSON
    first, and only the instructions whose JSON reply gave no instance (it ran out of tokens, or an
    endpoint ignored the schema) are asked again in the text format: the text parser is the fallback,
    and it costs only the failures. The choice is made per batch, so an endpoint that refuses
    response_format mid-run gets text prompts from the next batch on."""
    outcomes = {} if outcomes is None else outcomes
    total = 0
    for start in range(0, len(instructions), config.prompts_per_round):
        chunk = instructions[start : start + config.prompts_per_round]
        tokens = 0
        for output_first in (False, True):
            group = [ins for ins in chunk if (ins in classification) == output_first]
            if group and _asks_json(config, teacher):
                tokens += _ask_instances(group, teacher, config, outcomes, output_first=output_first,
                                         as_json=True, seed=config.seed + 1 + start, language=language)
                group = [ins for ins in group if not isinstance(outcomes[ins], list)]
            if group:
                tokens += _ask_instances(group, teacher, config, outcomes, output_first=output_first,
                                         as_json=False, seed=config.seed + 1 + start, language=language)
        total += tokens
        after_batch(tokens)
        counts = InstanceCounts.tally(list(outcomes.values()))
        log(f"instances: {counts.records} written for {len(outcomes)} instructions "
            f"({counts.constrained + counts.json} from JSON, {counts.text} from text)")
    return total


def _ask_instances(
    group: list[str], teacher: Teacher, config: GenerationConfig, outcomes: dict[str, Any], *,
    output_first: bool, as_json: bool, seed: int, language: str,
) -> int:
    """One teacher call for the group's instances in one format; returns the tokens it took."""
    # In the text format a reply that starts a second example is cut there; JSON ends with its object.
    stop = () if as_json else ("\nOutput:" if output_first else "\nInput:", "\nTask:")
    params = SamplingParams(config.max_new_tokens_instance, config.temperature, config.top_p, seed, stop)
    prompts = [instance_prompt(ins, is_classification=output_first, as_json=as_json, language=language)
               for ins in group]
    tokens = 0
    for ins, comp in zip(group, teacher.complete(prompts, params), strict=True):
        tokens += comp.completion_tokens
        outcomes[ins] = _instance_outcome(comp, output_first=output_first, asked_json=as_json)
    return tokens
