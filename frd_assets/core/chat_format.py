"""The prompt text a record is shown in, the same for training an adapter and for asking it.

Its own module because two packages need the identical text: core/lora trains on it and core/evaluation
asks the adapter with it. An adapter judged on a prompt it never saw would be judged unfairly, and neither
package should import the other to share one function.
"""

from __future__ import annotations

from frd_assets.core.records import Record

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{extra}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def user_message(record: Record) -> str:
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction


def prompt_text(tokenizer, record: Record) -> str:
    """The prompt as the model will see it at inference: its chat template, or Alpaca's when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(record)}], tokenize=False, add_generation_prompt=True
        )
    input_block = f"### Input:\n{record.input}\n\n" if record.input else ""
    extra = ", paired with an input that provides further context" if record.input else ""
    return ALPACA_PROMPT.format(extra=extra, instruction=record.instruction, input_block=input_block)
