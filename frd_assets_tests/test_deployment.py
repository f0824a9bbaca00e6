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


def example_env() -> dict[str, str]:
    """.env.example as docker compose reads it (single-quoted values literally)."""
    pairs = (line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if line and not line.startswith("#"))
    return {name: value.strip("'") for name, value in pairs}


def compose_default(value: str) -> str:
    """'${VAR:-default}' -> 'default'; any other value as it is."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", value)
    return match.group(1) if match else value


def caddyfile_variables() -> dict[str, str | None]:
    """Every {$VAR} or {$VAR:default} the Caddyfile reads: name -> its default (None when it has none)."""
    text = (REPO / "deploy" / "caddy" / "Caddyfile").read_text()
    return {name: default or None for name, default in re.findall(r"\{\$(\w+)(?::([^}]*))?\}", text)}


class _RecordingEnv(dict):
    """An environment that remembers every variable asked of it, set or not."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def code_env_reads() -> set[str]:
    """Every environment variable the package reads: what the settings functions (core/settings.py, the
    thread budget, the Kubernetes trial workers) actually ask of an environment with an S3 endpoint set,
    plus any variable read by a literal name anywhere else in the package."""
    from frd_assets.core import settings
    from frd_assets.core.lora.kubernetes import KubernetesWorkers
    from frd_assets.core.threads import thread_budget

    env = _RecordingEnv(MINIO_ENDPOINT="http://minio:9000", MINIO_ACCESS_KEY="a", MINIO_SECRET_KEY="b")
    for read in (settings.store_settings, settings.teacher_settings, settings.judge_settings,
                 settings.lora_settings, settings.service_settings, settings.retention_settings,
                 settings.model_cache_dir, thread_budget,
                 KubernetesWorkers.from_env):
        read(env)
    names = set(env.asked)
    for path in (REPO / "frd_assets").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"""(?:env|environ)(?:\.get)?\(\s*["']([A-Z][A-Z0-9_]+)["']""", text))
        names |= set(re.findall(r"""(?:env|environ)\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""", text))
    return names


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == {"minio", "create-buckets", "postgres", "redis", "dagster-migrate",
                                        "code-server", "dagster-webserver", "dagster-daemon", "cpu-worker",
                                        "gpu-worker",
                                        "dagster-webserver-watch", "auth-proxy"}
    # `docker compose up -d` starts neither the read-only webserver nor the proxy: each has its profile.
    profiles = {name: s.get("profiles") for name, s in compose["services"].items() if s.get("profiles")}
    assert profiles == {"dagster-webserver-watch": ["watch"], "auth-proxy": ["auth"]}


def published(service: dict) -> list[tuple[str | None, str, str]]:
    """(host ip or None for every interface, host port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published")), str(port["target"])))
            continue
        parts = port.rsplit(":", 2) if port.count(":") >= 2 else [None, *port.split(":")]
        out.append((parts[0], parts[1], parts[2]))
    return out


def test_every_published_port_binds_loopback_except_the_auth_proxys(compose):
    seen = set()
    for name, service in compose["services"].items():
        if name == "auth-proxy":
            continue
        for host_ip, host_port, _ in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port} on every interface"
            seen.add(host_port)
    assert {"3000", "3001", "9000", "9001"} <= seen
    assert {target for _, _, target in published(compose["services"]["auth-proxy"])} == {"443", "80"}


def test_redis_keeps_the_queues_on_a_volume(compose):
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--dir") + 1] == "/data"
    [volume] = [v for v in redis["volumes"] if v.split(":")[1] == "/data"]
    assert volume.split(":")[0] in compose["volumes"]  # a named volume, not the container's own layer


def test_the_auth_proxy_fronts_the_webserver_with_the_caddyfile_in_the_repo(compose):
    proxy = compose["services"]["auth-proxy"]
    assert proxy["image"] == "caddy:2"
    assert "dagster-webserver" in proxy["depends_on"]
    config = proxy["command"][proxy["command"].index("--config") + 1]
    [mount] = [v for v in proxy["volumes"] if v.split(":")[1] == config]
    source, _, mode = mount.split(":")
    assert (REPO / source).resolve() == REPO / "deploy" / "caddy" / "Caddyfile" and mode == "ro"
    assert (REPO / source).is_file()

    variables = caddyfile_variables()
    assert {"FRD_PUBLIC_HOST", "FRD_AUTH_USER", "FRD_AUTH_PASSWORD_HASH", "FRD_WEBSERVER_UPSTREAM"} <= set(variables)
    example = example_env()
    for name in variables:
        assert name in proxy["environment"], f"auth-proxy does not set {name}, which the Caddyfile reads"
        assert name in example, f".env.example does not list {name}"
    # Where the proxy sends requests, by default: the webserver service on the port its command listens on.
    webserver = compose["services"]["dagster-webserver"]["command"]
    upstream = f"dagster-webserver:{webserver[webserver.index('-p') + 1]}"
    assert variables["FRD_WEBSERVER_UPSTREAM"] == upstream
    assert compose_default(proxy["environment"]["FRD_WEBSERVER_UPSTREAM"]) == upstream
    assert example["FRD_WEBSERVER_UPSTREAM"] == upstream


def test_the_watch_webserver_is_the_webserver_read_only(compose):
    webserver, watch = compose["services"]["dagster-webserver"], compose["services"]["dagster-webserver-watch"]
    assert watch["command"] == [*webserver["command"], "--read-only"]
    assert watch["environment"] == webserver["environment"] and watch["image"] == webserver["image"]
    assert published(watch) == [("127.0.0.1", "3001", "3000")]


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
    for name in ("code-server", "dagster-webserver", "dagster-webserver-watch", "dagster-daemon", "cpu-worker",
                 "gpu-worker"):
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
    for name in ("code-server", "dagster-webserver", "dagster-webserver-watch", "dagster-daemon", "cpu-worker",
                 "gpu-worker"):
        assert needed <= set(compose["services"][name]["environment"]), name


def test_every_compose_variable_is_in_the_example_env_file():
    text = (REPO / "docker-compose.yml").read_text().replace("$$", "")  # $$ is a literal $, not a variable
    used = set(re.findall(r"\$\{(\w+)(?:[:]?[-?+][^}]*)?\}", text)) | set(re.findall(r"\$(\w+)", text))
    assert used <= set(example_env()), used - set(example_env())
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_helm_keeps_the_webserver_inside_the_cluster_and_monitors_runs():
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    daemon = values["dagsterDaemon"]
    assert daemon["runMonitoring"]["enabled"] is True and daemon["runMonitoring"]["startTimeoutSeconds"] > 0
    assert daemon["runRetries"]["enabled"] is True and daemon["runRetries"]["maxRetries"] >= 1
    assert daemon["runRetries"]["retryOnAssetOrOpFailure"] is False


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
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("dataset_uuid", ["0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"])
        assert instance.get_dynamic_partitions("dataset_uuid") == ["0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10"]
        # A run no worker picks up fails after the start timeout, and is retried; an asset's own failure is not.
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == config["run_monitoring"]["start_timeout_seconds"]
        assert 60 <= instance.run_monitoring_start_timeout_seconds <= 3600
        assert instance.run_monitoring_poll_interval_seconds < instance.run_monitoring_start_timeout_seconds
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # ...and `dagster-daemon run` starts the daemons that do it.
        assert {"MONITORING", "EVENT_LOG_CONSUMER"} <= set(instance.get_required_daemon_types())
        # Monitoring fails a run that waits STARTING in Redis: no queue may let more runs through than it
        # has workers (one --pool solo worker each in docker-compose).
        limits = {c["value"]: c["limit"] for c in config["run_coordinator"]["config"]["tag_concurrency_limits"]
                  if c["key"] == "frd/queue"}
        assert limits == {"cpu": 1, "gpu": 1}
