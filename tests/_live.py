"""Run an ASGI app under a real uvicorn server on a free local port, for end-to-end tests.

    with running_server(app) as base_url:                      # e.g. "http://127.0.0.1:53127"
        httpx.get(base_url + "/health")

    # When the app must know its own URL (issuer URLs, resource URLs), pass a factory:
    with running_server(factory=lambda base_url: build_app(base_url)) as base_url:
        ...

The port is bound *before* the app is built, so there is no window in which another process
can take it. The server runs its own event loop in a daemon thread, so the context manager
works from sync and async tests alike; leaving the block stops it (and surfaces a crash).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

__all__ = ["running_server", "serve", "free_port", "stop_process"]

ASGIApp = Callable[..., Any]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (for a subprocess that binds it itself; racy by nature)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int | None:
    """SIGTERM ``proc`` and wait for it; kill it when it does not drain in ``timeout`` seconds.

    Returns its exit status (None only if even the kill was not reaped in time).
    """
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    app: ASGIApp | None = None,
    *,
    factory: Callable[[str], ASGIApp] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` (or ``factory(base_url)``) and yield its base URL, without a trailing slash.

    Args:
        app: the ASGI app; give exactly one of ``app`` and ``factory``.
        factory: builds the app from the base URL it will be served at.
        host: the interface to bind; an IPv6 literal is bracketed in the URL.
        port: 0 picks a free port.
        startup_timeout: seconds to wait for startup (including the app's lifespan).
        shutdown_timeout: seconds to wait for a graceful stop before forcing it.
        **config: extra ``uvicorn.Config`` options (e.g. ``lifespan="on"``, ``ssl_keyfile``).

    Raises:
        TypeError: unless exactly one of ``app`` and ``factory`` is given.
        RuntimeError: when the server fails to start or to stop in time.
    """
    if (app is None) == (factory is None):
        raise TypeError("give exactly one of app and factory")

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        scheme = "https" if config.get("ssl_certfile") else "http"
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        base_url = f"{scheme}://{url_host}:{bound_port}"
        asgi_app = app if app is not None else factory(base_url)  # type: ignore[misc]

        config.setdefault("log_level", "warning")
        config.setdefault("log_config", None)  # don't let uvicorn reconfigure the test process's logging
        config.setdefault("timeout_graceful_shutdown", shutdown_timeout / 2)
        server = uvicorn.Server(uvicorn.Config(asgi_app, **config))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # noqa: BLE001 - includes uvicorn's sys.exit on startup failure
                failure.append(exc)

        thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"server on {base_url} failed to start") from (failure[0] if failure else None)
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(shutdown_timeout)
                raise RuntimeError(f"server on {base_url} did not start within {startup_timeout}s")
            time.sleep(0.01)

        try:
            yield base_url
        finally:
            server.should_exit = True
            thread.join(shutdown_timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(shutdown_timeout)
            if thread.is_alive():
                raise RuntimeError(f"server on {base_url} did not stop within {2 * shutdown_timeout}s")
            if failure and not isinstance(failure[0], SystemExit):
                raise RuntimeError(f"server on {base_url} crashed") from failure[0]
    finally:
        sock.close()


serve = running_server
