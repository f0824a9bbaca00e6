"""The instance's storage is migrated once before the services that share it start (compose, `make dev`,
Helm), and `frd launch`/`frd status` tell a code location that failed to load from a webserver that lacks
the assets; against real dagster-webserver processes."""

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from frd_assets.client import FrdClient, FrdClientError
from frd_assets_tests.openai_server import free_port
from frd_assets_tests.processes import stop_process_groups

REPO = Path(__file__).resolve().parents[1]
SERVICES_ON_THE_INSTANCE = ("code-server", "dagster-webserver", "dagster-webserver-watch", "dagster-daemon",
                            "cpu-worker", "gpu-worker")


def test_compose_migrates_the_instance_once_before_its_services_start():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    migrate = services["dagster-migrate"]
    assert migrate["command"] == ["dagster", "instance", "migrate"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # The same instance settings as the services it prepares.
    assert migrate["environment"] == services["dagster-daemon"]["environment"]
    for name in SERVICES_ON_THE_INSTANCE:
        assert services[name]["depends_on"]["dagster-migrate"] == {"condition": "service_completed_successfully"}, name


def test_make_dev_migrates_before_dagster_dev():
    lines = (REPO / "Makefile").read_text().split("\ndev: install\n", 1)[1].split("\n\n", 1)[0].splitlines()
    migrate = next(i for i, line in enumerate(lines) if "dagster instance migrate" in line)
    assert migrate < next(i for i, line in enumerate(lines) if "dagster dev" in line)


def test_helm_enables_the_charts_migrate_job():
    assert yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())["migrate"] == {"enabled": True}


@contextlib.contextmanager
def webserver(tmp_path: Path, module_source: str):
    """A real dagster-webserver whose one code location is a module with the given source."""
    (tmp_path / "location_under_test.py").write_text(module_source)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "location_under_test", "working_directory": str(tmp_path),
        "location_name": "frd_assets"}}]}))
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    exe = str(Path(sys.executable).parent / "dagster-webserver")
    log_path = tmp_path / "webserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)], cwd=tmp_path,
                                env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _loaded(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the webserver did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        stop_process_groups([proc], timeout=20)


def _loaded(port: int) -> bool:
    """The webserver answers and has finished loading its location (successfully or not)."""
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    try:
        body = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=2).json()
        entries = body["data"]["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)
    except (requests.RequestException, KeyError, TypeError, ValueError):
        return False


def test_a_code_location_that_failed_to_load_is_named_with_its_error(tmp_path):
    source = 'raise RuntimeError("TEACHER_BASE_URL is not a URL: set it to http://host:port/v1")\n'
    with webserver(tmp_path, source) as port:
        for call in (lambda c: c.launch(str(uuid.uuid4())), lambda c: c.status(str(uuid.uuid4()))):
            with pytest.raises(FrdClientError) as raised:
                call(FrdClient("127.0.0.1", port))
            message = str(raised.value)
            assert "code location 'frd_assets'" in message and "failed to load" in message
            assert "TEACHER_BASE_URL is not a URL: set it to http://host:port/v1" in message
            assert "\n" not in message


def test_a_location_without_the_assets_is_told_apart_from_one_that_failed(tmp_path):
    with webserver(tmp_path, "from dagster import Definitions\n\ndefs = Definitions()\n") as port:
        with pytest.raises(FrdClientError, match="serves no seed_dataset asset") as raised:
            FrdClient("127.0.0.1", port).launch(str(uuid.uuid4()))
        assert "failed to load" not in str(raised.value)
