"""Integrity under hostile keys and faults: one dataset's run never touches another's objects, a rewrite
cut off mid-write never tears what readers see, symlinks are not followed. Real stores, real Dagster."""

import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, PartitionKeyRange, build_input_context, build_output_context, materialize
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from benchmarks.synthetic import random_lora_adapter
from frd_assets.core import versions
from frd_assets.core.datasets import InvalidDatasetId, asset_location, check_dataset_id, dataset_key
from frd_assets.core.names import PARTITION_TAG
from frd_assets.core.records import dumps_jsonl
from frd_assets.core.seeds import write_seed
from frd_assets.core.store import BUCKETS, SEEDS_BUCKET, LocalStore, S3Store, StoreError
from frd_assets.definitions import ASSETS, build_resources
from frd_assets.defs.io_managers import AdapterFolder, StoreIOManager
from frd_assets.defs.partitions import dataset_partitions
from frd_assets.defs.resources import StoreResource
from frd_assets_tests.s3_server import kill_s3_server, restart_s3_server, start_s3_server, stop_s3_server

REPO = Path(__file__).resolve().parents[1]
ROW = {"id": "a", "instruction": "Name a fruit.", "input": "", "output": "Apple", "provenance": {}}


def hostile_variants(a: str) -> list[str]:
    return [f"{a}/", f"/{a}", f"{a}/.", a.upper(), f" {a}", f"{a} ", f"{a}\n", f"../../x/{a}"]


@pytest.mark.parametrize("value", hostile_variants("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10") + ["", None, 7, "{x}"])
def test_only_a_canonical_lowercase_uuid_is_a_dataset_id(value):
    with pytest.raises(InvalidDatasetId, match="is not a dataset id"):
        check_dataset_id(value)
    with pytest.raises(InvalidDatasetId):
        dataset_key(value, "seed_dataset")


def test_dataset_keys_refuse_segments_that_could_leave_the_prefix():
    a = str(uuid.uuid4())
    assert dataset_key(a, "generated_dataset") == f"{a}/generated_dataset"
    assert dataset_key(a, suffix=".json") == f"{a}.json"
    for part in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            dataset_key(a, part)


def snapshot(store) -> dict[tuple[str, str], bytes]:
    return {(b, i.key): store.get_bytes(b, i.key) for b in BUCKETS for i in store.list(b)}


def publish_dataset_a(store, a: str) -> None:
    """A's objects as a finished chain leaves them: seed, three dataset versions, an adapter version."""
    write_seed(store, a, dumps_jsonl([{"instruction": "Name a fruit.", "input": "", "output": "Apple"}]))
    for name in ("seed_dataset", "generated_dataset", "validated_dataset"):
        meta = {"verdict": "READY_FOR_FINE_TUNING", "failed_gates": []} if name == "validated_dataset" else {}
        versions.publish(store, *asset_location(name, a), [(f"{name}.jsonl", dumps_jsonl([ROW] * 4))], meta=meta)
    versions.publish(store, *asset_location("lora_adapter", a), [("adapter_config.json", b"{}")])


@pytest.fixture
def embedded_instance(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the embedded default, with the coordinator
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


ADD = """
mutation Add($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName,
                      partitionKey: $partitionKey) { __typename }
}
"""
LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""


def test_raw_graphql_launches_for_non_canonical_keys_are_refused(embedded_instance, tmp_path, monkeypatch):
    """What an attacker (or a typo) sends to the webserver: the partition is added (Dagster accepts any
    string), the launch is refused at submission, and A's objects stay byte for byte."""
    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    store = LocalStore(tmp_path / "store")
    a = str(uuid.uuid4())
    publish_dataset_a(store, a)
    before = snapshot(store)
    repo = {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__"}
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, embedded_instance) as context:
        for key in hostile_variants(a):
            added = execute_dagster_graphql(context, ADD, {"repositorySelector": repo,
                                                           "partitionsDefName": "dataset_uuid", "partitionKey": key})
            assert added.data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
            result = execute_dagster_graphql(context, LAUNCH, {"executionParams": {
                "selector": {**repo, "jobName": "__ASSET_JOB",
                             "assetSelection": [{"path": ["validated_dataset"]}]},
                "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": key}]},
                "runConfigData": {}}})
            payload = result.data["launchRun"]
            assert payload["__typename"] == "PythonError", payload
            assert "is not a dataset id" in payload["message"] and repr(key) in payload["message"]
    runs = embedded_instance.get_runs()
    assert len(runs) == len(hostile_variants(a)) and all(r.status.value == "FAILURE" for r in runs)
    assert snapshot(store) == before


@pytest.mark.parametrize("backend, keys", [("local", ["{a}/", "{a}/.", "{A}"]),
                                           ("s3", ["/{a}", " {a}", "{a}/", "{a}/.", "{A}"])])
def test_every_asset_refuses_a_non_canonical_partition_before_writing(backend, keys, request, dagster_instance,
                                                                       tmp_path, monkeypatch):
    """Runs that never pass the coordinator (materialize in-process, another instance config) are refused
    by the assets themselves: seed_dataset at its first line, the others when their inputs are read."""
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        env = server.env()
        store = S3Store.connect(server.endpoint, server.access_key, server.secret_key)
    else:
        env = {"FRD_LOCAL_STORE": str(tmp_path / "store")}
        store = LocalStore(tmp_path / "store")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    a = str(uuid.uuid4())
    publish_dataset_a(store, a)
    before = snapshot(store)
    for template in keys:
        key = template.format(a=a, A=a.upper())
        dagster_instance.add_dynamic_partitions(dataset_partitions.name, [key])
        for selection in (["seed_dataset"], ["validated_dataset"], ["lora_adapter"]):
            result = materialize(ASSETS, selection=selection, partition_key=key, instance=dagster_instance,
                                 resources=build_resources(env), raise_on_error=False)
            assert not result.success
            [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            message = failure.step_failure_data.error.message
            assert "is not a dataset id" in message and repr(key) in message, message
            # Refused once, not retried: the key cannot get better.
            assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert snapshot(store) == before


def make_adapter(base_dir: Path, folder: Path, *, rank: int, alpha: int) -> Path:
    random_lora_adapter(base_dir, folder, rank=rank, alpha=alpha)
    (folder / "README.md").write_text(f"rank {rank}\n")
    (folder / "trials.json").write_text(json.dumps([{"rank": rank}]))
    return folder


def test_an_adapter_rewrite_cut_off_mid_write_leaves_the_previous_version_loadable(tiny_model_dir, tmp_path):
    """The S3 server is killed right after the new adapter_model.safetensors is stored: readers still get
    the whole previous adapter (its config and its weights) through the pointer, and it loads with peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    server = start_s3_server(tmp_path / "s3")
    try:
        store = S3Store.connect(server.endpoint, server.access_key, server.secret_key)
        store.client.meta.config.retries = {"max_attempts": 1}
        a = str(uuid.uuid4())
        bucket, prefix = asset_location("lora_adapter", a)
        first = versions.publish(store, bucket, prefix,
                                 versions.folder_files(make_adapter(tiny_model_dir, tmp_path / "a1", rank=4, alpha=8)))
        second_dir = make_adapter(tiny_model_dir, tmp_path / "a2", rank=8, alpha=32)

        def cut_off():
            for name, read in versions.folder_files(second_dir):
                yield name, read
                # Resumed only once publish has stored this file: kill the server right after the weights.
                if name == "adapter_model.safetensors":
                    kill_s3_server(server)

        with pytest.raises(StoreError, match="cannot reach the S3 server"):
            versions.publish(store, bucket, prefix, cut_off())

        server = restart_s3_server(server)
        resource = StoreResource(endpoint=server.endpoint, access_key=server.access_key, secret_key=server.secret_key)
        store = resource.get_store()
        # The new weights did land (in their own version folder), which is what tore adapters before.
        written = [i.key for i in store.list(bucket, f"{prefix}/versions/") if i.key.endswith(".safetensors")]
        assert len(written) == 2
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(dataset_partitions.name, [a])
        context = build_input_context(
            upstream_output=build_output_context(asset_key=AssetKey("lora_adapter")),
            asset_key=AssetKey("lora_adapter"),
            asset_partition_key_range=PartitionKeyRange(a, a),
            asset_partitions_def=dataset_partitions,
            instance=instance,
        )
        loaded = StoreIOManager(store=resource).load_input(context)
        assert isinstance(loaded, AdapterFolder) and loaded.version.version == first.version
        config = json.loads((loaded.path / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"]) == (4, 8)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), loaded.path)
        assert model.peft_config["default"].r == 4

        # The next successful write becomes current and the torn attempt is pruned in its turn (keep=1; no
        # grace period here: the torn attempt stands for one older than PRUNE_GRACE).
        third = versions.publish(store, bucket, prefix, versions.folder_files(second_dir), keep=1,
                                 grace=timedelta(0))
        assert versions.current(store, bucket, prefix).version == third.version
        assert versions.version_ids(store, bucket, prefix) == [third.version]
    finally:
        stop_s3_server(server)


def test_versions_prune_old_ones_and_never_a_newer_one(store, tmp_path):
    bucket, prefix = asset_location("generated_dataset", str(uuid.uuid4()))
    # No grace period: these five stand for versions published over hours (test_version_races covers the grace).
    published = [versions.publish(store, bucket, prefix, [("x.jsonl", f"{i}\n".encode())], grace=timedelta(0))
                 for i in range(5)]
    kept = versions.version_ids(store, bucket, prefix)
    assert kept == [v.version for v in published[-versions.KEEP_VERSIONS:]]
    current = versions.current(store, bucket, prefix)
    assert current.version == published[-1].version and versions.read(store, current, "x.jsonl") == b"4\n"
    # A version a writer is still working on (newer than the pointer) survives a prune.
    newer = versions.new_version_id()
    store.put_bytes(bucket, f"{prefix}/versions/{newer}/x.jsonl", b"in progress")
    versions.prune(store, bucket, prefix, current_version=current.version, keep=1, grace=timedelta(0))
    assert versions.version_ids(store, bucket, prefix) == [current.version, newer]
    # A file changed after publication is caught by its recorded hash.
    store.put_bytes(bucket, current.key("x.jsonl"), b"tampered")
    with pytest.raises(StoreError, match="does not match its version record"):
        versions.read(store, current, "x.jsonl")
    # Removing the current version takes its pointer and files, and leaves the writer's newer version alone.
    assert versions.remove_version(store, bucket, prefix, current.version) >= 2
    assert versions.version_ids(store, bucket, prefix) == [newer]
    assert not store.exists(bucket, f"{prefix}/{versions.POINTER}")


def test_the_local_store_never_follows_a_symlink(tmp_path, dagster_instance, monkeypatch):
    outside = tmp_path / "outside.json"
    outside.write_text('{"private_field_name": "private value"}\n')
    root = tmp_path / "store"
    store = LocalStore(root)
    a = str(uuid.uuid4())
    (root / SEEDS_BUCKET).mkdir(parents=True)
    (root / SEEDS_BUCKET / f"{a}.jsonl").symlink_to(outside)
    assert list(store.list(SEEDS_BUCKET)) == []  # the sensor never sees it
    assert store.stat_many(SEEDS_BUCKET, [f"{a}.jsonl"]) == {}  # neither by the upload journal's lookups
    with pytest.raises(StoreError, match="symlink"):
        store.get_bytes(SEEDS_BUCKET, f"{a}.jsonl")
    (root / "datasets").mkdir()
    (root / "datasets" / a).symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(StoreError, match="symlink"):
        store.put_bytes("datasets", f"{a}/x.jsonl", b"x")
    assert not (tmp_path / "x.jsonl").exists()

    env = {"FRD_LOCAL_STORE": str(root)}
    monkeypatch.setenv("FRD_LOCAL_STORE", str(root))
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [a])
    result = materialize(ASSETS, selection=["seed_dataset"], partition_key=a, instance=dagster_instance,
                         resources=build_resources(env), raise_on_error=False)
    assert not result.success
    messages = " ".join(e.step_failure_data.error.message for e in result.all_events
                        if e.event_type_value == "STEP_FAILURE")
    assert "private" not in messages


def test_a_seed_nested_absurdly_deep_fails_its_run_with_one_line_naming_it(tmp_path, dagster_instance):
    """Not a generic step error: the message names the object and the line."""
    root = tmp_path / "store"
    a = str(uuid.uuid4())
    write_seed(LocalStore(root), a, b'{"instruction": "x", "output": ' + b"[" * 100_000 + b"\n")
    env = {"FRD_LOCAL_STORE": str(root)}
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [a])
    result = materialize(ASSETS, selection=["seed_dataset"], partition_key=a, instance=dagster_instance,
                         resources=build_resources(env), raise_on_error=False)
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message.strip()
    assert f"seeds/{a}.jsonl line 1" in message and "nested" in message and len(message.splitlines()) == 1
    assert failure.step_failure_data.error.cls_name == "Failure"
