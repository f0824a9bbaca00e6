"""What every `frd` command shares: exit codes, the one-line refusal, integer flags, the configured store.

Dagster-free, like the standalone commands that use it (frd_assets/cli/standalone.py).
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from typing import Mapping

EXIT_BAD_INPUT = 2
EXIT_DELETED = 3


def open_configured_store():
    from frd_assets.core.store import open_store

    return open_store()


def bad_input(exc: BaseException, flags: Mapping[str, str] | None = None) -> int:
    """Prints exc as one line on stderr (a message that spans lines is joined) and returns EXIT_BAD_INPUT.

    flags maps a config field to the flag that sets it (num_instructions -> --num): a ConfigError names the
    field, and the user needs the flag to fix it."""
    from frd_assets.core.config_checks import ConfigError

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if isinstance(exc, ConfigError) and flags and exc.field in flags:
        text += f" (set by {flags[exc.field]})"
    print(f"error: {text}", file=sys.stderr)
    return EXIT_BAD_INPUT


def integer(text: str) -> int:
    """An integer flag's value. 1e9 is read as the integer it writes, so that the field's bound refuses it
    by name with the allowed range (core/config_checks.py) rather than argparse as 'invalid int value'."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value.adjusted() > 18:  # 1e999999999 as an int would take the memory the bound is there to save
        raise argparse.ArgumentTypeError(f"{text!r} is far above any bound")
    return int(value)


def shorten(text: str, width: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
