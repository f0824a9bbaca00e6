"""How to serve an adapter, for its model card: vLLM with the adapter loaded beside the base model, or the
merged model (`frd export --merge`) for servers without LoRA support.

vLLM sizes its LoRA buffers by --max-lora-rank and accepts only a fixed set of values for it (vllm/config:
MaxLoRARanks); an adapter of a higher rank is refused at load time, and a needlessly high value costs GPU
memory for every request. So the card names the smallest accepted value that holds the adapter's rank.
"""

from __future__ import annotations

import re

# --max-lora-rank values vLLM accepts.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class RankTooLarge(ValueError):
    """An adapter whose rank no --max-lora-rank value of vLLM holds."""


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of this rank."""
    for value in VLLM_LORA_RANKS:
        if value >= rank:
            return value
    raise RankTooLarge(f"LoRA rank {rank} is above {VLLM_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts; "
                       "serve the merged model (`frd export --merge`) instead")


def adapter_name(study_name: str) -> str:
    """A name for --lora-modules (NAME=PATH): the study's, with anything but letters, digits, -, _ and .
    replaced, since the name is also what a client puts in the request's "model" field."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", study_name).strip("-") or "adapter"


def serving_section(*, base_model: str, name: str, rank: int, adapter_path: str = "./this-folder") -> str:
    """The model card's "Serving" section: the vLLM command, and the merged-model route."""
    name = adapter_name(name)
    try:
        max_rank = vllm_max_lora_rank(rank)
        vllm = f"""With [vLLM](https://docs.vllm.ai) serving the adapter beside its base model (rank {rank}, so
`--max-lora-rank {max_rank}`: the smallest value vLLM accepts that holds it):

```bash
vllm serve {base_model} --enable-lora --lora-modules {name}={adapter_path} --max-lora-rank {max_rank}
```

Requests name the adapter as the model: `"model": "{name}"` (the base model's own name answers without it).
"""
    except RankTooLarge as exc:
        vllm = f"vLLM cannot load this adapter: {exc}.\n"
    return f"""## Serving

{vllm}
For servers without LoRA support (TGI without adapters, llama.cpp, a plain transformers pipeline), merge it
into the base model's weights first; the merge is checked to give the adapter's greedy outputs before it is
written, and an adapter trained on a 4-bit NF4 base merges into the full-precision base:

```bash
frd export {adapter_path} --merge --base-model {base_model} --out ./{name}-merged
vllm serve ./{name}-merged
```
"""
