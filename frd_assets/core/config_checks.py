"""Type and range checks for the core config dataclasses: one rule per field, one message format.

Config reaches core as JSON (`frd validate --config`), CLI flags and Dagster launchpad values, and a bare
comparison in `__post_init__` lets through what those carry by mistake: `1e999` is a float infinity that
compares fine, `True` is an int, NaN fails no comparison at all, and `"abc" < 1` raises a TypeError that
names no field. So each config's `__post_init__` calls `check_fields` with a rule for every one of its
fields; a field without a rule is a programming error, so a new field cannot go unchecked. Every numeric
rule has an upper bound as well (check_fields refuses one without): `prompts_per_round: 1e9` or
`n_trials: 1e9` is a typo, and is refused where the config is built (a Dagster run config, a CLI flag)
instead of running until memory or patience runs out. A bad value raises ConfigError naming the config, the
field, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Protocol, TypeVar

from frd_assets.core.records import loads_strict_json

C = TypeVar("C")


class ConfigError(ValueError):
    """A config field whose value has the wrong type or is out of range."""

    def __init__(self, config: str, field: str, value: Any, allowed: str):
        super().__init__(f"{config}: {field} must be {allowed}, got {value!r}")
        self.config = config
        self.field = field
        self.value = value


class _Refused(Exception):
    """A rule refuses a value; args[0] says what is allowed."""


class Rule(Protocol):
    def check(self, value: Any) -> Any:
        """Returns the value, normalised (an int given for a float is a float), or raises _Refused."""


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _allowed(kind: str, bounds: str, optional: bool) -> str:
    return " ".join(part for part in (kind, bounds) if part) + (" or null" if optional else "")


@dataclass(frozen=True)
class Integer:
    """An int within [low, high]; not a bool, and not a float even when whole (4.0, 1e999)."""

    low: int | None = None
    high: int | None = None
    optional: bool = False  # None is allowed too: the field is unset

    def check(self, value: Any) -> Any:
        bounds = _bounds(self.low, self.high)
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Refused(_allowed("an integer", bounds, self.optional))
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _Refused(_allowed("", bounds, self.optional))
        return value


@dataclass(frozen=True)
class Number:
    """A finite int or float within its bounds, returned as a float; not a bool, NaN or infinity."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    optional: bool = False

    def check(self, value: Any) -> Any:
        bounds = _bounds(self.low, self.high, self.low_open, self.high_open)
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Refused(_allowed("a finite number", bounds, self.optional))
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise _Refused(_allowed("", bounds, self.optional))
        return float(value)


@dataclass(frozen=True)
class Boolean:
    """true or false; not 0, 1 or "true", which a launchpad or JSON typo carries as easily."""

    optional: bool = False  # None is allowed too: the field is unset (its default is decided later)

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, bool):
            raise _Refused("true or false" + (" or null" if self.optional else ""))
        return value


@dataclass(frozen=True)
class OneOf:
    options: tuple[str, ...]

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise _Refused("one of " + ", ".join(repr(o) for o in self.options))
        return value


@dataclass(frozen=True)
class Names:
    """A non-empty list of non-empty strings, returned as a tuple so the frozen config stays hashable."""

    example: str  # shown in the message, e.g. '["q_proj", "v_proj"]'
    optional: bool = False

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if (
            isinstance(value, (str, bytes))
            or not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise _Refused(_allowed(f"a non-empty list of names such as {self.example}", "", self.optional))
        return tuple(value)


@dataclass(frozen=True)
class LanguageCode:
    """"" (unset: the seed's detected language) or one of the known ISO 639-1 codes; the message gives
    examples, since the full list is long (core/language.py has it)."""

    known: frozenset[str]

    def check(self, value: Any) -> Any:
        if value == "" or (isinstance(value, str) and value in self.known):
            return value
        raise _Refused("'' (the seed's detected language) or an ISO 639-1 code such as 'en', 'ru' or 'zh' "
                       "(lower case; the list is LANGUAGE_NAMES in frd_assets/core/language.py)")


# numpy and torch take seeds in [0, 2**32): a larger one fails deep inside them, far from the config.
SEED = Integer(0, 2**32 - 1)
# New tokens per answer, for every generating config and command: the longest contexts of today's models.
MAX_NEW_TOKENS = Integer(1, 32_768)


def check_value(config: str, field: str, value: Any, rule: Rule) -> Any:
    """The value as rule normalises it, or ConfigError naming config, field, value and what is allowed."""
    try:
        return rule.check(value)
    except _Refused as refused:
        raise ConfigError(config, field, value, refused.args[0]) from None


def check_fields(config: Any, label: str, rules: Mapping[str, Rule]) -> None:
    """Checks every field of a frozen config dataclass against its rule, in field order, and stores the
    normalised values (4 -> 4.0 for a float field, a list -> a tuple) so that equal configs compare,
    hash and fingerprint equal wherever they came from."""
    names = [f.name for f in fields(config)]
    if set(names) != set(rules):
        raise TypeError(
            f"{type(config).__name__}: every field needs exactly one rule; "
            f"unchecked {sorted(set(names) - set(rules))}, unknown {sorted(set(rules) - set(names))}"
        )
    unbounded = sorted(n for n, r in rules.items() if isinstance(r, (Integer, Number)) and r.high is None)
    if unbounded:
        raise TypeError(f"{type(config).__name__}: every numeric field needs an upper bound; none for {unbounded}")
    for name in names:
        value = getattr(config, name)
        checked = check_value(label, name, value, rules[name])
        if checked is not value:
            object.__setattr__(config, name, checked)


def check_order(config: str, low_field: str, low: Any, high_field: str, high: Any, *, strict: bool = False) -> None:
    """high_field must be >= low_field (> when strict), as in rank_min <= rank_max."""
    if high < low or (strict and high == low):
        raise ConfigError(config, high_field, high, f"{'>' if strict else '>='} {low_field} ({low})")


def config_from_json(cls: type[C], text: str, *, source: str) -> C:
    """A config dataclass from a JSON object of some of its fields (the rest keep their defaults).

    ValueError names source (e.g. the option `--config`) and, for an unknown field, lists the known
    ones; TypeError from `cls(**values)` would only say "unexpected keyword argument".
    """
    try:
        values = loads_strict_json(text)
    except ValueError as exc:
        raise ValueError(f"{source} is not JSON ({exc}); give an object such as '{{\"seed\": 1}}'") from None
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be a JSON object of fields, got {type(values).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r}; the fields are {', '.join(known)}")
    return cls(**values)
