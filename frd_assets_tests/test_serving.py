"""The model card's serving section: vLLM's command with the smallest --max-lora-rank that holds the adapter,
and the merged-model route."""

from __future__ import annotations

import pytest

from frd_assets.core.lora.card import model_card
from frd_assets.core.lora.search import SearchResult
from frd_assets.core.lora.serving import VLLM_LORA_RANKS, RankTooLarge, serving_section, vllm_max_lora_rank


@pytest.mark.parametrize("rank, expected", [(1, 8), (8, 8), (9, 16), (16, 16), (17, 32), (64, 64), (65, 128),
                                            (256, 256), (257, 320), (320, 320), (321, 512), (512, 512)])
def test_the_smallest_accepted_max_lora_rank_that_holds_the_adapter(rank, expected):
    assert vllm_max_lora_rank(rank) == expected
    smaller = [v for v in VLLM_LORA_RANKS if v < expected]
    assert all(v < rank for v in smaller)  # no smaller accepted value would hold it


def test_a_rank_above_vllms_largest_points_to_the_merge():
    with pytest.raises(RankTooLarge, match="frd export --merge"):
        vllm_max_lora_rank(513)
    section = serving_section(base_model="org/base", name="s", rank=1024)
    assert "vllm serve org/base --enable-lora" not in section and "frd export" in section


def test_the_model_card_says_how_to_serve_the_adapter(tmp_path):
    result = SearchResult(study_name="frd-1234-SmolLM2 x", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                          best_params={"rank": 24, "lora_alpha": 48, "learning_rate": 1e-3}, best_eval_loss=1.0,
                          base_eval_loss=2.0, trials=[], adapter_dir=tmp_path, train_records=10, eval_records=2)
    card = model_card(result)
    assert "## Serving" in card
    assert ("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora "
            "--lora-modules frd-1234-SmolLM2-x=./this-folder --max-lora-rank 32") in card
    assert "frd export ./this-folder --merge --base-model HuggingFaceTB/SmolLM2-135M-Instruct --out" in card
