"""Stopping the servers tests start in their own process groups (a webserver and its code server, say)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Sequence


def stop_process_groups(procs: Sequence[subprocess.Popen], *, timeout: float) -> None:
    """SIGTERM to every group first, so they shut down side by side; SIGKILL to one still up after timeout."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):  # its children too, even if the leader died
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
