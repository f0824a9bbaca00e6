"""One line where one line belongs, and no retries that cannot help (issue 18, defect 8): the study database
dropped mid-search, and a store write on a full disk (a real 64 KiB tmpfs; the test needs root to mount it)."""

import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from dagster import DagsterEventType, materialize

from frd_assets.core.lora.search import SearchSettings, StudyStorageError, run_search
from frd_assets.core.lora.trial import TrainingConfig
from frd_assets.core.records import Record
from frd_assets.core.store import SEEDS_BUCKET, LocalStore, StoreFull
from frd_assets.definitions import ASSETS, build_resources
from frd_assets.defs.partitions import dataset_partitions
from frd_assets_tests.test_tune_resume import RECORDS
from frd_assets_tests.test_workers import running_trial_with_worker

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def test_a_study_database_dropped_mid_search_is_one_line_naming_it_without_its_password(
        tmp_path, tiny_model_dir, postgres_db):
    # The server trusts local connections, so the password is never checked: it is here to be hidden.
    storage = f"postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:5432/{postgres_db}"
    records = [Record(f"r{i}", r["instruction"], "", r["output"]) for i, r in enumerate(RECORDS[:16])]

    def drop_once_a_trial_trains():
        deadline = time.monotonic() + 300
        while running_trial_with_worker(postgres_db) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {postgres_db} WITH (FORCE)")

    dropper = threading.Thread(target=drop_once_a_trial_trains)
    dropper.start()
    try:
        with pytest.raises(StudyStorageError) as raised:
            run_search(records, base_model=str(tiny_model_dir), n_trials=50, storage_url=storage, study_name="lost",
                       work_dir=tmp_path / "work", out_dir=tmp_path / "out",
                       training=TrainingConfig(epochs=4, batch_size=2, evals_per_trial=1),
                       settings=SearchSettings(pruner="none"), print_fn=lambda _: None)
    finally:
        dropper.join()
        with psycopg.connect(ADMIN, autocommit=True) as conn:  # for the fixture, which drops it again
            conn.execute(f"CREATE DATABASE {postgres_db}")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("study lost: its storage postgresql+psycopg://postgres:***@127.0.0.1:5432/")
    assert postgres_db in message and "s3cr3t-pw" not in message
    assert "failed mid-search" in message and "launch again" in message


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: writes beyond it fail with ENOSPC from the kernel, as on a full disk."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_store_write_on_a_full_disk_is_one_line_naming_the_key_and_the_free_space(full_disk):
    store = LocalStore(full_disk)
    store.put_bytes("datasets", "small.bin", b"x" * 1024)
    with pytest.raises(StoreFull) as raised:
        store.put_bytes("datasets", "big.bin", b"x" * 1024 * 1024)
    message = str(raised.value)
    assert "\n" not in message
    assert f"no space left writing {store.uri('datasets', 'big.bin')} (1,048,576 bytes)" in message
    assert " bytes free on the disk of " in message and "FRD_LOCAL_STORE" in message
    assert not [p for p in (full_disk / "datasets").iterdir() if p.name.startswith(".tmp-")]  # no partial file left


def test_a_full_disk_fails_the_step_once_without_retries(full_disk, dagster_instance, first_sample_tasks_bytes,
                                                           tiny_model_dir):
    """generated_dataset, whose retry policy would redo the teacher's rounds, on a store whose disk fills
    after seed_dataset was written: its first checkpoint write fails the step at once, in one line."""
    dataset_id = str(uuid.uuid4())
    env = {"FRD_LOCAL_STORE": str(full_disk), "TEACHER_MODEL": str(tiny_model_dir)}
    LocalStore(full_disk).put_bytes(SEEDS_BUCKET, f"{dataset_id}.jsonl", first_sample_tasks_bytes)
    dagster_instance.add_dynamic_partitions(dataset_partitions.name, [dataset_id])
    assert materialize(ASSETS[:1], partition_key=dataset_id, instance=dagster_instance,
                       resources=build_resources(env)).success
    filler = os.open(full_disk / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the disk, as another writer
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(filler, b"\0" * 4096)
    finally:
        os.close(filler)
    generation = {"num_instructions": 4, "max_rounds": 2, "prompts_per_round": 2, "max_new_tokens_instructions": 32,
                  "max_new_tokens_instance": 32, "checkpoint_every": 1}
    result = materialize(ASSETS[:2], selection=ASSETS[1:2], partition_key=dataset_id, instance=dagster_instance,
                         resources=build_resources(env), raise_on_error=False,
                         run_config={"ops": {"generated_dataset": {"config": generation}}})
    assert not result.success
    events = [e.dagster_event for e in dagster_instance.all_logs(result.run_id) if e.dagster_event]
    assert [e for e in events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY] == []
    [failure] = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    description = failure.step_failure_data.user_failure_data.description
    assert "\n" not in description
    assert description.startswith(f"no space left writing {full_disk}/datasets/{dataset_id}/generation_checkpoint.json")
    assert "bytes free on the disk of" in description
