"""The Self-Instruct bootstrapping loop: propose instructions, filter them, then write instances."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from frd_assets.core.generation.filters import FilterConfig, instruction_reject_reason
from frd_assets.core.generation.prompts import (
    instance_prompt,
    instruction_prompt,
    parse_instance,
    parse_instruction_list,
)
from frd_assets.core.generation.teachers import SamplingParams, Teacher
from frd_assets.core.metrics.rouge_l import NoveltyIndex
from frd_assets.core.records import Record


@dataclass(frozen=True)
class GenerationConfig:
    num_instructions: int = 20  # how many new tasks to keep
    seed_tasks_per_prompt: int = 6  # k in the paper
    generated_per_prompt: int = 2  # m in the paper
    prompts_per_round: int = 8  # one teacher batch
    max_rounds: int = 10  # stop proposing after this many rounds even if short of the target
    novelty_threshold: float = 0.7  # drop an instruction whose ROUGE-L F to the pool exceeds this
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens_instructions: int = 160
    max_new_tokens_instance: int = 160
    min_words: int = 3
    max_words: int = 150
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_instructions", "seed_tasks_per_prompt", "prompts_per_round", "max_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"generation config: {name} must be >= 1, got {getattr(self, name)}")
        if self.generated_per_prompt < 0:
            raise ValueError(f"generation config: generated_per_prompt must be >= 0, got {self.generated_per_prompt}")
        if not 0 < self.novelty_threshold <= 1:
            raise ValueError(f"generation config: novelty_threshold must be in (0, 1], got {self.novelty_threshold}")
        FilterConfig(self.min_words, self.max_words)


@dataclass
class GenerationResult:
    records: list[Record]
    rejected: Counter = field(default_factory=Counter)
    proposed: int = 0
    rounds: int = 0
    teacher_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.teacher_tokens / self.seconds if self.seconds else 0.0


def generate(
    seeds: Sequence[Record],
    teacher: Teacher,
    config: GenerationConfig,
    *,
    log: Callable[[str], None] = print,
) -> GenerationResult:
    """Runs the loop until num_instructions are kept or max_rounds pass; returns kept records and counts."""
    rng = random.Random(config.seed)
    filter_cfg = FilterConfig(config.min_words, config.max_words)
    seed_instructions = list(dict.fromkeys(r.instruction for r in seeds))
    if not seed_instructions:
        raise ValueError("generation needs at least one seed instruction")
    classification = {r.instruction for r in seeds if r.provenance.get("is_classification")}
    pool = NoveltyIndex(seed_instructions)
    seen = {s.lower() for s in seed_instructions}
    kept: list[str] = []
    result = GenerationResult(records=[])
    t0 = time.perf_counter()

    while len(kept) < config.num_instructions and result.rounds < config.max_rounds:
        prompts = []
        for _ in range(config.prompts_per_round):
            examples = rng.sample(seed_instructions, min(config.seed_tasks_per_prompt, len(seed_instructions)))
            examples += rng.sample(kept, min(config.generated_per_prompt, len(kept)))
            rng.shuffle(examples)
            prompts.append(instruction_prompt(examples))
        params = SamplingParams(
            config.max_new_tokens_instructions, config.temperature, config.top_p, config.seed + result.rounds * 7919
        )
        completions = teacher.complete(prompts, params)
        result.rounds += 1
        for comp in completions:
            result.teacher_tokens += comp.completion_tokens
            candidates = parse_instruction_list(comp.text)
            for i, cand in enumerate(candidates):
                if len(kept) >= config.num_instructions:
                    break
                result.proposed += 1
                # Only the last item can have been cut off by the token limit.
                truncated = comp.finish_reason == "length" and i == len(candidates) - 1
                reason = instruction_reject_reason(cand, truncated=truncated, config=filter_cfg)
                if reason is None and cand.lower() in seen:
                    reason = "duplicate"
                if reason is None and pool.max_f(cand)[0] > config.novelty_threshold:
                    reason = "not_novel"
                if reason:
                    result.rejected[reason] += 1
                    continue
                kept.append(cand)
                seen.add(cand.lower())
                pool.add(cand)
        log(
            f"round {result.rounds}: kept {len(kept)}/{config.num_instructions} instructions, "
            f"rejected {dict(result.rejected)}, {result.teacher_tokens / max(time.perf_counter() - t0, 1e-9):.1f} tok/s"
        )

    # Instances: one teacher call per kind; a reply that starts a second example is cut there.
    completions = [None] * len(kept)
    for output_first, stop in ((False, ("\nInput:", "\nTask:")), (True, ("\nOutput:", "\nTask:"))):
        idx = [i for i, ins in enumerate(kept) if (ins in classification) == output_first]
        if not idx:
            continue
        prompts = [instance_prompt(kept[i], is_classification=output_first) for i in idx]
        params = SamplingParams(config.max_new_tokens_instance, config.temperature, config.top_p, config.seed + 1, stop)
        for i, comp in zip(idx, teacher.complete(prompts, params), strict=True):
            completions[i] = comp
    for n, (ins, comp) in enumerate(zip(kept, completions, strict=True)):
        result.teacher_tokens += comp.completion_tokens
        if comp.finish_reason == "length":
            result.rejected["truncated_output"] += 1
            continue
        parsed = parse_instance(comp.text, output_first=ins in classification)
        if parsed is None:
            result.rejected["unparsable_instance"] += 1
            continue
        inp, out = parsed
        result.records.append(
            Record(
                id=f"gen-{n}",
                instruction=ins,
                input=inp,
                output=out,
                provenance={"source": "generated", "teacher": teacher.name},
            )
        )
    result.seconds = time.perf_counter() - t0
    log(
        f"instances: {len(result.records)} records from {len(kept)} instructions, "
        f"rejected {dict(result.rejected)}, {result.tokens_per_second:.1f} tok/s"
    )
    return result


def config_dict(config: GenerationConfig) -> dict:
    return asdict(config)
