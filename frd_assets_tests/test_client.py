"""FrdClient against real dagster-webserver processes: one started with `-m frd_assets.definitions` (its
code location is then "frd_assets.definitions", not workspace.yaml's "frd_assets") and one `--read-only`
on the same instance. Runs are queued, never executed: no daemon runs."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from frd_assets.client import CODE_LOCATION, PARTITION_KEYS, FrdClient, FrdClientError
from frd_assets_tests.openai_server import free_port
from frd_assets_tests.processes import stop_process_groups

REPO = Path(__file__).resolve().parents[1]


class RecordingClient(FrdClient):
    """The real client, keeping every query it sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def _query(self, query, variables):
        self.sent.append(query)
        return super()._query(query, variables)


def _serves_the_assets(port: int) -> bool:
    try:
        body = requests.post(f"http://127.0.0.1:{port}/graphql", json={
            "query": CODE_LOCATION, "variables": {"assetKey": {"path": ["seed_dataset"]}}}, timeout=2).json()
        return body["data"]["assetNodeOrError"]["__typename"] == "AssetNode"
    except (requests.RequestException, KeyError, TypeError, ValueError):
        return False


def _start_webserver(port: int, extra: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / "dagster-webserver")
    with open(log_path, "wb") as log:
        return subprocess.Popen([exe, "-h", "127.0.0.1", "-p", str(port), "-m", "frd_assets.definitions", *extra],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_serving(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not _serves_the_assets(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the webserver on {port} did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def webservers(tmp_path_factory):
    """{"write": port, "read_only": port}: two webservers of one instance."""
    tmp = tmp_path_factory.mktemp("webservers")
    home = tmp / "home"
    home.mkdir()
    # The embedded instance: a queued coordinator, so a launched run waits for a daemon that never comes.
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FRD_LOCAL_STORE": str(tmp / "store")}
    env.pop("MINIO_ENDPOINT", None)
    ports, procs = {}, []
    try:
        # One after the other: the first creates the instance's SQLite storage, which two at once would race on.
        for name, extra in (("write", []), ("read_only", ["--read-only"])):
            ports[name] = free_port()
            procs.append(_start_webserver(ports[name], extra, env, tmp / f"{name}.log"))
            _wait_serving(ports[name], procs[-1], tmp / f"{name}.log")
        yield ports
    finally:
        stop_process_groups(procs, timeout=20)  # each webserver with its code server


def test_the_client_finds_the_code_location_of_a_webserver_started_with_m(webservers):
    client = RecordingClient("127.0.0.1", webservers["write"])
    dataset_id = str(uuid.uuid4())

    run_id = client.launch(dataset_id, assets=["seed_dataset"])

    assert client.repository_selector == {"repositoryLocationName": "frd_assets.definitions",
                                          "repositoryName": "__repository__"}
    assert len(run_id) == 36
    assert dataset_id in client.partitions()
    client.launch(dataset_id, assets=["seed_dataset", "generated_dataset"])
    assert client.sent.count(CODE_LOCATION) == 1  # asked once per client
    statuses = {s.asset: s for s in client.status(dataset_id)}
    assert statuses["generated_dataset"].run_status == "QUEUED"  # no daemon: the run waits
    assert statuses["seed_dataset"].run_id is not None


# A canonical id A, and what a hand or a script makes of it: every one would otherwise become a partition whose
# store keys land on A's objects (A/ and /A) or outside the dataset prefix.
A = "0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"
NOT_IDS = [f"{A}/", f"/{A}", f"{A}/.", A.upper(), f" {A}", f"{A}\n", "../../x/y", ""]


@pytest.mark.parametrize("value", NOT_IDS, ids=repr)
def test_a_value_that_is_not_a_dataset_id_is_refused_before_anything_is_sent(webservers, value):
    before = FrdClient("127.0.0.1", webservers["write"]).partitions()
    client = RecordingClient("127.0.0.1", webservers["write"])
    for call in (client.launch, client.add_partition, client.status):
        with pytest.raises(FrdClientError, match="is not a dataset id") as raised:
            call(value)
        assert repr(value) in str(raised.value)
    assert client.sent == []
    assert FrdClient("127.0.0.1", webservers["write"]).partitions() == before


def test_an_explicit_location_is_used_as_given(webservers):
    client = RecordingClient("127.0.0.1", webservers["write"], location="frd_assets", repository="__repository__")
    with pytest.raises(FrdClientError, match="no dynamic partitions|does not contain a dynamic partitions") as raised:
        client.add_partition(str(uuid.uuid4()))
    assert "code location 'frd_assets'" in str(raised.value)  # the message names the selector it used
    assert CODE_LOCATION not in client.sent


def test_a_read_only_webserver_is_named_as_such(webservers):
    dataset_id = str(uuid.uuid4())
    with pytest.raises(FrdClientError, match="is read-only") as raised:
        FrdClient("127.0.0.1", webservers["read_only"]).launch(dataset_id)
    assert f":{webservers['read_only']}/graphql" in str(raised.value)
    assert dataset_id not in FrdClient("127.0.0.1", webservers["write"]).partitions()


def test_status_lists_partitions_only_for_a_dataset_with_no_run(webservers):
    """The partition list grows with every dataset ever uploaded (issue 23): status of a dataset that has a run
    answers from its own runs and materializations; only a bare partition or an unknown id needs the list."""
    launched, bare, unknown = (str(uuid.uuid4()) for _ in range(3))
    FrdClient("127.0.0.1", webservers["write"]).launch(launched, assets=["seed_dataset"])
    FrdClient("127.0.0.1", webservers["write"]).add_partition(bare)

    client = RecordingClient("127.0.0.1", webservers["write"])
    statuses = {s.asset: s for s in client.status(launched)}
    assert statuses["seed_dataset"].run_status == "QUEUED"
    assert PARTITION_KEYS not in client.sent

    assert all(s.run_id is None and s.materialized_at is None for s in client.status(bare))
    assert client.sent.count(PARTITION_KEYS) == 1
    with pytest.raises(FrdClientError, match=f"dataset {unknown} is not a partition here"):
        client.status(unknown)
