"""Running untrusted work in a child process that can always be killed.

A helper process (the "zygote") is started once per host process. It imports the modules the
work needs (DuckDB, say) and then, for each request, forks a child that sets rlimits (no file
may be written, bounded address space and CPU time) and calls the target function. The zygote
kills the child at the deadline and sends the outcome back. Forking from the single-threaded
zygote is safe where forking the host (with LM, MLflow and evaluation threads) is not, and it
costs milliseconds where starting a fresh interpreter costs a fifth of a second.

Requests are served one at a time; the host serialises them with a lock. Where processes cannot
be forked (no ``os.fork``), :func:`run_sandboxed` raises :class:`SandboxUnavailable` and the
caller falls back to running in-process.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outcome", "SandboxUnavailable", "run_sandboxed", "serve"]

_HEADER = struct.Struct("!Q")
_ADDRESS_SPACE = 4 * 2**30  # generous for DuckDB; its own memory_limit is the tighter bound
_SLACK = 5.0  # seconds the host waits beyond the deadline for the zygote's own answer


class SandboxUnavailable(RuntimeError):  # noqa: N818 - a condition the caller handles, not a failure
    """No child process can be started here; the caller runs the work another way."""


@dataclass(frozen=True)
class Outcome:
    """What became of one sandboxed call.

    Attributes:
        status: ``ok`` (``value`` holds the return value), ``error`` (``value`` holds the
            exception the target raised, as text), ``timeout`` (killed at the deadline) or
            ``killed`` (the child died first, at an rlimit).
        value: The target's return value, or the error text.
        exit_code: The child's exit status or negated signal number otherwise.
    """

    status: str
    value: Any = None
    exit_code: int | None = None


def _write(fd: int, payload: Any) -> None:
    data = pickle.dumps(payload)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return None
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read(fd: int, deadline: float | None) -> Any:
    """One length-prefixed pickle; None on EOF or when the deadline passes first."""
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    return None if body is None else pickle.loads(body)


def _limit_child(timeout: float) -> None:
    import resource

    cpu = int(timeout) + 2
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # not one byte written to any file
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE, _ADDRESS_SPACE))


def _fork_one(target: str, args: tuple, timeout: float) -> Outcome:
    """In the zygote: runs ``target(*args)`` in a forked child, killed at ``timeout`` seconds."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the zygote's loop
        code = 0
        try:
            os.close(read_end)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray output must not corrupt the protocol
            _limit_child(timeout)
            module, _, name = target.partition(":")
            try:
                function = functools.reduce(getattr, name.split("."), importlib.import_module(module))
                reply = ("ok", function(*args))
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
            _write(write_end, reply)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        value = _read(read_end, time.monotonic() + timeout)
    finally:
        os.close(read_end)
    if value is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    if value is not None:
        return Outcome(value[0], value[1])
    exit_code = os.waitstatus_to_exitcode(status)
    return Outcome("timeout" if exit_code == -signal.SIGKILL else "killed", exit_code=exit_code)


def serve(preload: Sequence[str] = ()) -> None:
    """The zygote's loop: requests on stdin, outcomes on stdout, until stdin closes."""
    for module in preload:
        importlib.import_module(module)
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    while (request := _read(fd_in, None)) is not None:
        target, args, timeout = request
        _write(fd_out, _fork_one(target, args, timeout))


class _Zygote:
    """The host's handle on one zygote process; restarted after it fails."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        self.preload = preload
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.process is not None and self.process.poll() is None:
            return self.process
        root = str(Path(__file__).resolve().parent.parent)  # so the zygote imports this package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        code = f"import programs.sandbox as s; s.serve({list(self.preload)!r})"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        return self.process

    def _stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def call(self, target: str, args: tuple, timeout: float) -> Outcome:
        with self.lock:
            try:
                process = self._start()
                _write(process.stdin.fileno(), (target, args, timeout))
                outcome = _read(process.stdout.fileno(), time.monotonic() + timeout + _SLACK)
            except OSError as exc:
                self._stop()
                raise SandboxUnavailable(f"the sandbox process failed: {exc}") from exc
            if outcome is None:  # the zygote itself is stuck or gone: replace it next time
                self._stop()
                return Outcome("timeout")
            return outcome


@functools.cache
def _zygote(preload: tuple[str, ...]) -> _Zygote:
    # One zygote per host process and preload set, like multiprocessing's forkserver.
    return _Zygote(preload)


def run_sandboxed(target: str, args: tuple, *, timeout: float, preload: Sequence[str] = ()) -> Outcome:
    """Calls ``target`` (``"module:function"``) with ``args`` in a sandboxed child process.

    Args:
        target: The function to call, importable in the zygote (``"pathlib:Path.exists"`` for an
            attribute path); its arguments and its result must pickle.
        args: Its positional arguments.
        timeout: Seconds before the child is killed.
        preload: Modules the zygote imports once, so children start warm.

    Raises:
        SandboxUnavailable: Processes cannot be forked here.
    """
    if not hasattr(os, "fork"):
        raise SandboxUnavailable("os.fork is not available on this platform")
    return _zygote(tuple(preload)).call(target, args, timeout)
