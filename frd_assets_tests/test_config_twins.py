"""Every core config field has its Dagster launchpad twin with the same default, and the twin reaches core.

The run-config classes in defs/config.py repeat the core dataclasses field for field (Dagster needs
pydantic classes); this test is what keeps the copies honest: a field added to core without its twin, a
default changed on one side only, or a conversion that drops a field (LoraRunConfig.training() once
dropped weight_decay) fails here. Fields deliberately left out of the launchpad are listed with why.
"""

from __future__ import annotations

import dataclasses

import pytest

from frd_assets.core.evaluation import EvaluationConfig
from frd_assets.core.generation.self_instruct import GenerationConfig
from frd_assets.core.held_out import HeldOutConfig
from frd_assets.core.lora.real_tasks import RealTaskConfig
from frd_assets.core.lora.search import SearchSettings, SearchSpace
from frd_assets.core.lora.trial import TrainingConfig
from frd_assets.core.validation import ValidationConfig
from frd_assets.defs.config import (
    EvaluationRunConfig,
    GenerationRunConfig,
    LoraRunConfig,
    SeedRunConfig,
    ValidationRunConfig,
)

# Core fields with no launchpad twin, and why.
NOT_IN_LAUNCHPAD = {
    # Crash recovery of trial processes: an operator's setting for a deployment, not a per-run choice.
    (SearchSettings, "heartbeat_interval"),
    (SearchSettings, "grace_period"),
}
# Launchpad fields whose default is None: "the deployment's setting" (LORA_N_WORKERS in core/settings.py),
# which the asset passes in; a value set in the launchpad overrides it for that run.
DEPLOYMENT_DEFAULT = {(SearchSettings, "n_workers")}

TWINS = [
    (SeedRunConfig, HeldOutConfig, lambda c: c.core()),
    (GenerationRunConfig, GenerationConfig, lambda c: c.core()),
    (ValidationRunConfig, ValidationConfig, lambda c: c.core()),
    (EvaluationRunConfig, EvaluationConfig, lambda c: c.core()),
    (LoraRunConfig, TrainingConfig, lambda c: c.training()),
    (LoraRunConfig, SearchSpace, lambda c: c.space()),
    (LoraRunConfig, SearchSettings, lambda c: c.settings()),
    (LoraRunConfig, RealTaskConfig, lambda c: c.real_tasks()),
]


def _launchpad_form(value):
    # The launchpad spells tuples as lists, and peft's "all-linear" string as a one-item list.
    if isinstance(value, tuple):
        return list(value)
    if value == "all-linear":
        return ["all-linear"]
    return value


def _changed(value):
    """A different valid value of the same type, to prove the field is passed through, not defaulted."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    return None


@pytest.mark.parametrize("run_config, core, convert", TWINS, ids=[f"{r.__name__}-{c.__name__}" for r, c, _ in TWINS])
def test_every_core_field_has_a_launchpad_twin_with_the_same_default(run_config, core, convert):
    defaults = run_config().model_dump()
    for f in dataclasses.fields(core()):
        if (core, f.name) in NOT_IN_LAUNCHPAD:
            continue
        assert f.name in defaults, f"{core.__name__}.{f.name} has no twin in {run_config.__name__}"
        if (core, f.name) in DEPLOYMENT_DEFAULT:
            assert defaults[f.name] is None, f"{run_config.__name__}.{f.name}"
            continue
        assert defaults[f.name] == _launchpad_form(getattr(core(), f.name)), f"{run_config.__name__}.{f.name}"
    assert convert(run_config()) == core()


@pytest.mark.parametrize("run_config, core, convert", TWINS, ids=[f"{r.__name__}-{c.__name__}" for r, c, _ in TWINS])
def test_every_twin_reaches_core(run_config, core, convert):
    """Each numeric field, changed in the run config, arrives changed in the core dataclass."""
    for f in dataclasses.fields(core()):
        if (core, f.name) in NOT_IN_LAUNCHPAD:
            continue
        new = _changed(getattr(core(), f.name))
        if new is None:
            continue
        try:
            config = run_config(**{f.name: new})
        except Exception:  # the changed value is out of range for this field (e.g. a maximum): try lower
            new = getattr(core(), f.name) - 1 if isinstance(new, int) and not isinstance(new, bool) else new / 4
            config = run_config(**{f.name: new})
        assert getattr(convert(config), f.name) == new, f"{run_config.__name__}.{f.name} does not reach {core.__name__}"
