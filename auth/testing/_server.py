"""`LocalIssuer`: an `Issuer` served over real HTTP on 127.0.0.1 by a small threaded server.

The standard library's ``ThreadingHTTPServer`` with bounds: at most `MAX_CONNECTIONS` connections
at once (more are closed on accept), an idle or slow connection is dropped after
`CONNECTION_TIMEOUT` seconds, a body longer than the form limit is never read. It needs no ASGI
server, so ``auth`` keeps its dependencies; a server that has one can mount `Issuer.app` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from .._request import is_loopback_host
from ._issuer import HttpRequest, Issuer
from ._keys import load_or_create_key
from ._oauth import MAX_FORM_BYTES
from ._registry import DEFAULT_AUDIENCE, DEFAULT_CLIENTS, Audience, RegisteredClient

__all__ = ["LocalIssuer", "is_loopback_host", "MAX_CONNECTIONS", "CONNECTION_TIMEOUT"]

log = logging.getLogger("auth.testing")

MAX_CONNECTIONS = 64
CONNECTION_TIMEOUT = 10.0


class LocalIssuer:
    """An `Issuer` served on a loopback port in a background thread; ``with`` it to start and stop.

    ::

        with LocalIssuer(audiences=["my-api"]) as issuer:       # http://127.0.0.1:<free port>
            settings = issuer.settings(resource_url="http://127.0.0.1:9000/mcp")
            token = issuer.mint("dev-read", audience="my-api")

    Args:
        host: the address to bind; loopback only unless ``allow_non_loopback``.
        port: 0 picks a free port.
        clients: who may ask for tokens (default: ``dev-full`` and ``dev-read``).
        audiences: the applications tokens are for; the first is the default.
        key: the signing key; or ``key_file``: load it from there, creating it on first use, so
            restarts and other processes sign and verify with the same key. Neither: a fresh key.
        token_lifetime: seconds from ``iat`` to ``exp``.
        app_tid: the tenant id in every token (default: derived from the key).
        allow_non_loopback: bind another address anyway (it is a development tool without TLS).
        clock: seconds since the epoch, for ``iat``/``exp``.
        logger: for issued and refused token requests.

    Raises:
        ValueError: a non-loopback ``host``, an unusable key file or another bad argument.
        OSError: the address cannot be bound, or the key file cannot be read or created.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clients: Iterable[RegisteredClient] = DEFAULT_CLIENTS,
        audiences: Iterable[Audience | str] = (DEFAULT_AUDIENCE,),
        key: rsa.RSAPrivateKey | None = None,
        key_file: str | os.PathLike[str] | None = None,
        token_lifetime: int = 3600,
        app_tid: str | None = None,
        allow_non_loopback: bool = False,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        if not allow_non_loopback and not is_loopback_host(host):
            raise ValueError(f"the local issuer binds only to a loopback address, got {host!r}")
        if key is not None and key_file is not None:
            raise ValueError("give key or key_file, not both")
        self.host = host.strip("[]")
        self.port = port
        self.key_file = Path(key_file) if key_file is not None else None
        self._options: dict[str, Any] = {
            "clients": tuple(clients),
            "audiences": tuple(audiences),
            "token_lifetime": token_lifetime,
            "app_tid": app_tid,
            "clock": clock,
            "logger": logger,
        }
        self._key = key
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.issuer: Issuer | None = None

    @property
    def url(self) -> str:
        """The issuer URL once started."""
        if self.issuer is None:
            raise RuntimeError("the local issuer is not running")
        return self.issuer.url

    def start(self) -> Issuer:
        """Bind, build the `Issuer` for the bound URL and serve it in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("already started")
        key = self._key if self._key is not None else load_or_create_key(self.key_file) if self.key_file else None
        server = _Server((self.host, self.port))
        try:
            port = server.server_address[1]
            url_host = f"[{self.host}]" if ":" in self.host else self.host
            issuer = Issuer(f"http://{url_host}:{port}", key=key, **self._options)
            server.issuer = issuer
        except BaseException:
            server.server_close()
            raise
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"local-issuer-{port}", daemon=True
        )
        thread.start()
        self._server, self._thread, self.issuer = server, thread, issuer
        return issuer

    def stop(self) -> None:
        """Stop serving, close every connection and the listening socket; idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join()
        server.close_connections()
        server.server_close()
        self._server = self._thread = None

    def __enter__(self) -> Issuer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.issuer: Issuer | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS look-up); the name is unused.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the connection budget: close at once
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            if request in self._open:
                self._open.discard(request)
                self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("local issuer: connection dropped", exc_info=True)  # a timeout or a reset; never fatal

    def close_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "btp-mcp-issuer"
    timeout = CONNECTION_TIMEOUT
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _answer(self) -> None:
        issuer = self.server.issuer
        if issuer is None:  # pragma: no cover - set before serving starts
            self.send_error(503)
            return
        body: bytes | None = b""
        if self.headers.get("Transfer-Encoding"):
            body, self.close_connection = None, True  # not read: chunked bodies are refused
        elif length := self.headers.get("Content-Length"):
            try:
                size = int(length)
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_FORM_BYTES:
                body, self.close_connection = None, True  # not read; the connection cannot be reused
            else:
                body = self.rfile.read(size)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), value)
        response = issuer.handle(HttpRequest(self.command, urlsplit(self.path).path, headers, body))
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only: a query string could hold anything a client put there.
        log.debug("local issuer: %s %s -> %s", self.command, urlsplit(self.path).path[:200], code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("local issuer: %s", format)  # the arguments may echo the request line
