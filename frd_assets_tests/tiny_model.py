"""A tiny Llama-architecture chat model, trained for a few seconds to speak the teacher's formats.

Random weights would emit endless noise that every filter rejects; a few hundred steps on templated
task lists and instance replies give a model that ends its replies and writes varied word salad in the
right shape, so generation, validation and LoRA all run for real in seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

VERBS = ["Describe", "Explain", "List", "Summarize", "Compare", "Classify", "Suggest", "Rewrite", "Translate", "Name"]
ADJS = ["small", "quiet", "bright", "ancient", "modern", "simple", "curious", "gentle", "rapid", "famous", "local"]
NOUNS = [
    "river",
    "city",
    "garden",
    "letter",
    "recipe",
    "planet",
    "market",
    "song",
    "bridge",
    "village",
    "teacher",
    "engine",
    "forest",
    "poem",
    "museum",
    "island",
    "kitchen",
    "festival",
    "library",
    "mountain",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(VERBS)} the {rng.choice(ADJS)} {rng.choice(NOUNS)} of a "
        f"{rng.choice(ADJS)} {rng.choice(NOUNS)} near the {rng.choice(NOUNS)}."
    )


def _render(messages, reply: str) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + f"<|im_start|>assistant\n{reply}<|im_end|>\n"


def _corpus(rng: random.Random, n: int) -> list[str]:
    """Replies to the project's own prompts, so the tiny teacher learns exactly the formats it is asked for."""
    from frd_assets.core.generation.prompts import instance_prompt, instruction_prompt

    texts = []
    for i in range(n):
        if i % 2 == 0:
            prompt = instruction_prompt([_sentence(rng) for _ in range(rng.randint(1, 3))])
            start = int(prompt.prefill.rstrip("."))
            items = [_sentence(rng) for _ in range(rng.randint(2, 3))]
            reply = "\n".join(f"{start + j}. {item}" for j, item in enumerate(items))
        else:
            prompt = instance_prompt(_sentence(rng))
            reply = (
                f"Input: <noinput>\nOutput: The {rng.choice(ADJS)} {rng.choice(NOUNS)} is "
                f"{rng.choice(ADJS)} and {rng.choice(ADJS)}."
            )
        texts.append(_render(prompt.messages, reply))
    return texts


def build_tiny_chat_model(folder: Path, *, steps: int = 300, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    torch.manual_seed(seed)
    corpus = _corpus(rng, 200)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    train_on_texts(model, tokenizer, corpus, steps=steps, rng=rng)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def train_on_texts(model, tokenizer, texts: list[str], *, steps: int, rng: random.Random, lr: float = 3e-3) -> None:
    """Plain next-token training on whole texts, 8 a batch, right-padded: enough for a tiny model to pick up
    a format in seconds."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    model.train()
    for _ in range(steps):
        batch = rng.sample(enc, 8)
        width = max(map(len, batch))
        ids = torch.full((8, width), tokenizer.pad_token_id)
        labels = torch.full((8, width), -100)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
            labels[i, : len(b)] = torch.tensor(b)
        model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
