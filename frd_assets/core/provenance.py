"""What each stored version was computed from: the `inputs` mapping in its pointer's meta.

A version's files say what it holds, not where it came from; without its inputs, a generated dataset made
from an old seed beside a new one, or an adapter trained on since-replaced data, cannot be told apart
from the right ones. Each asset names its inputs when it publishes:

    seed_dataset       <- the seed upload (key and etag)
    generated_dataset  <- the seed_dataset version
    validated_dataset  <- the generated_dataset and seed_dataset versions
    lora_adapter       <- the validated_dataset version and the base model
    adapter_evaluation <- the lora_adapter version, the base model and a digest of the held-out tasks

Values are strings: version ids, model names, digests. `frd status` prints the chain.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

# The meta key of a version's inputs (see core/versions.py for the pointer that holds the meta).
INPUTS = "inputs"


def digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """A short content digest of JSON rows, in their order: 'sha256:<16 hex>'."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return f"sha256:{h.hexdigest()[:16]}"


def inputs_of(meta: Mapping[str, Any]) -> dict[str, str]:
    """The inputs a version's meta names; empty for a version published before inputs were recorded."""
    inputs = meta.get(INPUTS)
    return {str(k): str(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else {}


def describe(meta: Mapping[str, Any]) -> str:
    """'<- name value, name value' for one status line; '<- (inputs not recorded)' for an older version."""
    inputs = inputs_of(meta)
    if not inputs:
        return "<- (inputs not recorded)"
    return "<- " + ", ".join(f"{name} {value}" for name, value in inputs.items())
