"""Writers of one prefix racing each other, on the local store and on S3 (a real SeaweedFS): the pointer only
moves forward, never names a version that is not whole, and a DELETED verdict removes only what it judged.

A writer is paused at an exact step by GatedStore (the real store, except that one call waits for the test
to release it), so each interleaving is forced, not hoped for."""

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from dagster import materialize

from frd_assets.core import versions
from frd_assets.core.datasets import asset_location
from frd_assets.core.names import GENERATED_DATASET, SEED_DATASET, VALIDATED_DATASET
from frd_assets.core.records import dumps_jsonl
from frd_assets.core.store import ObjectNotFound, PreconditionFailed, Store
from frd_assets.definitions import ASSETS, build_resources
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource

WAIT_S = 60  # far above any step here; a test that forgets to release a writer fails instead of hanging


class GatedStore(Store):
    """The real store, except that the first `op` call on a key ending in `name` sets `reached` and then
    waits for `go`: a writer held at that step while others write."""

    def __init__(self, inner: Store, *, op: str, name: str):
        self.inner, self.op, self.name = inner, op, name
        self.reached, self.go = threading.Event(), threading.Event()

    def _gate(self, op: str, key: str) -> None:
        if op == self.op and key.endswith(self.name) and not self.reached.is_set():
            self.reached.set()
            if not self.go.wait(WAIT_S):
                raise TimeoutError(f"the test never released the writer held at {op} {key}")

    def put_bytes(self, bucket, key, data):
        self._gate("put_bytes", key)
        self.inner.put_bytes(bucket, key, data)

    def put_bytes_if(self, bucket, key, data, *, etag):
        self._gate("put_bytes_if", key)
        self.inner.put_bytes_if(bucket, key, data, etag=etag)

    def delete_if(self, bucket, key, *, etag):
        self._gate("delete_if", key)
        self.inner.delete_if(bucket, key, etag=etag)

    def get_object(self, bucket, key):
        return self.inner.get_object(bucket, key)

    def delete(self, bucket, key):
        self.inner.delete(bucket, key)

    def list(self, bucket, prefix="", start_after=""):
        return self.inner.list(bucket, prefix, start_after)

    def uri(self, bucket, key=""):
        return self.inner.uri(bucket, key)


class Outcome:
    """A call run in a thread: its result or the exception it raised."""

    def __init__(self, fn):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except Exception as exc:  # the test asserts on it
            self.error = exc

    def join(self):
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the writer never finished"
        return self


def adapter_files(label: str) -> list[tuple[str, bytes]]:
    return [("adapter_model.safetensors", f"weights {label}".encode()),
            ("adapter_config.json", f'{{"{label}": 1}}'.encode())]


def assert_whole(store, version: versions.Version) -> None:
    for name in version.files:
        versions.read(store, version, name)  # checks size and SHA-256 against the pointer


def folder_files(store, bucket, prefix, version_id) -> list[str]:
    root = f"{prefix}/versions/{version_id}/"
    return sorted(i.key[len(root):] for i in store.list(bucket, root))


@pytest.fixture
def lora_prefix():
    return asset_location("lora_adapter", str(uuid.uuid4()))


def test_conditional_writes_compare_and_swap_on_both_stores(store, lora_prefix):
    bucket, prefix = lora_prefix
    key = f"{prefix}/{versions.POINTER}"
    store.put_bytes_if(bucket, key, b"first", etag=None)
    with pytest.raises(PreconditionFailed, match="changed since it was read"):
        store.put_bytes_if(bucket, key, b"second creation", etag=None)
    _, first = store.get_object(bucket, key)
    store.put_bytes_if(bucket, key, b"second", etag=first.etag)
    with pytest.raises(PreconditionFailed):
        store.put_bytes_if(bucket, key, b"from a stale read", etag=first.etag)
    with pytest.raises(PreconditionFailed):
        store.delete_if(bucket, key, etag=first.etag)
    assert store.get_bytes(bucket, key) == b"second"
    _, second = store.get_object(bucket, key)
    store.delete_if(bucket, key, etag=second.etag)
    assert not store.exists(bucket, key)
    with pytest.raises(PreconditionFailed):
        store.delete_if(bucket, key, etag=second.etag)


def test_a_slow_writer_overtaken_by_quick_ones_keeps_its_files_and_moves_no_pointer_back(store, lora_prefix):
    """The issue's race: one publish whose file write is slow, three quick publishes meanwhile. Before, pruning
    deleted the slow folder mid-write and the slow pointer then replaced the newest one."""
    bucket, prefix = lora_prefix
    versions.publish(store, bucket, prefix, adapter_files("first"))
    slow = GatedStore(store, op="put_bytes", name="adapter_config.json")  # its weights are written, not its config
    writer = Outcome(lambda: versions.publish(slow, bucket, prefix, adapter_files("slow")))
    assert slow.reached.wait(WAIT_S)
    quick = [versions.publish(store, bucket, prefix, adapter_files(f"quick{i}")) for i in range(3)]
    [slow_id] = [v for v in versions.version_ids(store, bucket, prefix)
                 if folder_files(store, bucket, prefix, v) == ["adapter_model.safetensors"]]
    slow.go.set()
    writer.join()

    assert isinstance(writer.error, versions.StaleVersion)
    message = str(writer.error)
    assert quick[-1].version in message and slow_id in message and "\n" not in message
    now = versions.current(store, bucket, prefix)
    assert now.version == quick[-1].version
    assert_whole(store, now)
    # The grace period kept the slow folder through three pruning rounds, so it was written whole.
    assert folder_files(store, bucket, prefix, slow_id) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("earlier", [True, False], ids=["replace", "first-creation"])
def test_a_pointer_written_between_the_read_and_the_write_is_not_overwritten(store, lora_prefix, earlier):
    """The writer read the pointer and found itself newer; before its write, a newer pointer landed. The
    conditional write refuses (If-Match / If-None-Match on S3, the flock on the local store), the writer
    reads again and gives up."""
    bucket, prefix = lora_prefix
    if earlier:
        versions.publish(store, bucket, prefix, adapter_files("earlier"))
    held = GatedStore(store, op="put_bytes_if", name=versions.POINTER)
    writer = Outcome(lambda: versions.publish(held, bucket, prefix, adapter_files("held")))
    assert held.reached.wait(WAIT_S)
    newer = versions.publish(store, bucket, prefix, adapter_files("newer"))
    held.go.set()
    writer.join()
    assert isinstance(writer.error, versions.StaleVersion), writer.error
    assert newer.version in str(writer.error)
    assert versions.current(store, bucket, prefix).version == newer.version


def test_a_newer_writer_whose_pointer_read_went_stale_reads_again_and_wins(store, lora_prefix):
    """An older writer's pointer lands between a newer writer's read and write: the newer one's conditional
    write fails, it reads again, finds an older version there and replaces it."""
    bucket, prefix = lora_prefix
    versions.publish(store, bucket, prefix, adapter_files("earlier"))
    older_gate = GatedStore(store, op="put_bytes", name="adapter_config.json")
    older = Outcome(lambda: versions.publish(older_gate, bucket, prefix, adapter_files("older")))
    assert older_gate.reached.wait(WAIT_S)  # its version id is taken: it sorts before the next writer's
    newer_gate = GatedStore(store, op="put_bytes_if", name=versions.POINTER)
    newer = Outcome(lambda: versions.publish(newer_gate, bucket, prefix, adapter_files("newer")))
    assert newer_gate.reached.wait(WAIT_S)
    older_gate.go.set()
    older.join()
    assert older.error is None and versions.current(store, bucket, prefix).version == older.result.version
    newer_gate.go.set()
    newer.join()
    assert newer.error is None
    assert older.result.version < newer.result.version == versions.current(store, bucket, prefix).version


def test_concurrent_publishes_never_move_the_pointer_back_nor_to_a_torn_version(store, lora_prefix):
    bucket, prefix = lora_prefix
    versions.publish(store, bucket, prefix, adapter_files("start"))
    done = threading.Event()
    seen: list[str] = []

    def watch():
        while not done.is_set():
            version = versions.current(store, bucket, prefix)
            assert_whole(store, version)
            seen.append(version.version)

    reader = Outcome(watch)
    writers = [Outcome(lambda i=i: [versions.publish(store, bucket, prefix, adapter_files(f"w{i}-{n}"))
                                    for n in range(3)]) for i in range(4)]
    published, stale = [], 0
    for w in writers:
        w.join()
        if w.error is None:
            published += [v.version for v in w.result]
        else:  # a writer stops at its first overtaken publish
            assert isinstance(w.error, versions.StaleVersion), w.error
            stale += 1
    done.set()
    reader.join()
    assert reader.error is None, reader.error
    assert seen == sorted(seen), "a reader saw the pointer move back"
    assert published, "no publish succeeded"
    final = versions.current(store, bucket, prefix)
    assert final.version >= max(published)
    assert_whole(store, final)


def old_version_id(hours: float) -> str:
    return (f"{(datetime.now(timezone.utc) - timedelta(hours=hours)).strftime(versions._ID_TIME)}-"
            f"{uuid.uuid4().hex[:8]}")


def test_pruning_spares_young_versions_unknown_folders_and_newer_ones(store, lora_prefix):
    bucket, prefix = lora_prefix
    old = sorted(old_version_id(h) for h in (5, 4, 3))
    for v in [*old, "hand-made-copy"]:
        store.put_bytes(bucket, f"{prefix}/versions/{v}/adapter_config.json", b"{}")
    young = [versions.publish(store, bucket, prefix, adapter_files(f"y{i}"), keep=1).version for i in range(3)]
    newer = versions.new_version_id()  # a writer still at work
    store.put_bytes(bucket, f"{prefix}/versions/{newer}/adapter_config.json", b"{}")
    pruned = versions.prune(store, bucket, prefix, current_version=young[-1], keep=1)
    assert pruned == []  # everything older than the pointer had been pruned by the publishes already
    assert versions.version_ids(store, bucket, prefix) == sorted([*young, newer, "hand-made-copy"])


def test_a_version_that_is_past_the_grace_period_is_pruned(store, lora_prefix):
    bucket, prefix = lora_prefix
    old = sorted(old_version_id(h) for h in (3, 2))
    for v in old:
        store.put_bytes(bucket, f"{prefix}/versions/{v}/adapter_config.json", b"{}")
    young = versions.publish(store, bucket, prefix, adapter_files("young"), keep=2)
    # keep=2: the newest older version stays however old; the one before it is past the grace period.
    assert versions.version_ids(store, bucket, prefix) == [old[1], young.version]


def test_removing_a_judged_version_leaves_a_newer_one_current_and_whole(store):
    bucket, prefix = asset_location(GENERATED_DATASET, str(uuid.uuid4()))
    older = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"older\n")])
    judged = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"judged\n")])
    newer = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"newer\n")])
    assert versions.remove_version(store, bucket, prefix, judged.version) == 1  # its one file, no pointer
    now = versions.current(store, bucket, prefix)
    assert now.version == newer.version and versions.read(store, now, "generated_dataset.jsonl") == b"newer\n"
    assert versions.version_ids(store, bucket, prefix) == [older.version, newer.version]


def test_removing_the_current_version_removes_its_pointer_and_nothing_else(store):
    bucket, prefix = asset_location(GENERATED_DATASET, str(uuid.uuid4()))
    older = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"older\n")])
    judged = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"judged\n")])
    assert versions.remove_version(store, bucket, prefix, judged.version) == 2  # pointer and file
    with pytest.raises(ObjectNotFound):
        versions.current(store, bucket, prefix)
    assert versions.version_ids(store, bucket, prefix) == [older.version]
    with pytest.raises(ValueError, match="one folder name"):
        versions.remove_version(store, bucket, prefix, "../x")


def test_a_pointer_moved_just_before_the_removal_is_left_alone(store):
    """The pointer named the judged version when read; a newer one landed before the delete: the conditional
    delete refuses, the remover reads again and leaves the new pointer."""
    bucket, prefix = asset_location(GENERATED_DATASET, str(uuid.uuid4()))
    judged = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"judged\n")])
    held = GatedStore(store, op="delete_if", name=versions.POINTER)
    remover = Outcome(lambda: versions.remove_version(held, bucket, prefix, judged.version))
    assert held.reached.wait(WAIT_S)
    newer = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", b"newer\n")])
    held.go.set()
    remover.join()
    assert remover.error is None and remover.result == 1
    now = versions.current(store, bucket, prefix)
    assert now.version == newer.version
    assert_whole(store, now)
    assert versions.version_ids(store, bucket, prefix) == [newer.version]


class PublishesGeneratedFirst(StoreResource):
    """The store as validated_dataset finds it when it acts on its verdict: another run has just published a
    newer generated version of the dataset (after this run read the one it judged)."""

    dataset: str

    def get_store(self) -> Store:
        store = super().get_store()
        versions.publish(store, *asset_location(GENERATED_DATASET, self.dataset),
                         [("generated_dataset.jsonl", dumps_jsonl([ROW, ROW]))])
        return store


ROW = {"id": "a", "instruction": "Name a fruit.", "input": "", "output": "Apple", "provenance": {}}


def test_a_deleted_verdict_removes_the_generated_version_it_judged_not_a_newer_one(tmp_path, dagster_instance):
    """A real validated_dataset run: its verdict is DELETED (a self-BLEU limit of 0), and another run
    published generated version B while it judged A. A goes; B stays current and whole."""
    a = str(uuid.uuid4())
    env = {"FRD_LOCAL_STORE": str(tmp_path / "store")}
    resources = build_resources(env)
    store = resources["store"].get_store()
    versions.publish(store, *asset_location(SEED_DATASET, a), [("seed_dataset.jsonl", dumps_jsonl([ROW] * 4))])
    bucket, prefix = asset_location(GENERATED_DATASET, a)
    judged = versions.publish(store, bucket, prefix, [("generated_dataset.jsonl", dumps_jsonl([ROW] * 4))])
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [a])
    result = materialize(
        ASSETS, selection=[VALIDATED_DATASET], partition_key=a, instance=dagster_instance, raise_on_error=False,
        resources={**resources, "store": PublishesGeneratedFirst(local_root=env["FRD_LOCAL_STORE"], dataset=a)},
        run_config={"ops": {VALIDATED_DATASET: {"config": {"max_self_bleu": 0.0}}}},
    )
    verdict = versions.current(store, *asset_location(VALIDATED_DATASET, a)).meta["verdict"]
    assert verdict == "DELETED", result
    [newer] = [v for v in versions.version_ids(store, bucket, prefix)]
    assert newer != judged.version
    now = versions.current(store, bucket, prefix)
    assert now.version == newer
    assert_whole(store, now)
