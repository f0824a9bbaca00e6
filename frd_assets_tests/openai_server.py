"""OpenAI-compatible endpoints for tests: the real `transformers serve` over a local model folder, and a
small JSON server for what a real server will not do (answer in a set language, refuse a parameter)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_openai_server(model_dir: Path, log_path: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    exe = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_ready(proc: subprocess.Popen, base_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    health = base_url.removesuffix("/v1") + "/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}")
        try:
            if requests.get(health, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"transformers serve not ready at {health} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def json_endpoint(answer: Callable[[dict], tuple[int, dict]]) -> Iterator[str]:
    """An HTTP server on a free port, in a thread, answering each POSTed JSON body with answer(body) ->
    (status, JSON payload); yields its base URL ending in /v1, as an OpenAI client is given it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            status, payload = answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep pytest's output to the test's own
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/v1"
    finally:
        http.shutdown()
        http.server_close()
