"""Partitions at scale: the platform's hot paths on a Dagster instance holding N dataset partitions.

Builds an instance per backend, PostgreSQL (deploy/dagster.yaml, as docker compose and Helm run it, in a
database of its own on 127.0.0.1:5432, dropped at the end) and SQLite (the embedded dagster.yaml), holding
N partitions of the project's dynamic partitions definition, each one a dataset whose seed sits in the
store. A realistic share went further: SEEDED of them have a prepare run and a seed_dataset
materialization, VALIDATED of them the whole CPU part of the chain, ADAPTED of them an adapter and its
evaluation too. All of it is written through Dagster's instance API (add_dynamic_partitions, add_run,
report_dagster_event with Dagster's own event batching), never by hand-written SQL. Then it times, each the
median of --repeats runs:

- seed_tick: the project's seed sensor (build_sensor_context on the instance) with 1,000 (--new-uploads) new
  uploads in the store on top of the N seeds already processed (the cursor is where the last tick left it).
  The uploads go through the project's upload function (core/seeds.write_seed), so they are journaled, and the
  tick is a journal tick: it lists the upload journal's hour folder and looks up the seeds it names;
- seed_tick_sweep: the same tick when it is also a sweep tick: after the journal it lists one shard of the seeds
  bucket (the keys of one first hex digit, a sixteenth of the bucket), as the sensor does for uploads made with
  other S3 tools, a full pass of 16 shards every FRD_SEED_SWEEP_SECONDS;
- seed_tick_no_cursor: the first tick of the same sensor without its cursor (reset in the UI): every seed is
  fresh again; it reads the journal (the uploads of the last two minutes) and lists one shard, whose known
  datasets' runs and materializations are looked up (one run, not a median; the other 15 shards follow, one a
  sweep tick);
- verdict_tick: the verdict sensor on a successful run that validated a READY dataset;
- status: `frd status UUID` (FrdClient.status, a fresh client as the CLI makes) over GraphQL against a real
  dagster-webserver started with -m frd_assets.definitions on the instance;
- launch: `frd launch UUID` (FrdClient.launch: add the partition, submit; the run waits QUEUED, no daemon);
- add_partition: instance.add_dynamic_partitions with one new dataset id (what the sensor's request does);
- asset_partition_page: the Dagster UI's AssetPartitionDetailQuery for one partition (the asset page with a
  partition selected);
- asset_partitions_overview: the UI's PartitionHealthQuery (every partition key and which are materialized:
  what the asset page's partitions view loads for the whole asset).

The same is measured on a small instance (--baseline, 100 datasets) built in the same run; each figure is
printed with its ratio to the baseline's, and the run ends with one line holding a JSON object of all figures.

Run: .venv/bin/python -m benchmarks.partitions_scale [--datasets 100000] [--backends postgres,sqlite] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
NEW_UPLOADS = 1000
# Shares of the N datasets that got further than a partition (an upload being processed, a DELETED verdict
# or an abandoned one stops early): seed read, whole CPU chain with a verdict, adapter trained and evaluated.
SEEDED, VALIDATED, ADAPTED = 0.2, 0.1, 0.02
BATCH = 1000  # partitions per add_dynamic_partitions call and events per Dagster event batch
TARGET_SECONDS = 1.0

ASSET_PARTITION_DETAIL = """
query AssetPartitionDetailQuery($assetKey: AssetKeyInput!, $partitionKey: String!) {
  assetOrError(assetKey: $assetKey) {
    ... on Asset {
      id
      definition { id opNames latestRunForPartition(partition: $partitionKey) { id status endTime } }
      assetEventHistory(partitions: [$partitionKey], limit: 1000,
                        eventTypeSelectors: [MATERIALIZATION, OBSERVATION, FAILED_TO_MATERIALIZE]) {
        results {
          ... on MaterializationEvent { runId partition timestamp metadataEntries { label } }
          ... on ObservationEvent { runId partition timestamp }
          ... on FailedToMaterializeEvent { runId partition timestamp }
        }
      }
    }
  }
}
"""

PARTITION_HEALTH = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
      }
    }
  }
}
"""


def dataset_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def median_seconds(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- instances ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def sqlite_home(tmp: Path) -> Iterator[dict[str, str]]:
    home = tmp / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the embedded default, as shipped
    yield {"DAGSTER_HOME": str(home)}


@contextlib.contextmanager
def postgres_home(tmp: Path) -> Iterator[dict[str, str]]:
    import psycopg

    name = f"frd_bench_scale_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    home = tmp / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")  # the deployment's, as shipped
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432",
               "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": name}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_seeds(store_root: Path, ids: list[str]) -> float:
    """Every dataset came from an upload, so its seed is in the bucket: one upload a second, the newest a day
    ago. Written as plain files in the local store's layout: setup, not the store's own (fsynced) write path."""
    from frd_assets.core.store import SEEDS_BUCKET

    t0 = time.perf_counter()
    bucket = store_root / SEEDS_BUCKET
    bucket.mkdir(parents=True, exist_ok=True)
    newest = time.time() - 86400
    for i, d in enumerate(ids):
        path = bucket / f"{d}.jsonl"
        path.write_bytes(b'{"instruction": "Name a fruit.", "input": "", "output": "Apple"}\n')
        os.utime(path, (newest - i, newest - i))
    return time.perf_counter() - t0


def build(instance, ids: list[str], etags: dict[str, str]) -> dict:
    """The N datasets' partitions, and runs with materializations for a share of them."""
    from dagster import AssetKey, AssetMaterialization, DagsterEvent, DagsterEventType, DagsterRun
    from dagster._core.events import DagsterEventBatchMetadata, StepMaterializationData
    from dagster._core.storage.dagster_run import DagsterRunStatus

    from frd_assets.core.names import (
        ADAPTER_EVALUATION,
        GENERATED_DATASET,
        LORA_ADAPTER,
        PARTITION_TAG,
        PREPARE_DATASET_JOB,
        SEED_DATASET,
        TRAIN_ADAPTER_JOB,
        VALIDATED_DATASET,
    )
    from frd_assets.core.validation import READY
    from frd_assets.defs.assets import SEED_ETAG, SEED_KEY
    from frd_assets.defs.partitions import dataset_partitions

    t0 = time.perf_counter()
    for i in range(0, len(ids), BATCH):
        instance.add_dynamic_partitions(dataset_partitions.name, ids[i:i + BATCH])
    partitions_s = time.perf_counter() - t0

    seeded = ids[: int(len(ids) * SEEDED)]
    validated = ids[: int(len(ids) * VALIDATED)]
    adapted = ids[: int(len(ids) * ADAPTED)]
    t0 = time.perf_counter()
    prepare_runs, adapter_runs = {}, {}
    for runs, job, share in ((prepare_runs, PREPARE_DATASET_JOB, seeded), (adapter_runs, TRAIN_ADAPTER_JOB, adapted)):
        for d in share:
            run = DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS,
                             tags={PARTITION_TAG: d})
            instance.add_run(run)
            runs[d] = run.run_id
    runs_s = time.perf_counter() - t0

    def metadata(asset: str, d: str) -> dict:
        if asset == SEED_DATASET:
            return {SEED_KEY: f"{d}.jsonl", SEED_ETAG: etags[f"{d}.jsonl"], "records": 1}
        if asset == VALIDATED_DATASET:
            return {"verdict": READY, "failed_gates": "[]", "records": 40}
        return {"records": 40}

    t0 = time.perf_counter()
    events = 0
    for asset, share, runs, job in ((SEED_DATASET, seeded, prepare_runs, PREPARE_DATASET_JOB),
                                    (GENERATED_DATASET, validated, prepare_runs, PREPARE_DATASET_JOB),
                                    (VALIDATED_DATASET, validated, prepare_runs, PREPARE_DATASET_JOB),
                                    (LORA_ADAPTER, adapted, adapter_runs, TRAIN_ADAPTER_JOB),
                                    (ADAPTER_EVALUATION, adapted, adapter_runs, TRAIN_ADAPTER_JOB)):
        batch_id = f"{asset}-{uuid.uuid4().hex}"
        for j, d in enumerate(share):
            materialization = AssetMaterialization(AssetKey(asset), partition=d, metadata=metadata(asset, d))
            event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=job,
                                 event_specific_data=StepMaterializationData(materialization), step_key=asset)
            end = j == len(share) - 1 or (j + 1) % BATCH == 0
            instance.report_dagster_event(event, runs[d], batch_metadata=DagsterEventBatchMetadata(batch_id, end))
            events += 1
    events_s = time.perf_counter() - t0
    return {"partitions_s": partitions_s, "runs": len(prepare_runs) + len(adapter_runs),
            "runs_s": runs_s, "events": events, "events_s": events_s,
            "ready_unadapted": [d for d in validated if d not in adapter_runs], "prepare_runs": prepare_runs}


# ---- the webserver ------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def webserver(log: Path) -> Iterator[int]:
    """A real dagster-webserver on the instance in DAGSTER_HOME, with its code server, stopped at the end."""
    import signal

    import requests

    from frd_assets.client import CODE_LOCATION

    port = free_port()
    exe = str(Path(sys.executable).parent / "dagster-webserver")
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-h", "127.0.0.1", "-p", str(port), "-m", "frd_assets.definitions"], cwd=REPO,
                                env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                body = requests.post(f"http://127.0.0.1:{port}/graphql", timeout=5, json={
                    "query": CODE_LOCATION, "variables": {"assetKey": {"path": ["seed_dataset"]}}}).json()
                if body["data"]["assetNodeOrError"]["__typename"] == "AssetNode":
                    break
            except (requests.RequestException, KeyError, TypeError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the webserver did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def graphql(port: int, query: str, variables: dict) -> dict:
    import requests

    body = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables},
                         timeout=600).json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL error: {body['errors'][0].get('message')}")
    return body["data"]


# ---- one instance -------------------------------------------------------------------------------------

def measure(backend: str, n: int, repeats: int, seed: int, new_uploads: int) -> dict:
    from dagster import (
        AssetKey,
        DagsterEvent,
        DagsterEventType,
        DagsterInstance,
        build_run_status_sensor_context,
        build_sensor_context,
    )

    from frd_assets.client import FrdClient
    from frd_assets.core.names import ASSETS, PREPARE_DATASET_JOB, SEED_DATASET, VALIDATED_DATASET
    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import SEEDS_BUCKET, LocalStore
    from frd_assets.defs.partitions import dataset_partitions
    from frd_assets.defs.resources import StoreResource
    from frd_assets.defs.sensors import adapter_on_ready_sensor, seed_upload_sensor

    ids = dataset_ids(n, seed)
    with tempfile.TemporaryDirectory(prefix="frd-scale-") as tmp_name:
        tmp = Path(tmp_name)
        store_root = tmp / "store"
        home = postgres_home(tmp) if backend == "postgres" else sqlite_home(tmp)
        # Dagster writes a batch of events in one statement once DAGSTER_EVENT_BATCH_SIZE is set.
        with home as env, environment({**env, "FRD_LOCAL_STORE": str(store_root),
                                       "DAGSTER_EVENT_BATCH_SIZE": str(BATCH)}):
            figures: dict = {"backend": backend, "datasets": n}
            with DagsterInstance.get() as instance:
                t0 = time.perf_counter()
                figures["seeds_s"] = round(write_seeds(store_root, ids), 2)
                # The cursor the sensor had once it had seen the N uploads (each its own tick, in real life): one
                # listing of the whole bucket (FRD_SEED_SWEEP_SECONDS=0), as the seeds were not journaled.
                resource = StoreResource(local_root=str(store_root))
                with environment({"FRD_SEED_SWEEP_SECONDS": "0"}):
                    first = seed_upload_sensor(build_sensor_context(instance=instance, resources={"store": resource}))
                assert len(first.run_requests) == n
                cursor = first.cursor
                # seed_dataset records the key and ETag it read: the sensor knows these seeds as processed.
                etags = {i.key: i.etag for i in LocalStore(store_root).list(SEEDS_BUCKET)}
                built = build(instance, ids, etags)
                figures["build_s"] = round(time.perf_counter() - t0, 2)
                figures.update({k: round(v, 2) if isinstance(v, float) else v for k, v in built.items()
                                if k not in ("ready_unadapted", "prepare_runs")})

                # The cursor where the last tick left it: a journal tick just before the uploads, finding nothing.
                # (The sweep interval is set for each figure: building the instance can take longer than it.)
                with environment({"FRD_SEED_SWEEP_SECONDS": str(86400 * 365)}):
                    quiet = seed_upload_sensor(build_sensor_context(instance=instance, cursor=cursor,
                                                                    resources={"store": resource}))
                assert not quiet.run_requests, quiet
                cursor = quiet.cursor

                # 1,000 new uploads arrive, each through the project's upload function: seed, then journal entry.
                store = LocalStore(store_root)
                new = dataset_ids(new_uploads, seed + 1)
                for d in new:
                    write_seed(store, d, b'{"instruction": "x", "input": "", "output": "y"}\n')

                def seed_tick(sweep_seconds: int):
                    def tick(_):
                        with environment({"FRD_SEED_SWEEP_SECONDS": str(sweep_seconds)}):
                            result = seed_upload_sensor(build_sensor_context(instance=instance, cursor=cursor,
                                                                             resources={"store": resource}))
                        assert len(result.run_requests) == new_uploads, result
                        before, after = json.loads(cursor), json.loads(result.cursor)
                        shards = (after["next_shard"] - before["next_shard"]) % 16
                        assert shards == (sweep_seconds == 1), "the tick was not the kind measured"
                    return tick
                figures["seed_tick_s"] = median_seconds(seed_tick(86400 * 365), repeats)
                # 1 s for a full pass: a shard's turn (1/16 s) has come since the cursor's last sweep, and the
                # tick lists the one shard whose turn it is (each repeat from the same cursor: the same shard).
                figures["seed_tick_sweep_s"] = median_seconds(seed_tick(1), repeats)

                # The first tick without its cursor (a sensor reset in the UI): every seed is fresh again; it lists
                # one shard and reads the journal (the new uploads, if written in the last two minutes).
                t0 = time.perf_counter()
                reset = seed_upload_sensor(build_sensor_context(instance=instance, resources={"store": resource}))
                figures["seed_tick_no_cursor_s"] = time.perf_counter() - t0
                requested = {r.partition_key for r in reset.run_requests}
                shard = {d for d in ids[int(n * SEEDED):] + new if d[0] == "0"}  # shard 0's unprocessed seeds
                assert shard <= requested <= shard | set(new), (len(shard), len(requested))

                ready = built["ready_unadapted"][len(built["ready_unadapted"]) // 2]
                run = instance.get_run_by_id(built["prepare_runs"][ready])
                success = DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                                       job_name=PREPARE_DATASET_JOB)

                def verdict_tick(_):
                    context = build_run_status_sensor_context(
                        sensor_name="adapter_on_ready_sensor", dagster_instance=instance, dagster_run=run,
                        dagster_event=success, resources={"store": resource})
                    outcome = adapter_on_ready_sensor(context)
                    assert outcome.partition_key == ready, outcome
                figures["verdict_tick_s"] = median_seconds(verdict_tick, repeats)

                added = dataset_ids(repeats, seed + 2)
                figures["add_partition_s"] = median_seconds(
                    lambda i: instance.add_dynamic_partitions(dataset_partitions.name, [added[i]]), repeats)

                with webserver(tmp / "webserver.log") as port:
                    middle = ids[len(ids) // 2]  # a dataset with nothing but its partition
                    FrdClient("127.0.0.1", port).status(ready)  # the webserver's first answers warm it up

                    def status(_):
                        statuses = FrdClient("127.0.0.1", port).status(ready)
                        assert [s.asset for s in statuses] == list(ASSETS)
                        assert {s.asset for s in statuses if s.materialized_at} == set(ASSETS[:3]), statuses
                    figures["status_s"] = median_seconds(status, repeats)
                    figures["status_bare_partition_s"] = median_seconds(
                        lambda _: FrdClient("127.0.0.1", port).status(middle), repeats)

                    launched = ids[len(ids) // 3: len(ids) // 3 + repeats]
                    figures["launch_s"] = median_seconds(
                        lambda i: FrdClient("127.0.0.1", port).launch(launched[i], assets=[SEED_DATASET]), repeats)

                    def partition_page(_):
                        data = graphql(port, ASSET_PARTITION_DETAIL,
                                       {"assetKey": {"path": [VALIDATED_DATASET]}, "partitionKey": ready})
                        assert len(data["assetOrError"]["assetEventHistory"]["results"]) == 1, data
                    figures["asset_partition_page_s"] = median_seconds(partition_page, repeats)

                    def overview(_):
                        data = graphql(port, PARTITION_HEALTH, {"assetKey": {"path": [SEED_DATASET]}})
                        node = data["assetNodeOrError"]
                        assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) >= n
                    figures["asset_partitions_overview_s"] = median_seconds(overview, repeats)
                assert instance.get_latest_materialization_event(AssetKey(SEED_DATASET)) is not None
    return figures


TIMED = ("seed_tick_s", "seed_tick_sweep_s", "seed_tick_no_cursor_s", "verdict_tick_s", "status_s",
         "status_bare_partition_s", "launch_s", "add_partition_s", "asset_partition_page_s",
         "asset_partitions_overview_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=100_000, help="dataset partitions on the measured instance")
    parser.add_argument("--baseline", type=int, default=100, help="dataset partitions on the baseline instance")
    parser.add_argument("--backends", default="postgres,sqlite", help="comma-separated: postgres, sqlite")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    parser.add_argument("--new-uploads", type=int, default=NEW_UPLOADS, help="uploads the timed seed tick finds")
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"postgres", "sqlite"}
    if unknown or not backends:
        parser.error(f"--backends: unknown {', '.join(sorted(unknown)) or 'empty list'}; choose from postgres, sqlite")
    if args.datasets < 10 or args.baseline < 10:
        parser.error("--datasets and --baseline need at least 10 datasets (a share of them is materialized)")

    started = time.perf_counter()
    figures: dict = {"benchmark": "partitions_scale", "datasets": args.datasets, "baseline_datasets": args.baseline,
                     "repeats": args.repeats, "new_uploads": args.new_uploads, "machine": f"{platform.machine()} "
                     f"{os.cpu_count()} cpus, Python {platform.python_version()}", "target_seconds": TARGET_SECONDS}
    for backend in backends:
        base = measure(backend, args.baseline, args.repeats, args.seed, args.new_uploads)
        big = measure(backend, args.datasets, args.repeats, args.seed, args.new_uploads)
        print(f"{backend}: built {args.datasets:,} partitions in {big['build_s']:.1f} s "
              f"({big['runs']:,} runs, {big['events']:,} materializations)", flush=True)
        print(f"  {'operation':28s} {args.baseline:>10,} {args.datasets:>10,}   ratio", flush=True)
        for key in TIMED:
            ratio = big[key] / base[key] if base[key] > 0 else float("inf")
            flag = "" if big[key] < TARGET_SECONDS else "  over target"
            print(f"  {key:28s} {base[key]:10.3f} {big[key]:10.3f} {ratio:7.1f}x{flag}", flush=True)
            figures[f"{backend}_{key}"] = round(big[key], 4)
            figures[f"{backend}_baseline_{key}"] = round(base[key], 4)
            figures[f"{backend}_ratio_{key}"] = round(ratio, 2)
        for key in ("build_s", "partitions_s", "seeds_s", "runs", "runs_s", "events", "events_s"):
            figures[f"{backend}_{key}"] = big[key]
        figures[f"{backend}_over_target"] = [k for k in TIMED if big[k] >= TARGET_SECONDS]
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
