"""JSON-schema constrained decoding for the local teacher: llguidance matchers as a logits processor.

llguidance (the grammar engine behind guidance, and one of vLLM's and llama.cpp's) is one wheel (8 MB installed)
without dependencies. It computes, for each row of a batch, the set of tokens that keep the reply
inside the schema; the processor sets every other token's logit to -inf before temperature and top-p,
so greedy decoding stays greedy and sampling samples among valid tokens only. Each row has its own
matcher, so a left-padded batch can mix schemas and free-text prompts. llguidance's own torch helper
compiles a kernel with torch.compile (a C compiler on CPU); the bitmask is unpacked with numpy instead.

Whitespace between JSON tokens is not allowed: a small model given the choice pads with newlines and
spaces until it runs out of tokens.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

# What the schema compiler gets besides the schema: compact JSON (see above).
_JSON_OPTIONS = {"whitespace_flexible": False}


def llguidance_version() -> str | None:
    """The installed llguidance version, or None when it is not installed."""
    try:
        import llguidance
    except ImportError:
        return None
    return llguidance.__version__


class SchemaConstraint:
    """A tokenizer's llguidance view, built once per teacher, and the grammars compiled from schemas.

    Raises ValueError when the tokenizer cannot be used (llguidance reads fast tokenizers only)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]):
        import llguidance
        import llguidance.hf

        try:
            self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos_ids))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"llguidance cannot read tokenizer {type(tokenizer).__name__}: {exc}") from None
        self._llguidance = llguidance
        self._grammars: dict[str, str] = {}
        self.eos_ids = frozenset(eos_ids)

    def _grammar(self, schema: Mapping[str, Any]) -> str:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            grammar = self._llguidance.LLMatcher.grammar_from_json_schema(dict(schema), defaults=_JSON_OPTIONS)
            is_error, messages = self._llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
            if is_error:
                raise ValueError(f"llguidance refuses the JSON schema {key[:200]}: {messages[0]}")
            self._grammars[key] = grammar
        return self._grammars[key]

    def processor(self, schemas: Sequence[Mapping[str, Any] | None]) -> "SchemaLogitsProcessor":
        """A processor for one generate() call; schemas[i] constrains row i, None leaves it free."""
        matchers = [
            None if schema is None else self._llguidance.LLMatcher(self._tokenizer, self._grammar(schema))
            for schema in schemas
        ]
        return SchemaLogitsProcessor(matchers, self._tokenizer.vocab_size, self.eos_ids)


class SchemaLogitsProcessor:
    """Masks each row's logits to the tokens its matcher allows; follows transformers' processor call."""

    def __init__(self, matchers: list[Any], vocab_size: int, eos_ids: frozenset[int]):
        self.matchers = matchers
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        # A row is left alone once it wrote EOS (what follows is padding) or its matcher failed.
        self.finished = [m is None for m in matchers]
        self.errors: list[str | None] = [None] * len(matchers)
        self._started = False

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch
        from llguidance.numpy import fill_next_token_bitmask

        if not self._started:
            self._started = True  # the first call sees the prompt only: no token of the reply to consume
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.finished[row]:
                    continue
                matcher = self.matchers[row]
                if token in self.eos_ids or not matcher.consume_token(token):
                    self.finished[row] = True
                    if matcher.is_error():
                        self.errors[row] = matcher.get_error()
        if all(self.finished):  # every constrained row is done (free rows may go on): nothing left to mask
            return scores
        words = (self.vocab_size + 31) // 32
        bitmask = np.full((len(self.matchers), words), -1, dtype=np.int32)
        for row, matcher in enumerate(self.matchers):
            if not self.finished[row]:
                fill_next_token_bitmask(matcher, bitmask, row)
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
        for row in np.flatnonzero(~allowed.any(axis=1)):
            if not self.finished[row]:  # no token allowed: masking all would leave nothing to sample
                self.finished[row] = True
                self.errors[row] = self.matchers[row].get_error() or "the schema allows no next token"
        # Logit columns beyond the tokenizer's vocabulary (padded embeddings) are never valid JSON.
        invalid = np.ones(tuple(scores.shape), dtype=bool)
        width = min(self.vocab_size, scores.shape[1])
        invalid[:, :width] = allowed[:, :width] == 0
        invalid[self.finished] = False
        if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float16):
            # On CPU the mask is applied in numpy: a torch op on a batch's logits waits on torch's thread
            # pool, and on 2 cores shared with another process masked_fill took 27 ms a step, numpy 3 ms.
            masked = scores.numpy().copy()
            masked[invalid] = -np.inf
            return torch.from_numpy(masked)
        return scores.masked_fill(torch.from_numpy(invalid).to(scores.device), float("-inf"))

    def constrained(self, row: int) -> bool:
        """Whether row's reply was written under its schema from start to end."""
        return self.matchers[row] is not None and self.errors[row] is None
