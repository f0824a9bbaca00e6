"""The adapter's model card with the held-out evaluation added, published as the evaluation's own output.

The adapter's version is immutable and belongs to lora_adapter: a second adapter version written only to
change its card would leave Dagster's record of lora_adapter naming a version that is no longer current. So
the evaluated card is stored in adapter_evaluation's version, beside report.json and answers.jsonl, and the
adapter's own card stays as lora_adapter wrote it.
"""

from __future__ import annotations

from huggingface_hub import ModelCard

from frd_assets.core.evaluation.report import EvaluationReport

EVALUATION_HEADING = "## Evaluation on held-out seed tasks"


def evaluated_card(adapter_card: str, report: EvaluationReport, *, adapter_uri: str | None = None) -> str:
    """adapter_card (its YAML header kept) followed by the evaluation's table and two samples."""
    card = ModelCard(adapter_card)
    where = f"\n\nThe adapter evaluated: `{adapter_uri}`." if adapter_uri else ""
    card.text = (card.text.rstrip() + "\n\n" + EVALUATION_HEADING + where + "\n\n" + report.markdown_table()
                 + "\n\n" + report.samples_markdown(2) + "\n")
    return str(card)
