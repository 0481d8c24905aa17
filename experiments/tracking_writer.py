"""The tracker's MLflow client, in a process of its own.

A run's writes (candidate child runs, datasets, prompts, tables, traces) are SQLAlchemy work:
seconds of CPU per compile. In the compile's process that CPU competes with the compile for
the interpreter lock, however the writes are queued. :class:`WriterProcess` starts a Python
process that holds the real ``MlflowClient``; :class:`RemoteClient` stands in for it in the
tracker's writes, and each of its method calls runs there: the arguments are pickled over a
pipe, the call runs on the other core, and the result (or the error) comes back to the caller,
which waits for it. So a write keeps its order and its files (a temporary file it names still
exists while the call runs).

``RemoteClient.call(fn, *args)`` runs a whole function ``fn(client, *args)`` there instead
(``fn`` at module level): for a write that needs the client's live objects (MLflow's trace
spans) or does its own CPU-heavy work.

One writer process serves every tracker of a process (:func:`shared_process`, started on first
use, whatever the tracking URIs: each call names its own), so its start-up (importing MLflow
and opening the store: seconds, on the other core; ``pipec bench overhead`` measures it) is paid
once per process, like an import. It ends when
its input closes: when this process exits (``kill -9`` included), after the calls it has
already received.

Run as ``python -m experiments.tracking_writer`` by :class:`WriterProcess`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, BinaryIO

__all__ = ["RemoteClient", "WriterGoneError", "WriterProcess", "absolute_uri", "call_with", "shared_process"]

_HEADER = struct.Struct("<Q")
# Calls run at once in the writer process: the tracker's writer thread and its side threads.
_THREADS = 4


class WriterGoneError(RuntimeError):
    """The writer process has exited: the call was not made, or its outcome is unknown."""


class RemoteError(RuntimeError):
    """An error raised by a call in the writer process that could not be sent back as itself."""


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_message(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


class WriterProcess:
    """The writer process and the pipe to it; thread-safe."""

    def __init__(self) -> None:
        # Its stdout carries the replies; its stderr is ours (MLflow's log lines). It imports what
        # this process can (a write's function is sent by name): our module path, made absolute.
        path = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "experiments.tracking_writer"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                      env={**os.environ, "PYTHONPATH": path})
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read_replies, name="pipec-tracking-replies", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._gone is None and self._proc.poll() is None

    def call(self, uris: tuple[str, str | None], target: str | Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        """Runs ``client.<target>(*args, **kwargs)`` (or ``target(client, *args, **kwargs)``) there,
        with the client of ``uris`` (tracking URI, registry URI)."""
        payload = pickle.dumps((uris, target, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        future: Future = Future()
        with self._send_lock:
            if self._gone is not None:
                raise WriterGoneError(self._gone)
            request = next(self._ids)
            self._pending[request] = future
            try:
                _write_message(self._proc.stdin, _HEADER.pack(request) + payload)
            except (BrokenPipeError, OSError, ValueError) as exc:
                self._pending.pop(request, None)
                raise WriterGoneError(f"the MLflow writer process is gone ({exc})") from exc
        return future.result()

    def _read_replies(self) -> None:
        stream = self._proc.stdout
        try:
            while True:
                header = _read_exact(stream, _HEADER.size)
                body = _read_exact(stream, _HEADER.unpack(header)[0]) if header else None
                if body is None:
                    break
                future = self._pending.pop(_HEADER.unpack(body[:_HEADER.size])[0], None)
                if future is None:
                    continue
                try:
                    ok, value = pickle.loads(body[_HEADER.size:])
                except Exception as exc:  # a result this process cannot load: that call fails, not the pipe
                    future.set_exception(RemoteError(f"its reply could not be read ({type(exc).__name__}: {exc})"))
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_error(value))
        finally:  # the pipe closed (or broke): every call still waiting fails, none waits forever
            with self._send_lock:
                code = self._proc.poll()
                self._gone = ("the MLflow writer process exited" + (f" (status {code})" if code is not None else ""))
                pending, self._pending = self._pending, {}
            for future in pending.values():
                future.set_exception(WriterGoneError(self._gone))

    def close(self, timeout: float = 30.0) -> None:
        """Closes its input and waits for it to exit (it has answered every call by then).

        With no call unanswered there is nothing left to write, and it is stopped at once: a
        command that ends early (bad input) does not wait for it to finish importing MLflow.
        """
        with self._send_lock:
            idle = not self._pending
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if idle and self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)
        self._proc.stdout.close()


_shared: WriterProcess | None = None
_shared_lock = threading.Lock()


def shared_process() -> WriterProcess:
    """This process's writer process, started on first use (and again if it has died).

    Raises:
        OSError: When it cannot be started.
    """
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive:
            _shared = WriterProcess()
        return _shared


@atexit.register
def _close_shared() -> None:
    if _shared is not None:
        _shared.close()


def absolute_uri(uri: str | None) -> str | None:
    """``uri`` with a relative store path made absolute: the writer process serves callers in
    any working directory (``sqlite:///mlflow.db``, MLflow's default, is relative to it)."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, query, rest = uri[len("sqlite:///"):].partition("?")
        return "sqlite:///" + os.path.abspath(path) + query + rest if path and path != ":memory:" else uri
    scheme = uri.partition(":")[0] if ":" in uri else ""
    if scheme == "" and not uri.startswith(("databricks", "uc")):  # a bare path: a local store
        return os.path.abspath(uri)
    if scheme == "file" and not uri.startswith("file:///"):
        return "file://" + os.path.abspath(uri[len("file:"):].lstrip("/") if uri.startswith("file://") else
                                          uri[len("file:"):])
    return uri


class RemoteClient:
    """An ``MlflowClient`` of ``tracking_uri`` whose method calls run in a :class:`WriterProcess`.

    Paths in the calls' arguments must be absolute (the writer process has its own working
    directory); the URIs are made so here.
    """

    def __init__(self, process: WriterProcess, tracking_uri: str, registry_uri: str | None = None) -> None:
        self._process = process
        self._uris = (absolute_uri(tracking_uri), absolute_uri(registry_uri))
        self.tracking_uri = tracking_uri

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(client, *args, **kwargs)`` in the writer process, with its real client."""
        return self._process.call(self._uris, fn, args, kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._process.call(self._uris, name, args, kwargs)

        method.__name__ = name
        return method


def call_with(client: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(client, ...)`` where the client lives: in the writer process for a :class:`RemoteClient`."""
    if isinstance(client, RemoteClient):
        return client.call(fn, *args, **kwargs)
    return fn(client, *args, **kwargs)


def _error(value: tuple[str, bytes | None]) -> BaseException:
    text, pickled = value
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    return RemoteError(text)


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    from mlflow.tracking import MlflowClient

    clients: dict[tuple[str, str | None], Any] = {}
    clients_lock, reply_lock = threading.Lock(), threading.Lock()
    # Some client calls (prompt links, trace export) go through MLflow's global URIs: they are
    # set to each call's own. Calls for the same URIs run at once; others wait their turn.
    turn = threading.Condition()
    state: dict[str, Any] = {"uris": None, "running": 0}

    def client_of(uris: tuple[str, str | None]) -> Any:
        with clients_lock:
            if uris not in clients:
                if len(clients) >= 8:  # the oldest first: a test suite's temporary stores come and go
                    clients.pop(next(iter(clients)))
                clients[uris] = MlflowClient(tracking_uri=uris[0], registry_uri=uris[1] or None)
            return clients[uris]

    def enter(uris: tuple[str, str | None]) -> None:
        with turn:
            turn.wait_for(lambda: state["uris"] == uris or state["running"] == 0)
            if state["uris"] != uris:
                mlflow.set_tracking_uri(uris[0])
                mlflow.set_registry_uri(uris[1] or uris[0])
                state["uris"] = uris
            state["running"] += 1

    def leave() -> None:
        with turn:
            state["running"] -= 1
            turn.notify_all()

    def handle(request: int, body: bytes) -> None:
        try:
            uris, target, args, kwargs = pickle.loads(body)
            client = client_of(uris)
            enter(uris)
            try:
                value = (target(client, *args, **kwargs) if callable(target)
                         else getattr(client, target)(*args, **kwargs))
            finally:
                leave()
            data = pickle.dumps((True, value), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # the caller gets it, as itself when it pickles
            try:
                pickled = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.loads(pickled)
            except Exception:
                pickled = None
            data = pickle.dumps((False, (f"{type(exc).__name__}: {exc}", pickled)), protocol=pickle.HIGHEST_PROTOCOL)
        with reply_lock:
            _write_message(replies, _HEADER.pack(request) + data)

    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="pipec-writer") as pool:
        while True:
            header = _read_exact(requests, _HEADER.size)
            body = _read_exact(requests, _HEADER.unpack(header)[0]) if header else None
            if body is None:
                break
            pool.submit(handle, _HEADER.unpack(body[:_HEADER.size])[0], body[_HEADER.size:])


def main() -> None:
    import signal

    # Ctrl-C reaches the whole process group: the compile's process handles it (it ends the run
    # KILLED through this process), so this one must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed here goes to stderr, never into the replies
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, replies)
    replies.flush()
    # Every call has been answered; MLflow's exit hooks (a second of waiting on its trace queue,
    # which the trace writes have already drained) are skipped.
    os._exit(0)


if __name__ == "__main__":
    main()
