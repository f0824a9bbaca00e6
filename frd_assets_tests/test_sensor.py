import json
import time
import uuid

import pytest
from dagster import build_sensor_context

from frd_assets.core.datasets import seed_dataset_id
from frd_assets.core.store import SEEDS_BUCKET
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource
from frd_assets.defs.sensors import seed_upload_sensor

SEED = b'{"instruction": "Name a fruit.", "input": "", "output": "Apple"}\n'


@pytest.fixture
def store_resource(s3_server, monkeypatch):
    # A bucket of its own per test: the session's S3 server is shared.
    return StoreResource(endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key)


@pytest.fixture
def seeds(store_resource):
    store = store_resource.get_store()
    for info in list(store.list(SEEDS_BUCKET)):
        store.delete(SEEDS_BUCKET, info.key)
    return store


@pytest.fixture
def sweep_every_tick(monkeypatch):
    """Every tick lists the whole bucket, as before the upload journal: for uploads written straight into the
    bucket (another S3 tool), which only the sweep sees."""
    monkeypatch.setenv("FRD_SEED_SWEEP_SECONDS", "0")


def tick(instance, store_resource, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"store": store_resource})
    return seed_upload_sensor(context)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10.jsonl", "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"),
        ("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10.json", "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"),
        ("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10.csv", None),
        ("notes.jsonl", None),
        ("dir/0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10.jsonl", None),
        ("0B8E8F7E-6C8B-4B53-9A59-1C1F3C0F7D10.jsonl", None),
        ("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10\n.jsonl", None),
        (" 0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10.jsonl", None),
    ],
)
def test_seed_dataset_id(key, expected):
    assert seed_dataset_id(key) == expected


def test_new_seeds_become_partitions_and_runs_once(dagster_instance, store_resource, seeds, sweep_every_tick):
    ids = sorted(str(uuid.uuid4()) for _ in range(3))
    for i in ids:
        seeds.put_bytes(SEEDS_BUCKET, f"{i}.jsonl", SEED)
    seeds.put_bytes(SEEDS_BUCKET, "README.txt", b"not a seed")
    seeds.put_bytes(SEEDS_BUCKET, "not-a-uuid.jsonl", SEED)

    result = tick(dagster_instance, store_resource)
    assert sorted(r.partition_key for r in result.run_requests) == ids
    assert [sorted(req.partition_keys) for req in result.dynamic_partitions_requests] == [ids]
    assert all(r.run_key.startswith(r.partition_key) for r in result.run_requests)

    # The daemon would apply the partition request; then the next tick from the cursor finds nothing new.
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, ids)
    again = tick(dagster_instance, store_resource, result.cursor)
    assert not again.run_requests
    assert again.skip_reason is not None

    # A later upload is picked up alone, and an existing partition is not added again.
    time.sleep(1.1)  # S3 last-modified has one-second resolution
    late = str(uuid.uuid4())
    seeds.put_bytes(SEEDS_BUCKET, f"{late}.json", b"[" + SEED.strip() + b"]")
    third = tick(dagster_instance, store_resource, again.cursor)
    assert [r.partition_key for r in third.run_requests] == [late]
    assert list(json.loads(third.cursor)["shards"][late[0]]["at_mark"]) == [f"{late}.json"]

    # Rewriting a seed (a new version) triggers its partition again; untouched ones stay quiet.
    time.sleep(1.1)
    seeds.put_bytes(SEEDS_BUCKET, f"{ids[0]}.jsonl", SEED + SEED.replace(b"fruit", b"vegetable"))
    fourth = tick(dagster_instance, store_resource, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == [ids[0]]
    assert fourth.run_requests[0].run_key != result.run_requests[0].run_key


def test_rewritten_seed_of_a_known_partition_reruns_without_adding_it(dagster_instance, store_resource, seeds,
                                                                      sweep_every_tick):
    known = str(uuid.uuid4())
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [known])
    seeds.put_bytes(SEEDS_BUCKET, f"{known}.jsonl", SEED)
    result = tick(dagster_instance, store_resource)
    assert [r.partition_key for r in result.run_requests] == [known]
    assert result.dynamic_partitions_requests == []


def test_an_empty_bucket_skips(dagster_instance, store_resource, seeds):
    result = tick(dagster_instance, store_resource)
    assert not result.run_requests and result.skip_reason is not None


def test_a_later_upload_in_the_same_second_with_a_smaller_key_is_not_lost(dagster_instance, tmp_path,
                                                                         sweep_every_tick):
    """S3 last-modified times have one-second resolution: the cursor keeps the keys seen at its time (in each
    shard: both keys are in shard f)."""
    import os

    from frd_assets.core.store import LocalStore

    store = LocalStore(tmp_path)
    resource = StoreResource(local_root=str(tmp_path))
    late_key, early_key = "ffffffff-0000-4000-8000-000000000000", "f0000000-0000-4000-8000-000000000000"
    store.put_bytes(SEEDS_BUCKET, f"{late_key}.jsonl", SEED)
    os.utime(tmp_path / SEEDS_BUCKET / f"{late_key}.jsonl", (1_800_000_000, 1_800_000_000))
    first = tick(dagster_instance, resource)
    assert [r.partition_key for r in first.run_requests] == [late_key]
    store.put_bytes(SEEDS_BUCKET, f"{early_key}.jsonl", SEED)
    os.utime(tmp_path / SEEDS_BUCKET / f"{early_key}.jsonl", (1_800_000_000, 1_800_000_000))
    second = tick(dagster_instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [early_key]
    assert not tick(dagster_instance, resource, second.cursor).run_requests


def test_a_thousand_uploads_in_one_tick(dagster_instance, store_resource, seeds, sweep_every_tick):
    from concurrent.futures import ThreadPoolExecutor

    ids = [str(uuid.uuid4()) for _ in range(1000)]
    with ThreadPoolExecutor(16) as pool:  # the upload is setup, not what is measured
        list(pool.map(lambda i: seeds.put_bytes(SEEDS_BUCKET, f"{i}.jsonl", SEED), ids))
    seeds.put_bytes(SEEDS_BUCKET, "notes/readme.md", b"not a seed")
    t0 = time.perf_counter()
    result = tick(dagster_instance, store_resource)
    seconds = time.perf_counter() - t0
    print(f"\nseed sensor: 1,000 new uploads in one tick took {seconds:.2f} s")
    keys = [r.partition_key for r in result.run_requests]
    assert sorted(keys) == sorted(ids) and len(set(keys)) == 1000
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == sorted(ids)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, ids)
    assert not tick(dagster_instance, store_resource, result.cursor).run_requests


# The three ways a seed update used to be dropped. Each ends with the newest seed processed, exactly once.

def materialize_seed(instance, resource, dataset_id):
    """A real seed_dataset materialization of the partition (it records the key and ETag it read)."""
    from dagster import materialize

    from frd_assets.defs.assets import seed_dataset
    from frd_assets.defs.io_managers import StoreIOManager

    result = materialize([seed_dataset], partition_key=dataset_id, instance=instance,
                         resources={"store": resource, "io_manager": StoreIOManager(store=resource)})
    assert result.success
    return result


def records_of(instance, dataset_id):
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey("seed_dataset"))
    return event.asset_materialization.metadata["records"].value


def test_a_seed_rewritten_while_its_run_is_in_flight_is_processed_after_that_run(dagster_instance, tmp_path):
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    u = str(uuid.uuid4())
    write_seed(store, u, SEED)
    first = tick(dagster_instance, resource)
    assert [r.partition_key for r in first.run_requests] == [u]
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [u])
    # The requested run is under way: it has read the first seed...
    run = create_run_for_test(dagster_instance, job_name="prepare_dataset", status=DagsterRunStatus.STARTED,
                              tags={"dagster/partition": u})
    materialize_seed(dagster_instance, resource, u)
    # ...when the user rewrites it.
    write_seed(store, u, SEED + SEED.replace(b"fruit", b"vegetable"))
    during = tick(dagster_instance, resource, first.cursor)
    assert not during.run_requests and "1 waiting for a run in flight" in during.skip_reason.skip_message
    assert list(json.loads(during.cursor)["pending"]) == [f"{u}.jsonl"]
    again = tick(dagster_instance, resource, during.cursor)  # still in flight: still held, not dropped
    assert not again.run_requests
    dagster_instance.report_run_failed(run)  # the run ends (how it ended does not matter)
    after = tick(dagster_instance, resource, again.cursor)
    assert [r.partition_key for r in after.run_requests] == [u]
    assert after.run_requests[0].run_key != first.run_requests[0].run_key
    materialize_seed(dagster_instance, resource, u)
    assert records_of(dagster_instance, u) == 2  # the newest seed is the one processed
    assert not tick(dagster_instance, resource, after.cursor).run_requests  # and only once


def test_a_rewrite_that_the_run_in_flight_read_is_not_processed_again(dagster_instance, tmp_path):
    """Exactly once: the rewrite lands while a run is in flight but before its seed_dataset step, so that
    run reads the newest seed; when it ends, the held upload is recognised by its key and ETag and dropped."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    u = str(uuid.uuid4())
    write_seed(store, u, SEED)
    first = tick(dagster_instance, resource)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [u])
    run = create_run_for_test(dagster_instance, job_name="prepare_dataset", status=DagsterRunStatus.STARTED,
                              tags={"dagster/partition": u})
    write_seed(store, u, SEED + SEED.replace(b"fruit", b"vegetable"))  # before the run reads its seed
    during = tick(dagster_instance, resource, first.cursor)
    assert not during.run_requests and list(json.loads(during.cursor)["pending"]) == [f"{u}.jsonl"]
    materialize_seed(dagster_instance, resource, u)  # the run reads the rewrite
    assert records_of(dagster_instance, u) == 2
    dagster_instance.report_run_failed(run)
    after = tick(dagster_instance, resource, during.cursor)
    assert not after.run_requests, "the upload the run already read was launched again"
    assert json.loads(after.cursor)["pending"] == {}


def test_an_upload_with_the_other_suffix_replaces_the_seed(dagster_instance, tmp_path, monkeypatch):
    """`frd seed upload a.jsonl --uuid U` then `frd seed upload b.json --uuid U`: U's seed is b."""
    from frd_assets.cli import main
    from frd_assets.core.store import LocalStore

    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path))
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    resource = StoreResource(local_root=str(tmp_path))
    u = str(uuid.uuid4())
    (tmp_path / "a.jsonl").write_bytes(SEED)
    (tmp_path / "b.json").write_bytes(b"[" + SEED.strip() + b", " + SEED.replace(b"fruit", b"tree").strip() + b"]")
    assert main(["seed", "upload", str(tmp_path / "a.jsonl"), "--uuid", u]) == 0
    first = tick(dagster_instance, resource)
    assert main(["seed", "upload", str(tmp_path / "b.json"), "--uuid", u]) == 0
    assert [i.key for i in LocalStore(tmp_path).list(SEEDS_BUCKET) if "/" not in i.key] == [f"{u}.json"]
    second = tick(dagster_instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [u]
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [u])
    materialize_seed(dagster_instance, resource, u)
    assert records_of(dagster_instance, u) == 2

    # Both present (dropped into the bucket by hand): the newest one is the seed.
    store = LocalStore(tmp_path)
    store.put_bytes(SEEDS_BUCKET, f"{u}.jsonl", SEED * 1)
    import os

    os.utime(tmp_path / SEEDS_BUCKET / f"{u}.json", (1_000_000_000, 1_000_000_000))
    materialize_seed(dagster_instance, resource, u)
    assert records_of(dagster_instance, u) == 1


def test_a_same_second_rewrite_on_s3_is_not_skipped(dagster_instance, store_resource, seeds):
    """S3 last-modified times have one-second resolution: the cursor tells the two writes apart by ETag."""
    from frd_assets.core.seeds import write_seed

    for _attempt in range(5):
        u = str(uuid.uuid4())
        # Start just after a second boundary, so both writes and the tick between fit in one second.
        time.sleep(1 - time.time() % 1 + 0.02)
        write_seed(seeds, u, SEED)
        written = seeds.stat(SEEDS_BUCKET, f"{u}.jsonl")
        first = tick(dagster_instance, store_resource)
        write_seed(seeds, u, SEED + SEED.replace(b"fruit", b"vegetable"))
        [info] = [i for i in seeds.list(SEEDS_BUCKET) if i.key == f"{u}.jsonl"]
        if info.last_modified == written.last_modified:
            break
        seeds.delete(SEEDS_BUCKET, f"{u}.jsonl")
    else:
        pytest.fail("could not place two writes in one second in 5 attempts")
    assert [r.partition_key for r in first.run_requests] == [u]
    second = tick(dagster_instance, store_resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [u]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [u])
    materialize_seed(dagster_instance, store_resource, u)
    assert records_of(dagster_instance, u) == 2
    assert not tick(dagster_instance, store_resource, second.cursor).run_requests


def test_an_unreachable_store_skips_the_tick_naming_the_endpoint_and_keeps_the_cursor(dagster_instance):
    from frd_assets_tests.openai_server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    resource = StoreResource(endpoint=endpoint, access_key="k", secret_key="s")
    cursor = json.dumps({"mark": 5.0, "at_mark": {}, "pending": {}})
    result = tick(dagster_instance, resource, cursor)
    assert not result.run_requests and result.cursor == cursor
    assert endpoint in result.skip_reason.skip_message and "MINIO_ENDPOINT" in result.skip_reason.skip_message


def test_a_tick_without_its_cursor_sorts_many_known_datasets_in_one_pass(dagster_instance, tmp_path):
    """A reset sensor sees every seed in the bucket as fresh; known datasets are looked up together (issue 23),
    and each still gets its own answer: processed ones stay quiet, one with a run in flight waits, a known one
    never processed and a new one run."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    processed = sorted(str(uuid.uuid4()) for _ in range(3))
    busy, unprocessed, new = (str(uuid.uuid4()) for _ in range(3))
    for u in (*processed, busy, unprocessed, new):
        write_seed(store, u, SEED)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [*processed, busy, unprocessed])
    for u in processed:
        materialize_seed(dagster_instance, resource, u)
    create_run_for_test(dagster_instance, job_name="prepare_dataset", status=DagsterRunStatus.STARTED,
                        tags={"dagster/partition": busy})

    result = tick(dagster_instance, resource)  # no cursor
    assert sorted(r.partition_key for r in result.run_requests) == sorted([unprocessed, new])
    assert [req.partition_keys for req in result.dynamic_partitions_requests] == [[new]]
    assert list(json.loads(result.cursor)["pending"]) == [f"{busy}.jsonl"]


# The upload journal (core/datasets.py): between sweeps a tick reads it instead of listing the bucket.


def test_journal_keys_name_their_seed_and_hour_and_nothing_else_reads_as_one():
    from frd_assets.core.datasets import journal_entry, journal_key

    u = str(uuid.uuid4())
    t = 1_796_645_366_688_440_876  # 2026-12-07T12:49:26Z
    key = journal_key(f"{u}.jsonl", t, "0123abcd")
    assert key == f"_uploads/2026-12-07T12/{t:020d}-0123abcd-{u}.jsonl"
    assert journal_entry(key) == (t, f"{u}.jsonl")
    assert journal_entry(key.replace("T12/", "T13/")) is None  # the folder disagrees with the time
    assert journal_entry(f"{u}.jsonl") is None and journal_entry(f"_uploads/2026-12-07T12/{u}.jsonl") is None
    with pytest.raises(ValueError, match="not a seed key"):
        journal_key(f"{u}.retired.json", t, "0123abcd")
    with pytest.raises(ValueError, match="token"):
        journal_key(f"{u}.jsonl", t, "../x")


def listing_prefixes(monkeypatch) -> list[str]:
    """The prefixes the local store is listed with from now on (the store itself stays real)."""
    from frd_assets.core.store import LocalStore

    calls: list[str] = []
    real = LocalStore.list

    def recorded(self, bucket, prefix="", start_after=""):
        calls.append(prefix)
        return real(self, bucket, prefix, start_after)

    monkeypatch.setattr(LocalStore, "list", recorded)
    return calls


def test_a_journal_tick_reads_only_the_journal_and_the_sweep_finds_what_it_missed(dagster_instance, tmp_path,
                                                                                   monkeypatch):
    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    old = sorted(str(uuid.uuid4()) for _ in range(20))
    for u in old:
        write_seed(store, u, SEED)
    first = tick(dagster_instance, resource)  # no cursor: a sweep
    assert sorted(r.partition_key for r in first.run_requests) == old
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, old)

    listed = listing_prefixes(monkeypatch)
    new = str(uuid.uuid4())
    write_seed(store, new, SEED)
    write_seed(store, old[3], SEED + SEED)  # a rewrite of a known dataset
    second = tick(dagster_instance, resource, first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == sorted([new, old[3]])
    assert [req.partition_keys for req in second.dynamic_partitions_requests] == [[new]]
    assert listed and all(p.startswith("_uploads/") for p in listed), listed  # never the whole bucket
    assert json.loads(second.cursor)["swept_at"] == json.loads(first.cursor)["swept_at"]
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [new])
    third = tick(dagster_instance, resource, second.cursor)
    assert not third.run_requests  # each journal entry is read once

    # An upload by another S3 tool writes no journal entry: the journal ticks miss it, the next sweep finds it,
    # and only it: what the journal ticks took (none of it processed yet) is not requested again.
    other = str(uuid.uuid4())
    store.put_bytes(SEEDS_BUCKET, f"{other}.jsonl", SEED)
    assert not tick(dagster_instance, resource, third.cursor).run_requests
    monkeypatch.setenv("FRD_SEED_SWEEP_SECONDS", "0")
    del listed[:]
    swept = tick(dagster_instance, resource, third.cursor)
    assert [r.partition_key for r in swept.run_requests] == [other] and listed == [""]
    monkeypatch.delenv("FRD_SEED_SWEEP_SECONDS")
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [other])
    assert not tick(dagster_instance, resource, swept.cursor).run_requests
    assert json.loads(swept.cursor)["handled"] == {}


def test_a_retired_id_journaled_again_is_refused_without_a_listing(dagster_instance, tmp_path, monkeypatch):
    from frd_assets.core.retirement import write_tombstone
    from frd_assets.core.seeds import write_seed
    from frd_assets.core.settings import RetentionSettings
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    retired, live = str(uuid.uuid4()), str(uuid.uuid4())
    write_seed(store, retired, SEED)
    first = tick(dagster_instance, resource)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [retired])
    write_tombstone(store, retired, reason="by test", policy=RetentionSettings(), now=time.time())
    listed = listing_prefixes(monkeypatch)
    write_seed(store, retired, SEED + SEED)  # behind the CLI's back: the CLI refuses it
    write_seed(store, live, SEED)
    second = tick(dagster_instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [live]
    assert all(p.startswith("_uploads/") for p in listed), listed
    quiet = tick(dagster_instance, resource, second.cursor)
    assert not quiet.run_requests
    # The next sweep does not count it again either: the journal tick took it.
    monkeypatch.setenv("FRD_SEED_SWEEP_SECONDS", "0")
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [live])
    swept = tick(dagster_instance, resource, quiet.cursor)
    assert not swept.run_requests and "retired" not in swept.skip_reason.skip_message


def test_a_cursor_from_before_the_journal_sweeps_once_and_goes_on_from_its_mark(dagster_instance, tmp_path):
    """An existing deployment's cursor (mark, at_mark, pending): its first tick is a sweep, nothing is lost and
    nothing processed twice, and the ticks after it read the journal."""
    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    before = str(uuid.uuid4())
    write_seed(store, before, SEED)
    seen = store.stat(SEEDS_BUCKET, f"{before}.jsonl")  # what the old sensor's last listing left in its cursor
    old_format = json.dumps({"mark": seen.last_modified, "at_mark": {seen.key: seen.etag}, "pending": {}},
                            sort_keys=True)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [before])
    after = str(uuid.uuid4())
    write_seed(store, after, SEED)
    first = tick(dagster_instance, resource, old_format)
    assert [r.partition_key for r in first.run_requests] == [after]
    assert json.loads(first.cursor)["swept_at"] > 0
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [after])
    assert not tick(dagster_instance, resource, first.cursor).run_requests
    later = str(uuid.uuid4())
    write_seed(store, later, SEED)
    assert [r.partition_key for r in tick(dagster_instance, resource, first.cursor).run_requests] == [later]


def test_an_unreachable_store_between_sweeps_keeps_the_cursor(dagster_instance):
    from frd_assets_tests.openai_server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    resource = StoreResource(endpoint=endpoint, access_key="k", secret_key="s")
    cursor = json.dumps({"mark": 5.0, "at_mark": {}, "pending": {}, "swept_at": time.time(), "handled": {},
                         "journal": {"since_ns": time.time_ns(), "seen": []}})
    result = tick(dagster_instance, resource, cursor)
    assert not result.run_requests and result.cursor == cursor
    assert endpoint in result.skip_reason.skip_message


def test_the_journal_expires_by_whole_old_hours_and_only_its_own_entries(tmp_path):
    from frd_assets.core.datasets import journal_key
    from frd_assets.core.seeds import expire_upload_journal, write_seed
    from frd_assets.core.store import LocalStore

    store = LocalStore(tmp_path)
    u = str(uuid.uuid4())
    write_seed(store, u, SEED)  # journaled now
    now = time.time()
    day_ago = int((now - 86400) * 10**9)
    old = journal_key(f"{u}.jsonl", day_ago - 3600 * 10**9, "0000000a")  # its hour ended over a day ago
    recent = journal_key(f"{u}.jsonl", day_ago + 3600 * 10**9, "0000000b")
    for key in (old, recent, "_uploads/notes.txt"):  # the last one: not an entry write_seed makes
        store.put_bytes(SEEDS_BUCKET, key, b"x")
    before = {i.key for i in store.list(SEEDS_BUCKET)}
    assert expire_upload_journal(store, now) == 1
    assert {i.key for i in store.list(SEEDS_BUCKET)} == before - {old}
    assert f"{u}.jsonl" in before and not (tmp_path / SEEDS_BUCKET / old).parent.exists()  # its folder went too


def test_an_entry_that_lists_late_for_its_time_is_left_to_the_sweep_not_lost(dagster_instance, tmp_path,
                                                                             monkeypatch):
    """An uploader whose clock is behind (or whose entry took long to land) names a time before the cursor's
    journal position: journal ticks do not read it, and the next sweep runs the upload, once."""
    from frd_assets.core.datasets import journal_key
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    first = tick(dagster_instance, resource)  # a sweep of the empty bucket
    u = str(uuid.uuid4())
    store.put_bytes(SEEDS_BUCKET, f"{u}.jsonl", SEED)
    store.put_bytes(SEEDS_BUCKET, journal_key(f"{u}.jsonl", time.time_ns() - 600 * 10**9, "0000000c"), b"")
    journal_tick = tick(dagster_instance, resource, first.cursor)
    assert not journal_tick.run_requests
    monkeypatch.setenv("FRD_SEED_SWEEP_SECONDS", "0")
    swept = tick(dagster_instance, resource, journal_tick.cursor)
    assert [r.partition_key for r in swept.run_requests] == [u]
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [u])
    assert not tick(dagster_instance, resource, swept.cursor).run_requests


# The sweep in shards (defs/sensors.py): one shard of the bucket per sweep tick, sixteen to a full pass.


def in_shard(digit: str) -> str:
    """A dataset id whose seed lies in the given shard (its first hex digit)."""
    return digit + str(uuid.uuid4())[1:]


def sweep_a_shard_every_tick(monkeypatch):
    # 1 s for a full pass: a shard's turn comes every 1/16 s, and a tick lists one shard at most.
    monkeypatch.setenv("FRD_SEED_SWEEP_SECONDS", "1")


def shard_tick(instance, store_resource, cursor=None):
    """A tick once the next shard's turn has come (FRD_SEED_SWEEP_SECONDS=1)."""
    time.sleep(1 / 16)
    return tick(instance, store_resource, cursor)


def test_the_rotation_finds_an_upload_made_with_another_tool_in_its_shard_once(dagster_instance, tmp_path,
                                                                              monkeypatch):
    from frd_assets.core.seeds import write_seed
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    sweep_a_shard_every_tick(monkeypatch)
    cursor = tick(dagster_instance, resource).cursor  # no cursor, empty bucket: shard 0 and the journal
    assert json.loads(cursor)["next_shard"] == 1
    raw, journaled = in_shard("7"), in_shard("7")
    store.put_bytes(SEEDS_BUCKET, f"{raw}.jsonl", SEED)  # another S3 tool: no journal entry
    write_seed(store, journaled, SEED)
    listed = listing_prefixes(monkeypatch)
    requested: list[tuple[int, str]] = []
    for n in range(32):  # two full passes
        del listed[:]
        result = shard_tick(dagster_instance, resource, cursor)
        cursor = result.cursor
        requested += [(n, r.partition_key) for r in result.run_requests]
        shards = [p for p in listed if not p.startswith("_uploads/")]
        assert shards == ["0123456789abcdef"[(n + 1) % 16]], listed  # one shard a tick, in turn
        dagster_instance.add_dynamic_partitions(dataset_partitions.name, [k for _, k in requested])
    # The journaled upload on the first tick; the other one when shard 7 came round (the 7th tick after shard 0),
    # and neither again: not by the sweep of shard 7 that followed the journal, nor by the second pass.
    assert requested == [(0, journaled), (6, raw)]
    assert json.loads(cursor)["handled"] == {}


def test_a_reset_sensor_does_not_request_every_known_dataset_in_one_tick(dagster_instance, tmp_path, monkeypatch):
    """No cursor (reset in the UI): every seed is fresh again, but a tick lists one shard and asks the instance
    about that shard's datasets only; the rotation goes through all of them once in sixteen ticks."""
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    ids = sorted(in_shard(d) for d in "0123456789abcdef" for _ in range(2))
    for u in ids:
        store.put_bytes(SEEDS_BUCKET, f"{u}.jsonl", SEED)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, ids)  # known, never processed

    first = tick(dagster_instance, resource)  # the default interval: a reset sweeps one shard, not sixteen
    assert sorted(r.partition_key for r in first.run_requests) == [u for u in ids if u[0] == "0"]
    assert tick(dagster_instance, resource, first.cursor).skip_reason is not None  # shard 1's turn not yet come

    sweep_a_shard_every_tick(monkeypatch)
    cursor, requested = first.cursor, [r.partition_key for r in first.run_requests]
    for _ in range(16):
        result = shard_tick(dagster_instance, resource, cursor)
        assert len(result.run_requests) <= 2
        cursor, requested = result.cursor, requested + [r.partition_key for r in result.run_requests]
    assert sorted(requested) == ids  # each once


def test_a_tombstone_in_its_shard_still_refuses_the_retired_id(dagster_instance, tmp_path, monkeypatch):
    from frd_assets.core.retirement import write_tombstone
    from frd_assets.core.settings import RetentionSettings
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    retired, live = in_shard("3"), in_shard("3")
    write_tombstone(store, retired, reason="by test", policy=RetentionSettings(), now=time.time())
    sweep_a_shard_every_tick(monkeypatch)
    cursor = tick(dagster_instance, resource).cursor  # shard 0
    store.put_bytes(SEEDS_BUCKET, f"{retired}.jsonl", SEED)  # behind the CLI's back, and not journaled
    store.put_bytes(SEEDS_BUCKET, f"{live}.jsonl", SEED)
    outcomes = []
    for _ in range(32):
        result = shard_tick(dagster_instance, resource, cursor)
        cursor = result.cursor
        outcomes.append(([r.partition_key for r in result.run_requests],
                         "1 of retired datasets" in (result.skip_reason.skip_message if result.skip_reason else "")))
    # Shard 3's sweep (the third tick) runs the live upload and skips the retired one, once in two passes.
    assert [o for o in outcomes if o != ([], False)] == [([live], False)]
    assert json.loads(cursor)["handled"] == {}


def test_a_cursor_of_the_journal_with_one_mark_goes_on_in_shards(dagster_instance, tmp_path, monkeypatch):
    """The cursor the sensor wrote before shards (one mark for the bucket, the journal's position, what journal
    ticks took): it loads, nothing it covered is requested again, and what came after it is."""
    from frd_assets.core.store import LocalStore

    resource = StoreResource(local_root=str(tmp_path))
    store = LocalStore(tmp_path)
    before, taken, after = in_shard("0"), in_shard("1"), in_shard("0")
    store.put_bytes(SEEDS_BUCKET, f"{before}.jsonl", SEED)
    store.put_bytes(SEEDS_BUCKET, f"{taken}.jsonl", SEED)
    b, t = store.stat(SEEDS_BUCKET, f"{before}.jsonl"), store.stat(SEEDS_BUCKET, f"{taken}.jsonl")
    old = json.dumps({"mark": b.last_modified, "at_mark": {b.key: b.etag}, "pending": {}, "swept_at": 0.0,
                      "handled": {t.key: t.etag}, "journal": {"since_ns": time.time_ns(), "seen": []}})
    time.sleep(0.01)
    store.put_bytes(SEEDS_BUCKET, f"{after}.jsonl", SEED)
    sweep_a_shard_every_tick(monkeypatch)
    first = tick(dagster_instance, resource, old)  # shard 0
    assert [r.partition_key for r in first.run_requests] == [after]
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [after])
    second = shard_tick(dagster_instance, resource, first.cursor)  # shard 1: what the journal took stays taken
    assert not second.run_requests and json.loads(second.cursor)["handled"] == {}
