"""Log lines of libraries this project uses that mislead its users, filtered once for every process (this
module is imported by frd_assets.core's __init__, before anything can import the library).

bitsandbytes, which peft imports whenever it is installed, tries on a CPU with AVX512-BF16 to fetch a gemm
kernel from the Hugging Face Hub at import; `kernels` refuses it as remote code, and bitsandbytes logs a
warning telling the user to allow remote code (trust_remote_code), once per process: every trial, every `frd
evaluate`. This project never runs remote code and bitsandbytes falls back to its own kernel, so that one
warning is dropped; anything else bitsandbytes logs goes through.
"""

from __future__ import annotations

import logging

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"  # the logger bitsandbytes' CPU backend gets with __name__
BNB_HUB_KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def not_the_hub_kernel_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_HUB_KERNEL_WARNING)


def install() -> None:
    """Idempotent: logging keeps one copy of a filter added twice."""
    logging.getLogger(BNB_LOGGER).addFilter(not_the_hub_kernel_warning)
