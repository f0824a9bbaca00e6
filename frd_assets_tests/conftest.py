"""Session fixtures: a real S3 server, a tiny trained chat model, stores and Dagster instances."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from frd_assets.core.seeds import sample_seed_bytes as sample_seed_file_bytes
from frd_assets.core.threads import THREADS_ENV, available_cores
from frd_assets_tests.s3_server import start_s3_server, stop_s3_server

REPO = Path(__file__).resolve().parents[1]

# The suite runs one test at a time, so its in-process runs may use every core. Unset, the first asset to
# run would set a run's share (half the cores on a CPU-only machine, core/threads.py) in os.environ, and
# every later test and the processes it starts would inherit that.
os.environ.setdefault(THREADS_ENV, str(available_cores()))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop_s3_server(server)


@pytest.fixture
def s3_store(s3_server):
    from frd_assets.core.store import S3Store

    return S3Store.connect(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)


@pytest.fixture
def local_store(tmp_path):
    from frd_assets.core.store import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request):
    """Each store test runs on both backends."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Built once per code version into the git-ignored cache, so re-runs skip the few seconds of training."""
    from frd_assets_tests.tiny_model import build_tiny_chat_model

    sources = [REPO / "frd_assets_tests" / "tiny_model.py", REPO / "frd_assets" / "core" / "generation" / "prompts.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    folder = REPO / ".cache" / "test-models" / f"tiny-chat-{digest}"
    if not (folder / "config.json").exists():
        staging = tmp_path_factory.mktemp("tiny-model") / "model"
        build_tiny_chat_model(staging)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not (folder / "config.json").exists():
            os.replace(staging, folder)
    return folder


@pytest.fixture
def dataset_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def dagster_instance(tmp_path):
    from dagster import DagsterInstance

    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


@pytest.fixture
def sample_seed_bytes() -> bytes:
    return sample_seed_file_bytes()


# The sample seed's first 42 tasks (it was 42 tasks long until the demo needed 22 test tasks): a smaller
# seed for tests whose tiny teacher writes lists only after prompts like the ones it was tuned against, or
# whose store is a 64 KiB disk.
FIRST_SAMPLE_TASKS = 42


@pytest.fixture
def first_sample_tasks_bytes(sample_seed_bytes) -> bytes:
    return b"".join(sample_seed_bytes.splitlines(keepends=True)[:FIRST_SAMPLE_TASKS])


@pytest.fixture
def postgres_db():
    """A scratch database on the machine's PostgreSQL (127.0.0.1:5432, trust auth), dropped afterwards."""
    import psycopg

    name = f"frd_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        yield name
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def server(tiny_model_dir, tmp_path_factory):
    """The tiny model served by a real `transformers serve` (OpenAI-compatible): the judge's and the gate's
    endpoint tests share one server, started once."""
    from frd_assets_tests.openai_server import start_openai_server, stop, wait_ready

    proc, url = start_openai_server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    wait_ready(proc, url)
    yield url
    stop(proc)


# An instance configured as shipped (the embedded dagster.yaml: the project's coordinator and launcher), and
# a GraphQL context on the workspace over it: test_routing.py and test_coordinator.py launch runs through it.
@pytest.fixture
def instance(tmp_path):
    from dagster import DagsterInstance

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the embedded default, as shipped
    with DagsterInstance.from_config(str(home)) as inst:
        yield inst


@pytest.fixture
def graphql(instance, tmp_path, monkeypatch):
    from dagster_graphql.test.utils import define_out_of_process_context

    monkeypatch.setenv("FRD_LOCAL_STORE", str(tmp_path / "store"))
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        yield context
