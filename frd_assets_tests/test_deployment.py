"""What can be checked of the deployment without a Docker engine: compose config, image, instance config."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def code_env_reads() -> set[str]:
    """Every environment variable the package reads by name."""
    names = set()
    for path in (REPO / "frd_assets").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"""(?:env|environ)(?:\.get)?\(\s*["']([A-Z][A-Z0-9_]+)["']""", text))
        names |= set(re.findall(r"""(?:env|environ)\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""", text))
        names |= set(re.findall(r"""EnvVar\(\s*["']([A-Z][A-Z0-9_]+)["']""", text))
    return names


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == {"minio", "create-buckets", "postgres", "redis", "code-server",
                                        "dagster-webserver", "dagster-daemon", "cpu-worker", "gpu-worker"}


def test_the_buckets_created_at_start_are_the_ones_the_code_uses(compose):
    from frd_assets.core.store import BUCKETS

    script = " ".join(compose["services"]["create-buckets"]["entrypoint"])
    assert sorted(re.findall(r"local/([a-z-]+)", script)) == sorted(BUCKETS)
    assert compose["services"]["code-server"]["depends_on"]["create-buckets"] == {
        "condition": "service_completed_successfully"}


def test_workers_consume_the_queues_the_launcher_sends_to(compose):
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    queues = {name: spec["config"]["queue"] for name, spec in instance["run_launcher"]["config"]["queues"].items()}
    assert queues == {"cpu": "cpu_queue", "gpu": "gpu_queue"}
    for name, queue in (("cpu-worker", "cpu_queue"), ("gpu-worker", "gpu_queue")):
        cmd = compose["services"][name]["command"]
        assert cmd[:3] == ["celery", "-A", "frd_assets.celery_app"] and cmd[cmd.index("-Q") + 1] == queue
        __import__(cmd[2])
        env = compose["services"][name]["environment"]
        assert {"REDIS_HOST", "REDIS_PORT", "MINIO_ENDPOINT"} <= set(env)
    gpu = compose["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "deploy" not in compose["services"]["cpu-worker"]


def test_services_run_commands_the_image_has(compose):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert compose["services"]["code-server"]["build"] == "."
    for name in ("code-server", "dagster-webserver", "dagster-daemon", "cpu-worker", "gpu-worker"):
        cmd = compose["services"][name]["command"]
        assert shutil.which(cmd[0], path=str(REPO / ".venv" / "bin")), f"{name}: {cmd[0]} is not installed"
        if "-m" in cmd:
            __import__(cmd[cmd.index("-m") + 1])
        if "-w" in cmd:
            assert (REPO / cmd[cmd.index("-w") + 1]).exists()
            assert "COPY deploy" in dockerfile
    assert "frd models prepare" in dockerfile and "torch==2.13.0" in dockerfile


def test_code_server_environment_matches_what_the_code_reads(compose):
    env = compose["services"]["code-server"]["environment"]
    reads = code_env_reads()
    for name in (
        "MINIO_ENDPOINT",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "LORA_MODEL_NAME",
        "LORA_N_TRIALS",
        "TEACHER_MODEL",
        "OPTUNA_STORAGE",
    ):
        assert name in reads, f"the code no longer reads {name}"
        assert name in env, f"code-server lacks {name}"
    unknown = {k for k in env if not k.startswith("DAGSTER_PG_")} - reads
    assert {"REDIS_HOST", "REDIS_PORT"} <= reads
    assert not unknown, f"compose sets variables the code never reads: {unknown}"


def test_instance_config_variables_are_set_for_every_dagster_service(compose):
    needed = set(re.findall(r"env: (\w+)", (REPO / "deploy" / "dagster.yaml").read_text()))
    for name in ("code-server", "dagster-webserver", "dagster-daemon", "cpu-worker", "gpu-worker"):
        assert needed <= set(compose["services"][name]["environment"]), name


def test_every_compose_variable_is_in_the_example_env_file():
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", text))
    example = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= example, used - example
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_deployment_instance_config_runs_on_postgres(postgres_db, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    for k, v in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": postgres_db,
    }.items():
        monkeypatch.setenv(k, v)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("dataset_uuid", ["0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"])
        assert instance.get_dynamic_partitions("dataset_uuid") == ["0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"]
