"""A real HTTP server on 127.0.0.1 for tests (stdlib, one thread per request), and a free port.

The test decides every answer: ``answer(path, headers, body)`` returns the status and the bytes of
a JSON body. Used as the OpenAI-compatible endpoint of the preflight tests and as the proxy in
front of llama-cpp-python's server in the integration tests.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Answer", "free_port", "json_server"]

Answer = Callable[[str, Any, bytes], tuple[int, bytes]]
"""``(path, headers, body) -> (status, JSON bytes)`` for one POST request."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def json_server(answer: Answer) -> Iterator[str]:
    """Serves POST requests with ``answer`` on a free port inside the block.

    Yields:
        The server's base URL, ``http://127.0.0.1:PORT``.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, data = answer(self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
