"""Trial processes forked from a server that imported torch, transformers, peft and optuna once.

Why: an exec'd trial process spends 4.6 to 5.4 s of CPU importing that stack before its first step
(measured on 2 cores), as long as the whole training of a small trial, so a search of short trials paid
as much for imports as for training, and a pruned trial saved little. A fork of an interpreter that has
imported them starts in milliseconds, and keeps what a process per trial is for: a leak, a crash or a
fragmented allocator dies with its trial, and the server never trains, so nothing one trial does reaches
the next.

The server is a fresh interpreter (`python -m frd_assets.core.lora.fork_server FD MODULE:FUNCTION`), not a
fork of the pool, so the pool's threads and state never reach a trial. It is single-threaded, which is
what makes forking it safe. It is given its entry point (pool.py passes worker.main) as an importable
target, imports it once and calls it in each forked child with the trial's argv: so this module imports
nothing of the LoRA search. Python's multiprocessing "forkserver" would do the same but makes every child
import the caller's __main__ again (the Dagster step's entry point, say), which is both slow and not ours to run.

Protocol, over one AF_UNIX SOCK_SEQPACKET pair (each message whole):
  pool -> server: JSON {"argv": [...], "env": {...}} with one file descriptor attached, the trial's stdout
  server -> pool: {"started": pid} in answer, and {"exit": pid, "code": c} whenever a trial ends (c as
  subprocess gives it: negative for a signal)
The server exits when the pool's end closes (the pool ended or died); trials then running finish on their
own, like the orphans of exec'd workers, and pool.py's recovery applies to them alike.

CPU only: a process that initialised CUDA cannot hand it to forked children, and whether an import touches
CUDA is each library's business, so with GPUs every trial stays a freshly exec'd interpreter (pool.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, Sequence

# Imported once by the server, with the entry point's module. Model classes (modeling_llama, say) are left
# to the first trial that needs them: they depend on the base model. Optuna imports its RDB storage stack
# (SQLAlchemy, and alembic to check the schema's version) only when a storage is opened, which every trial
# does: about 0.5 s of each trial's start on 2 cores, as long as the training of a trial pruned at its
# first report, so it is imported here once instead.
PRELOAD = ("torch", "transformers", "peft", "optuna", "sqlalchemy.orm", "alembic.command", "alembic.config",
           "alembic.migration", "alembic.script")
_MAX_MESSAGE = 1 << 20  # a request carries the slot's environment: well under this


def available(gpus: list[str]) -> bool:
    """Whether trials on this machine are forked: no GPU visible, and a platform that forks."""
    return not gpus and hasattr(os, "fork") and hasattr(socket, "send_fds")


def entry_target(entry: Callable[[list[str]], int]) -> str:
    """`module:function` of a module-level function, as the server imports it."""
    module, name = getattr(entry, "__module__", None), getattr(entry, "__qualname__", "")
    if not module or module == "__main__" or not name.isidentifier():
        raise ValueError(f"the fork server's entry point must be a module-level function of an importable "
                         f"module, not {entry!r}")
    return f"{module}:{name}"


def _import_entry(target: str) -> Callable[[list[str]], int]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class ForkServer:
    """The pool's side: starts the server, asks it for trial processes, learns how they ended. Each trial
    process runs entry(argv), with the argv that spawn passes."""

    def __init__(self, entry: Callable[[list[str]], int], *, hidden: Sequence[str] = ()) -> None:
        """hidden: top-level packages the server and its trials must not import (see hide_packages)."""
        target = entry_target(entry)
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._server = subprocess.Popen(
                [sys.executable, "-m", "frd_assets.core.lora.fork_server", str(theirs.fileno()), target, *hidden],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            )
        self._lock = threading.Lock()  # one request at a time: answers come back in order
        self._changed = threading.Condition()
        self._started: list[int] = []
        self._exits: dict[int, int] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._control.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self._closed = True
                    self._changed.notify_all()
                    return
                message = json.loads(data)
                if "started" in message:
                    self._started.append(int(message["started"]))
                else:
                    self._exits[int(message["exit"])] = int(message["code"])
                self._changed.notify_all()

    def spawn(self, argv: list[str], env: dict[str, str]) -> "ForkedProcess":
        mine, theirs = socket.socketpair()
        with self._lock, theirs:
            request = json.dumps({"argv": list(argv), "env": dict(env)}).encode()
            socket.send_fds(self._control, [request], [theirs.fileno()])
            with self._changed:
                if not self._changed.wait_for(lambda: self._started or self._closed, timeout=120):
                    raise RuntimeError("the trial fork server did not answer within 120 s")
                if not self._started:
                    raise RuntimeError(f"the trial fork server ended ({_exit_of(self._server)})")
                pid = self._started.pop(0)
        stdout = mine.makefile("r", encoding="utf-8", errors="replace")
        mine.close()  # the file keeps the socket open until the file itself is closed
        return ForkedProcess(self, pid, stdout)

    def exit_code(self, pid: int) -> int | None:
        with self._changed:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._closed, timeout=timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        """Ends the server (trials still running go on, as orphans)."""
        try:
            # shutdown, not only close: the reader thread's pending recv keeps a closed socket alive, and
            # the server would not see the end.
            self._control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._control.close()
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


def _exit_of(process: subprocess.Popen) -> str:
    code = process.poll()
    return "still running" if code is None else f"exit status {code}"


class ForkedProcess:
    """A forked trial with the part of subprocess.Popen's surface the pool uses: pid, stdout (text lines
    until the trial ends), poll, wait, terminate, kill."""

    def __init__(self, server: ForkServer, pid: int, stdout) -> None:
        self._server, self.pid, self.stdout = server, pid, stdout

    def poll(self) -> int | None:
        return self._server.exit_code(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        code = self._server.wait_exit(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout or 0)
        return code

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


# --- the server ---------------------------------------------------------------------------------------


def _run_trial(control: socket.socket, entry: Callable[[list[str]], int], argv: list[str], env: dict[str, str],
               out_fd: int, *, inherited: Sequence[int] = ()) -> None:
    """In the forked child: the slot's environment, stdout and stderr into the pool's socket, then
    entry(argv), as the entry module's `python -m` would run it. Never returns."""
    import traceback

    code = 1
    try:
        control.close()
        for fd in inherited:  # the server's handles on the other trials: not this one's business
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        code = entry(argv) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def hide_packages(names: Sequence[str]) -> None:
    """Makes the named top-level packages unimportable in this process, as if not installed.

    Why: peft imports bitsandbytes whenever it is installed, and bitsandbytes' import wraps its kernels in
    torch.compile, which imports torch's compiler stack: 0.7 s of the server's 3.5 s start on 2 cores, paid by
    every search before its first trial, for a package only a QLoRA job (quantization nf4) uses. A None entry
    in sys.modules is Python's own way to block an import: `import` raises ImportError and
    importlib.util.find_spec returns None, which is how peft and transformers ask whether it is installed."""
    for name in names:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"cannot hide {name}: it is imported already")
        sys.modules[name] = None  # type: ignore[assignment]


def preload(target: str) -> Callable[[list[str]], int]:
    """Imports the stack and the entry point once, then freezes what they made for the garbage collector.

    Why freeze: each trial inherits some millions of objects from these imports (torch, transformers, and
    through peft bitsandbytes, which brings torch's compiler stack). Left to the collector, every full
    collection in a trial walks all of them (the trial's own gc.collect took 0.2 s on 2 cores, a pruned
    trial's training takes about 0.8 s) and writes their GC headers, which copies the server's pages into
    each trial. gc.freeze moves them to a permanent generation the collector skips, as Python's docs advise
    for a process that forks without exec."""
    import gc
    import importlib

    gc.disable()  # no collection between the imports and the freeze: it would leave holes in shared pages
    for name in PRELOAD:
        importlib.import_module(name)
    entry = _import_entry(target)
    gc.freeze()
    gc.enable()  # the children inherit it enabled: a trial collects its own garbage
    return entry


def serve(control_fd: int, target: str, hidden: Sequence[str] = ()) -> None:
    hide_packages(hidden)
    entry = preload(target)
    control = socket.socket(fileno=control_fd)
    children: dict[int, int | None] = {}  # pid -> its pidfd (None where the platform has none)
    while True:
        # A trial's end wakes the loop through its pidfd (Linux), so the pool can start the next trial at
        # once: with a fixed poll every trial waited half the period for nothing, a share of a short (pruned)
        # trial's time. Elsewhere, short waits. Either way no SIGCHLD handler: the loop never runs Python
        # code inside a signal handler between a fork and its bookkeeping.
        pidfds = [fd for fd in children.values() if fd is not None]
        timeout = 0.2 if len(pidfds) < len(children) else None
        readable, _, _ = select.select([control, *pidfds], [], [], timeout)
        if control in readable:
            try:
                message, fds, _flags, _addr = socket.recv_fds(control, _MAX_MESSAGE, 1)
            except OSError:
                message, fds = b"", []
            if not message:  # the pool closed its end: no more trials
                for fd in fds:
                    os.close(fd)
                return
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _run_trial(control, entry, request["argv"], request["env"], fds[0], inherited=pidfds)
            for fd in fds:
                os.close(fd)
            children[pid] = _pidfd(pid)
            control.send(json.dumps({"started": pid}).encode())
        for pid, pidfd in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[pid]
                if pidfd is not None:
                    os.close(pidfd)
                control.send(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _pidfd(pid: int) -> int | None:
    """A file descriptor that turns readable when the child ends (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    try:
        serve(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the pool went away while we reported: nobody is left to tell
    os._exit(0)  # skip the interpreter's teardown of torch and friends (about a second): nothing to flush
