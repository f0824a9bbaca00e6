"""The commands that need the platform: launch and status talk to the webserver's GraphQL API (client.py),
demo materializes the chain in a Dagster instance on this machine, retire retires one dataset in it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from frd_assets.cli.common import EXIT_BAD_INPUT, EXIT_DELETED, bad_input, open_configured_store, shorten
from frd_assets.cli.standalone import upload_seed
from frd_assets.core import names


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME, else ./.dagster_home with the repository's dagster.yaml: a persistent instance."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = Path.cwd() / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and config.exists() and config.resolve() != (home / "dagster.yaml"):
        shutil.copy(config, home / "dagster.yaml")
    return home


def cmd_launch(args) -> int:
    from frd_assets.client import FrdClient, FrdClientError
    from frd_assets.core.datasets import InvalidDatasetId, check_dataset_id

    try:
        check_dataset_id(args.uuid)
    except InvalidDatasetId as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    assets = [a.strip() for a in args.assets.split(",")] if args.assets else None
    try:
        print(FrdClient(args.host, args.port).launch(args.uuid, assets=assets, base_model=args.base_model))
    except FrdClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def held_out_summary(meta: dict) -> str:
    """One line of an adapter_evaluation's figures, for `frd status` and `frd demo`."""
    line = (f"held-out ROUGE-L base {meta['rouge_l_base']:.3f} adapter {meta['rouge_l_adapter']:.3f} "
            f"(diff {meta['rouge_l_diff']:+.3f}, 95% CI {_interval(meta.get('rouge_l_diff_ci'))}, n={meta['n']})")
    if "win_rate" in meta:
        line += (f"; judge win rate {meta['win_rate']:.2f} (95% Wilson {_interval(meta.get('win_rate_ci'))}, "
                 f"position consistency {meta['position_consistency']:.2f})")
    else:
        line += "; no judge configured: reference metrics only"
    return line


def _interval(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-"


def cmd_status(args) -> int:
    import datetime

    from frd_assets.client import FrdClient, FrdClientError

    try:
        statuses = FrdClient(args.host, args.port).status(args.uuid)
    except FrdClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"dataset {args.uuid}")
    for s in statuses:
        when = (
            datetime.datetime.fromtimestamp(s.materialized_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if s.materialized_at
            else "never"
        )
        extra = ""
        if s.asset == names.VALIDATED_DATASET and "verdict" in s.metadata:
            extra = f"  verdict {s.metadata['verdict']}"
        if s.asset == names.LORA_ADAPTER and "best_eval_loss" in s.metadata:
            extra = f"  eval loss {s.metadata['best_eval_loss']:.4f}"
        if s.asset == names.ADAPTER_EVALUATION and "rouge_l_adapter" in s.metadata:
            extra = f"  {held_out_summary(s.metadata)}"
        extra += current_line(s.metadata)
        print(f"  {s.asset:<18} materialized {when:<19}  last run {s.run_status or '-':<9} {s.run_id or ''}{extra}")
    return 0


def current_line(metadata: dict) -> str:
    """'current <folder>  <- <input versions>' from an asset's latest materialization metadata: the IO manager
    records the version folder it published, the asset the versions it read. Only the asset's own run writes
    its storage, so the latest materialization names its current version."""
    from frd_assets.core.provenance import INPUTS, describe

    if "uri" not in metadata:
        return ""
    return f"  current {metadata['uri']}  {describe({INPUTS: metadata.get(INPUTS)})}"


def _step_seconds(instance, run_id: str) -> dict[str, float]:
    from dagster import DagsterEventType

    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type == DagsterEventType.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type in (
            DagsterEventType.STEP_SUCCESS,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.STEP_SKIPPED,
        ):
            ends[ev.step_key] = entry.timestamp
    return {k: ends[k] - starts[k] for k in starts if k in ends}


def _check_demo_flags(args) -> int | None:
    """The demo's two numbers against the bounds its run config is checked with, before Dagster is imported
    or a model prepared: EXIT_BAD_INPUT with one line, or None."""
    from frd_assets.core.config_checks import check_value
    from frd_assets.core.generation.self_instruct import GenerationConfig
    from frd_assets.core.lora.search import N_TRIALS

    try:
        GenerationConfig(num_instructions=args.instructions)  # what generated_dataset's run config builds
        check_value("frd demo", "n_trials", args.trials, N_TRIALS)
    except ValueError as exc:
        return bad_input(exc, {"num_instructions": "--instructions", "n_trials": "--trials or LORA_N_TRIALS"})
    return None


def cmd_demo(args) -> int:
    refused = _check_demo_flags(args)
    if refused is not None:
        return refused
    import json

    from dagster import AssetKey, DagsterInstance, materialize

    from frd_assets.core import versions
    from frd_assets.core.datasets import asset_location
    from frd_assets.core.models import prepare_default_model
    from frd_assets.core.seeds import sample_seed
    from frd_assets.core.settings import (
        DEMO_EPOCHS,
        DEMO_EVAL_MAX_NEW_TOKENS,
        DEMO_HELD_OUT_FRACTION,
        DEMO_PRUNER_STARTUP_TRIALS,
    )
    from frd_assets.core.threads import THREADS_ENV, available_cores
    from frd_assets.core.validation import READY
    from frd_assets.definitions import ASSETS, build_resources
    from frd_assets.defs.partitions import dataset_partitions

    home = ensure_dagster_home()
    # The demo is the only run on this machine: its steps may use every core (a run of the embedded instance
    # otherwise takes its share, since another queue's run may be beside it; core/threads.py).
    os.environ.setdefault(THREADS_ENV, str(available_cores()))
    prepare_default_model()
    with resources.as_file(sample_seed()) as path:
        try:
            dataset_id = upload_seed(Path(path), args.uuid)
        except ValueError as exc:  # a --uuid that was retired (core/retirement.py): one line, as seed upload says it
            return bad_input(exc)
    print(f"dataset {dataset_id}: sample seed uploaded; Dagster instance in {home}")
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    run_config = {
        # Progress lines (generation rounds, trials) without Dagster's per-event debug chatter.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        # The demo's sizes (core/settings.py): a larger held-out share, so the test part can show a difference,
        # and few epochs, early pruning and short answers, so the chain stays under 6 minutes on 2 CPU cores.
        "ops": {
            names.SEED_DATASET: {"config": {"held_out_fraction": DEMO_HELD_OUT_FRACTION}},
            names.GENERATED_DATASET: {"config": {"num_instructions": args.instructions}},
            names.LORA_ADAPTER: {"config": {"n_trials": args.trials, "epochs": DEMO_EPOCHS,
                                            "pruner_startup_trials": DEMO_PRUNER_STARTUP_TRIALS}},
            names.ADAPTER_EVALUATION: {"config": {"max_new_tokens": DEMO_EVAL_MAX_NEW_TOKENS}},
        },
    }
    t0 = time.perf_counter()
    result = materialize(
        ASSETS,
        partition_key=dataset_id,
        instance=instance,
        resources=build_resources(),
        run_config=run_config,
        raise_on_error=False,
    )
    total = time.perf_counter() - t0
    for step, secs in _step_seconds(instance, result.run_id).items():
        print(f"  {step}: {secs:.1f} s")
    print(f"  total: {total:.1f} s (run {result.run_id})")

    def meta(asset: str) -> dict:
        event = instance.get_latest_materialization_event(AssetKey(asset))
        mat = event.asset_materialization if event else None
        return {k: v.value for k, v in mat.metadata.items()} if mat and mat.partition == dataset_id else {}

    validated = meta(names.VALIDATED_DATASET)
    verdict = validated.get("verdict")
    print(f"verdict: {verdict}" + (f" (failed gates: {validated.get('failed_gates')})" if verdict != READY else ""))
    if verdict != READY:
        print("adapter: none")
        return EXIT_DELETED
    adapter = meta(names.LORA_ADAPTER)
    if not result.success or not adapter:
        print("error: the run failed; open the run in the Dagster UI (`make dev`) to see why", file=sys.stderr)
        return 1
    print(f"best hyperparameters: {adapter['best_params']}")
    print(f"eval loss: {adapter['best_eval_loss']:.4f} (base model {adapter['base_eval_loss']:.4f})")
    if isinstance(adapter.get("best_validation_loss"), float):  # "-" when the seed gave no validation tasks
        print(f"validation: loss {adapter['best_validation_loss']:.4f} (base model "
              f"{adapter['base_validation_loss']:.4f}, n={adapter['validation_records']}): {adapter['verdict']}")
    evaluation = meta(names.ADAPTER_EVALUATION)
    if evaluation:
        print(f"test: {held_out_summary(evaluation)}")
        store = open_configured_store()
        evaluated = versions.current(store, *asset_location(names.ADAPTER_EVALUATION, dataset_id))
        report = json.loads(versions.read(store, evaluated, names.EVALUATION_REPORT_FILE))
        for i, sample in enumerate(report["samples"][:2], start=1):
            print(f"  sample {i}: {shorten(sample['instruction'])}")
            for who in ("reference", "base", "adapter"):
                print(f"    {who:<9} {shorten(sample[who])}")
        print(f"model card with the evaluation: {evaluation['uri']}/{names.CARD_FILE}")
    print(f"adapter: {adapter['uri']}")
    return 0


def cmd_retire(args) -> int:
    """Retires one dataset now, under the retention policy's objects/runs settings (FRD_RETENTION_*), in the
    Dagster instance of DAGSTER_HOME (as `frd demo` uses it; in compose: `docker compose exec code-server`)."""
    import time

    from frd_assets.core.datasets import InvalidDatasetId, check_dataset_id
    from frd_assets.core.retirement import BY_HAND, read_tombstone
    from frd_assets.core.seeds import current_seed
    from frd_assets.core.settings import FRD_RETENTION_OBJECTS, FRD_RETENTION_RUNS, retention_settings
    from frd_assets.core.store import StoreError

    try:
        uuid = check_dataset_id(args.uuid)
        policy = retention_settings()
    except (InvalidDatasetId, ValueError) as exc:
        return bad_input(exc)
    from dagster import DagsterInstance

    from frd_assets.defs.retirement import retire_dataset, runs_in_flight

    ensure_dagster_home()
    try:
        store = open_configured_store()
        stone = read_tombstone(store, uuid)
        has_seed = current_seed(store, uuid) is not None
    except (StoreError, ValueError) as exc:
        return bad_input(exc)
    instance = DagsterInstance.get()
    has_partition = instance.has_dynamic_partition(names.PARTITIONS_DEF, uuid)
    if stone is not None and not has_partition:
        print(f"dataset {uuid} is already {stone.line()}")
        return 0
    if not has_partition and not has_seed:
        return bad_input(ValueError(f"no dataset {uuid}: no partition in {os.environ['DAGSTER_HOME']} and no seed "
                                    "upload in the store; check the uuid (frd status UUID)"))
    busy = runs_in_flight(instance, uuid)
    if busy:
        return bad_input(ValueError(f"dataset {uuid} has a run queued or running ({busy[0]}): wait for it or "
                                    "terminate it in the UI, then retire"))
    what = (f"retire {uuid}: delete its partition, {policy.objects} its store objects ({FRD_RETENTION_OBJECTS}), "
            f"{policy.runs} its runs ({FRD_RETENTION_RUNS}), and record it so its uuid is refused for uploads")
    if not args.yes:
        if not sys.stdin.isatty():
            return bad_input(ValueError(f"frd retire would {what}; add --yes to do it"))
        if input(f"{what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing retired")
            return 0
    try:
        retired = retire_dataset(instance, store, uuid, reason=BY_HAND, policy=policy, now=time.time())
    except StoreError as exc:
        return bad_input(exc)
    print(retired.line())
    return 0
