"""Bounded load test: concurrent clients with good and bad tokens against ``python -m server`` (issue 7).

    python -m bench.load                                        # CI size: 100 clients, 1500 requests, 60 s limit
    python -m bench.load --restart                              # the same, with a SIGTERM restart mid-run
    python -m bench.load --requests 20000 --time-limit 600 [--restart]   # the documented long run

The server runs as a subprocess in production mode (no ``--dev``) and trusts a local IAS
look-alike (`tests._idp`, served in this process) for its keys. The clients mix full-access,
read-only, permissionless, expired, forged and missing tokens, call the read and write note
tools in both request framings (2025-11-25 JSON body; 2026-07-28 sessionless with
``Mcp-Method``/``Mcp-Name`` headers and the ``_meta`` envelope), and classify every answer
against the decision the token must get (MCP authorization; RFC 6750 §3.1 for the challenges).
Every acknowledged write is read back at the end. With ``--restart`` the server gets SIGTERM
once half the requests were served, must exit 0 after draining, and a new process is started on
the same port and database at once; clients retry connection errors (counted as not served).

Both the request count and the time are bounded: workers stop at ``--time-limit`` whatever
is left, and the setup, restart and read-back phases have deadlines of their own.
The exit status is 0 only when every must-be-zero figure is zero and the run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/load.py` as well as `python -m bench.load`
    sys.path.insert(0, str(ROOT))

from joserfc.jwk import RSAKey  # noqa: E402

from tests._idp import IdP, running_idp  # noqa: E402

__all__ = ["LoadConfig", "LoadReport", "run", "main", "expected_decision", "observed_decision"]

READ = "api_read_access"
WRITE = "api_write_access"
AUDIENCE = "mcp-client"
TENANT = "7b20408e-3fe0-4ade-aa2e-ad97baac72e8"

PERSONAS = ("full", "read", "none", "expired", "forged", "missing")
# Client i plays PLAN[i % 10]; with 100 clients: 30 full, 20 read, 20 forged, 10 each of the rest.
PLAN = ("full", "read", "forged", "full", "none", "expired", "full", "read", "forged", "missing")
FRAMINGS = ("2025-11-25", "2026-07-28")
CONSUMERS: dict[str, tuple[str, list[str] | None]] = {  # persona -> (client id, ias_apis)
    "full": ("load-full", [READ, WRITE]),
    "read": ("load-read", [READ]),
    "none": ("load-none", None),  # no ias_apis claim at all
}
TOOLS = ("list_notes", "get_note", "search_notes", "create_note", "update_note", "whoami")
WEIGHTS = (15, 20, 15, 20, 15, 15)
READ_TOOLS = frozenset({"list_notes", "get_note", "search_notes"})

ALLOW = "200"
SCOPE = "403 insufficient_scope"
INVALID = "401 invalid_token"
BARE = "401 (no error code)"

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "bench-load", "version": "0.1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
DENIED_MARK = "denied-write"  # in every title a refused write tries to store; must never be found
SETUP_TIMEOUT_S = 30.0  # starting a server, seeding notes
VERIFY_TIMEOUT_S = 60.0  # reading back every acknowledged write (plus 0.1 s per note)
STOP_TIMEOUT_S = 20.0  # SIGTERM to exit (the server drains for at most 8 s)


# --- decisions (pure) ---------------------------------------------------------------------------


def expected_decision(persona: str, tool: str) -> str:
    """The answer a ``tools/call`` of ``tool`` must get with ``persona``'s token."""
    if persona == "missing":
        return BARE  # RFC 6750 §3.1: no credentials, no error code
    if persona in ("expired", "forged"):
        return INVALID
    if tool == "whoami" or persona == "full" or (persona == "read" and tool in READ_TOOLS):
        return ALLOW
    return SCOPE


_ERROR_PARAM = re.compile(r'(?:^|[\s,])error="([^"]*)"')


def observed_decision(status: int, www_authenticate: str | None) -> str:
    """The decision an answer expresses: its status and, for 401/403, the challenge's error code."""
    if status not in (401, 403):
        return str(status)
    if not www_authenticate or not www_authenticate.startswith("Bearer"):
        return f"{status} (no Bearer challenge)"
    found = _ERROR_PARAM.search(www_authenticate)
    return f"{status} {found.group(1)}" if found else f"{status} (no error code)"


# --- tokens -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept (so it must fail verification)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join((header, _b64(json.dumps(claims).encode()), signature))


@dataclass(frozen=True)
class Tokens:
    """Token pools per persona as (label, token); ``missing`` has one entry without a token.

    The label is the persona, or for forged tokens the kind of forgery (shown in the decision table).
    """

    pools: dict[str, list[tuple[str, str | None]]]

    def all_strings(self) -> list[str]:
        return [t for pool in self.pools.values() for _, t in pool if t]


def mint_tokens(idp: IdP, per_persona: int) -> Tokens:
    """Valid tokens from the IdP's key, and every kind of bad token the run sends."""
    now = int(time.time())
    pools: dict[str, list[tuple[str, str | None]]] = {}
    for persona, (client_id, apis) in CONSUMERS.items():
        pools[persona] = [
            (persona, idp.mint(sub=client_id, azp=client_id, app_tid=TENANT, ias_apis=apis))
            for _ in range(per_persona)
        ]
    pools["expired"] = [
        ("expired", idp.mint(sub=cid, azp=cid, app_tid=TENANT, ias_apis=[READ, WRITE], iat=now - 4200, exp=now - 600))
        for cid, _ in (CONSUMERS["full"], CONSUMERS["read"])
        for _ in range(max(1, per_persona // 2))
    ]
    rogue = RSAKey.generate_key(2048, parameters={"kid": idp.key.kid, "use": "sig", "alg": "RS256"})
    full_id = CONSUMERS["full"][0]
    forged: list[tuple[str, str | None]] = []
    for n in range(max(1, per_persona // 4)):
        claims = idp.claims(sub=full_id, azp=full_id, app_tid=TENANT)
        read_only = idp.mint(sub="load-read", azp="load-read", app_tid=TENANT, ias_apis=[READ])
        forged += [
            ("forged:other-key", idp.mint(claims, key=rogue)),  # another key under the real kid
            ("forged:unknown-kid", idp.mint(claims, key=rogue, header={"kid": f"rogue-{n}"})),  # trusted issuer
            ("forged:wrong-issuer", idp.mint(claims | {"iss": "http://127.0.0.1:9/tenant"})),  # real key
            ("forged:wrong-audience", idp.mint(claims | {"aud": ["another-service"]})),  # real key
            ("forged:tampered", _tamper(read_only, ias_apis=[READ, WRITE])),  # upgraded, signature kept
            ("forged:alg-none", ".".join((_b64(b'{"alg":"none","typ":"JWT"}'), _b64(json.dumps(claims).encode()), ""))),
        ]
    pools["forged"] = forged
    pools["missing"] = [("missing", None)]
    return Tokens(pools)


# --- the server under test ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(issuer: str, port: int, db: Path) -> dict[str, str]:
    """Production settings (no ``--dev``): this machine's environment without any MCP_/VCAP_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "VCAP_"))}
    return env | {
        "MCP_AUTH_ISSUER": issuer,
        "MCP_AUTH_AUDIENCE": AUDIENCE,
        "MCP_RESOURCE_URL": f"http://127.0.0.1:{port}/mcp",
        "MCP_NOTES_DB": str(db),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class ServerProcess:
    """One ``python -m server`` process; its stderr goes to ``log``."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def start(self, timeout: float = SETUP_TIMEOUT_S) -> None:
        """Spawn and wait until ``/health`` answers 200."""
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(self.base_url + "/health").status_code == 200:
                        return
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not answer /health within {timeout:g} s")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the exit status (a kill after ``timeout`` returns -9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    """What one run does; the defaults are the CI size."""

    clients: int = 100
    requests: int = 1500
    time_limit_s: float = 60.0
    restart: bool = False
    tokens_per_persona: int = 8
    seed_notes: int = 10
    seed: int = 7


@dataclass
class LoadReport:
    """The figures of one run; ``failures`` lists every must-be-zero figure that is not."""

    clients: int
    requests: int
    restart: bool
    sent: int = 0  # requests begun (a retried request counts once)
    served: int = 0  # answered with an HTTP status
    connection_errors: int = 0  # attempts that failed to connect or lost the connection (retried)
    connection_error_kinds: dict[str, int] = field(default_factory=dict)  # by exception, e.g. "ConnectError"
    timeouts: int = 0  # attempts with no answer in time (retried)
    wrong_decisions: int = 0  # answered below 500 with another decision than expected
    server_errors: int = 0  # answered 5xx
    tool_errors: int = 0  # allowed calls that came back as a JSON-RPC or tool error
    acked_creates: int = 0
    acked_updates: int = 0
    missing_writes: int = 0  # acknowledged creates not found afterwards, acknowledged updates lost
    denied_writes_applied: int = 0  # refused writes whose content is found afterwards
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    load_seconds: float = 0.0
    throughput_rps: float = 0.0
    longest_stall_s: float = 0.0  # longest time without any answer during the load phase
    time_limit_hit: bool = False
    restart_exit_code: int | None = None
    drain_s: float | None = None  # SIGTERM to exit of the old process
    restart_gap_s: float | None = None  # SIGTERM to the new process answering /health
    start_s: float | None = None  # old process exited to new one answering
    answered_while_draining: int | None = None  # answers between SIGTERM and the old process's exit
    answered_after_restart: int | None = None  # answers after the new process answered /health
    final_exit_code: int | None = None
    server_log_errors: int = 0  # log lines at level error or with a traceback
    tokens_in_log: int = 0
    key_requests: int = 0  # discovery and JWKS requests the IdP answered (both processes, whole run)
    machine_load: float = 0.0  # the 1-minute load average at the end of the load phase (figures depend on it)
    cpus: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # "token-kind tool observed-answer" -> count
    examples: list[str] = field(default_factory=list)  # the first wrong answers, for a reproduction
    notes: list[str] = field(default_factory=list)  # the first connection error of each kind outside a restart

    @property
    def failures(self) -> list[str]:
        problems = [
            f"{name} = {getattr(self, name)}"
            for name in ("wrong_decisions", "server_errors", "tool_errors", "missing_writes",
                         "denied_writes_applied", "server_log_errors", "tokens_in_log")
            if getattr(self, name)
        ]
        if self.time_limit_hit or self.served < self.requests:
            problems.append(f"served {self.served} of {self.requests} within the time limit")
        if self.restart and self.restart_exit_code != 0:
            problems.append(f"restart exit code = {self.restart_exit_code}")
        if self.final_exit_code != 0:
            problems.append(f"final exit code = {self.final_exit_code}")
        return problems


@dataclass
class Note:
    """What the clients know about one note they created: the acknowledged and the unsure contents."""

    id: int
    acked: tuple[str, str]  # (title, body) of the last acknowledged write
    unsure: set[tuple[str, str]] = field(default_factory=set)  # sent after it, never acknowledged


@dataclass
class Call:
    tool: str
    arguments: dict[str, Any]
    note: Note | None = None  # the owned note an update targets


class _Run:
    """Shared state of one load phase (single event loop: no locks needed)."""

    def __init__(self, config: LoadConfig, base_url: str, tokens: Tokens, seeds: list[Note]) -> None:
        self.config = config
        self.url = base_url + "/mcp"
        self.tokens = tokens
        self.report = LoadReport(config.clients, config.requests, config.restart)
        self.notes: dict[int, Note] = {n.id: n for n in seeds}
        self.seed_ids = [n.id for n in seeds]
        self.known_ids = list(self.seed_ids)
        self.latencies: list[float] = []
        self.answered_at: list[float] = []
        self.halfway = asyncio.Event()
        self.drain_window: tuple[float, float] | None = None  # (SIGTERM sent, old process exited)
        self.ready_at: float | None = None  # the new process answered /health
        self.errors_at: list[tuple[float, float, str, str]] = []  # (attempt began, failed, exception, message)
        self.deadline = 0.0
        self._counter = 0

    def take_ticket(self) -> int | None:
        if self._counter >= self.config.requests or time.monotonic() >= self.deadline:
            return None
        self._counter += 1
        self.report.sent = self._counter
        return self._counter

    def make_call(self, persona: str, rng: random.Random, owned: list[Note], tag: str) -> Call:
        tool = rng.choices(TOOLS, WEIGHTS)[0]
        if tool == "update_note" and persona == "full" and not owned:
            tool = "create_note"
        if tool == "list_notes":
            return Call(tool, {"limit": rng.choice((5, 20, 100))})
        if tool == "search_notes":
            return Call(tool, {"query": rng.choice(("load", "v1", "nothing-like-this")), "limit": 20})
        if tool == "get_note":
            return Call(tool, {"note_id": rng.choice(self.known_ids)})
        if tool == "whoami":
            return Call(tool, {})
        denied = expected_decision(persona, tool) != ALLOW
        title = f"{DENIED_MARK} {tag}" if denied else f"load {tag}"
        body = f"{tool} {tag} {'x' * rng.randrange(0, 200)}"
        if tool == "create_note":
            return Call(tool, {"title": title, "body": body})
        if denied:
            return Call(tool, {"note_id": rng.choice(self.seed_ids), "title": title, "body": body})
        note = rng.choice(owned)
        return Call(tool, {"note_id": note.id, "title": title, "body": body}, note)


def _request(call: Call, framing: str, token: str | None, request_id: int) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a ``tools/call`` in ``framing`` (as the SDK client sends them)."""
    params: dict[str, Any] = {"name": call.tool, "arguments": call.arguments}
    headers = dict(BASE_HEADERS)
    if framing == "2026-07-28":
        params["_meta"] = ENVELOPE
        headers |= {"Mcp-Method": "tools/call", "Mcp-Name": call.tool, "MCP-Protocol-Version": "2026-07-28"}
    else:
        headers["MCP-Protocol-Version"] = "2025-11-25"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return json.dumps(body).encode(), headers


def _result(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON-RPC result of a successful tool call, or None (JSON-RPC error, tool error, not JSON)."""
    try:
        payload = response.json()
    except ValueError:
        return None
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, dict) or result.get("isError"):
        return None
    return result


def _structured(result: dict[str, Any]) -> dict[str, Any]:
    content = result.get("structuredContent")
    if isinstance(content, dict):
        return content
    return json.loads(result["content"][0]["text"])


async def _client(state: _Run, http: httpx.AsyncClient, index: int) -> None:
    """One client: a fixed persona and framing, sequential requests until the tickets run out."""
    persona = PLAN[index % len(PLAN)]
    framing = FRAMINGS[(index // len(PLAN)) % 2]
    rng = random.Random(state.config.seed * 1_000_003 + index)
    pool = state.tokens.pools[persona]
    fixed = pool[index % len(pool)]  # a client reuses its token; forged and expired ones vary per request
    owned: list[Note] = []
    report = state.report
    while (ticket := state.take_ticket()) is not None:
        label, token = rng.choice(pool) if persona in ("forged", "expired") else fixed
        call = state.make_call(persona, rng, owned, f"c{index} r{ticket}")
        content, headers = _request(call, framing, token, ticket)
        expect = expected_decision(persona, call.tool)
        if call.note is not None:
            call.note.unsure.add((call.arguments["title"], call.arguments["body"]))
        backoff = 0.02
        while True:
            if time.monotonic() >= state.deadline:
                return
            started, attempted_at = time.perf_counter(), time.monotonic()
            try:
                response = await http.post(state.url, content=content, headers=headers)
            except httpx.TimeoutException:
                report.timeouts += 1
            except httpx.TransportError as exc:
                report.connection_errors += 1
                state.errors_at.append((attempted_at, time.monotonic(), type(exc).__name__, str(exc)[:120]))
            else:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 1.5, 0.25)
        state.latencies.append(time.perf_counter() - started)
        state.answered_at.append(time.monotonic())
        report.served += 1
        if report.served * 2 >= state.config.requests:
            state.halfway.set()
        seen = observed_decision(response.status_code, response.headers.get("www-authenticate"))
        key = f"{label} {call.tool} {seen}"
        report.decisions[key] = report.decisions.get(key, 0) + 1
        problem = _judge(state, persona, call, expect, seen, response, owned)
        if problem is not None and len(report.examples) < 10:
            report.examples.append(
                f"{problem}: {label} {framing} {call.tool} {call.arguments!r} -> {response.status_code} "
                f"www-authenticate={response.headers.get('www-authenticate')!r} body={response.text[:300]!r}"
            )


def _judge(state: _Run, persona: str, call: Call, expect: str, seen: str, response: httpx.Response,
           owned: list[Note]) -> str | None:
    """Count one answer; returns what was wrong with it, if anything."""
    report = state.report
    if response.status_code >= 500:
        report.server_errors += 1
        return "5xx"
    if seen != expect:
        report.wrong_decisions += 1
        return f"wrong decision (expected {expect})"
    if expect != ALLOW:
        return None
    result = _result(response)
    if result is None:
        report.tool_errors += 1
        return "tool error"
    if call.tool == "whoami":
        me = _structured(result)
        client_id, apis = CONSUMERS[persona]
        if me.get("client_id") != client_id or sorted(me.get("permissions", ())) != sorted(apis or ()):
            report.wrong_decisions += 1
            return "whoami names another caller"
    elif call.tool == "create_note":
        made = _structured(result)
        note = Note(made["id"], (call.arguments["title"], call.arguments["body"]))
        state.notes[note.id] = note
        state.known_ids.append(note.id)
        owned.append(note)
        report.acked_creates += 1
    elif call.tool == "update_note" and call.note is not None:
        call.note.acked = (call.arguments["title"], call.arguments["body"])
        call.note.unsure.clear()
        report.acked_updates += 1
    return None


async def _restart_midway(state: _Run, servers: list[ServerProcess]) -> None:
    """At half the requests: SIGTERM, wait for exit (must be 0), start a new process on the same port and DB."""
    await state.halfway.wait()
    old = servers[-1]
    report = state.report
    sent_at = time.monotonic()
    report.restart_exit_code = await asyncio.to_thread(old.stop, STOP_TIMEOUT_S)  # one SIGTERM, then wait
    exited_at = time.monotonic()
    new = ServerProcess(old.env, old.log.with_name(f"server-{len(servers) + 1}.log"))
    servers.append(new)
    await asyncio.to_thread(new.start, SETUP_TIMEOUT_S)
    ready_at = state.ready_at = time.monotonic()
    state.drain_window = (sent_at, exited_at)
    report.drain_s = exited_at - sent_at
    report.start_s = ready_at - exited_at
    report.restart_gap_s = ready_at - sent_at


async def _seed(http: httpx.AsyncClient, url: str, token: str, count: int) -> list[Note]:
    notes = []
    for n in range(count):
        call = Call("create_note", {"title": f"load seed {n}", "body": f"seed body {n}"})
        content, headers = _request(call, FRAMINGS[n % 2], token, n)
        response = await http.post(url, content=content, headers=headers)
        result = _result(response)
        if response.status_code != 200 or result is None:
            raise RuntimeError(f"seeding failed: {response.status_code} {response.text[:300]}")
        notes.append(Note(_structured(result)["id"], (call.arguments["title"], call.arguments["body"])))
    return notes


async def _verify(state: _Run, http: httpx.AsyncClient, token: str) -> None:
    """Read back every note a client created with an acknowledgement; look for refused writes."""
    report = state.report
    limit = asyncio.Semaphore(16)

    async def check(note: Note) -> None:
        async with limit:
            content, headers = _request(Call("get_note", {"note_id": note.id}), FRAMINGS[note.id % 2], token, note.id)
            response = await http.post(state.url, content=content, headers=headers)
        result = _result(response) if response.status_code == 200 else None
        if result is None:
            report.missing_writes += 1
            report.examples.append(f"note {note.id} missing: {response.status_code} {response.text[:200]!r}")
            return
        got = _structured(result)
        if (got["title"], got["body"]) not in {note.acked, *note.unsure}:
            report.missing_writes += 1
            report.examples.append(f"note {note.id} lost its acknowledged update: has {got['title']!r}")

    await asyncio.gather(*(check(note) for note in state.notes.values()))
    content, headers = _request(Call("search_notes", {"query": DENIED_MARK, "limit": 100}), FRAMINGS[0], token, 0)
    response = await http.post(state.url, content=content, headers=headers)
    result = _result(response)
    if result is None:
        raise RuntimeError(f"search after the run failed: {response.status_code} {response.text[:300]}")
    report.denied_writes_applied = len(_structured(result)["notes"])


def _summarise(state: _Run, started: float, finished: float) -> LoadReport:
    """Speed, stall, restart and connection-error figures of the load phase (``started``..``finished``)."""
    report, config = state.report, state.config
    report.machine_load, report.cpus = os.getloadavg()[0], os.cpu_count() or 0
    report.time_limit_hit = finished >= state.deadline
    report.load_seconds = finished - started
    report.throughput_rps = report.served / report.load_seconds if report.load_seconds else 0.0
    ms = sorted(x * 1000 for x in state.latencies)
    report.p50_ms = statistics.median(ms) if ms else 0.0
    report.p99_ms = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0
    moments = [started, *sorted(state.answered_at), finished]
    report.longest_stall_s = max(b - a for a, b in zip(moments, moments[1:], strict=False))
    window = (state.drain_window[0], state.ready_at) if state.drain_window and state.ready_at is not None else None
    if state.drain_window is not None:
        term, exited = state.drain_window
        report.answered_while_draining = sum(term <= t <= exited for t in state.answered_at)
    if state.ready_at is not None:
        report.answered_after_restart = sum(t > state.ready_at for t in state.answered_at)
    for attempted_at, failed_at, name, message in state.errors_at:
        during = window is not None and attempted_at <= window[1] and failed_at >= window[0]  # overlaps the restart
        kind = f"{name} ({'during' if during else 'outside'} the restart)" if config.restart else name
        if kind not in report.connection_error_kinds and not during:
            when = f"tried {attempted_at - started:.2f} s into the load, failed at {failed_at - started:.2f} s"
            if window is not None:
                when += f" (SIGTERM at {window[0] - started:.2f} s, new process ready at {window[1] - started:.2f} s)"
            report.notes.append(f"{name} {when}: {message!r}")
        report.connection_error_kinds[kind] = report.connection_error_kinds.get(kind, 0) + 1
    return report


async def _load(config: LoadConfig, idp: IdP, servers: list[ServerProcess]) -> tuple[LoadReport, list[str]]:
    """Seed, run the clients (restarting the server halfway if asked), read back; returns the tokens sent too."""
    tokens = mint_tokens(idp, config.tokens_per_persona)
    checker = idp.mint(sub="load-check", azp=CONSUMERS["full"][0], app_tid=TENANT, ias_apis=[READ, WRITE])
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them: otherwise
    # a request can meet the server's close in flight (RFC 9112 §9.3.1) and show up as a connection error.
    limits = httpx.Limits(max_connections=config.clients + 4, max_keepalive_connections=config.clients + 4,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0), trust_env=False) as http:
        url = servers[-1].base_url + "/mcp"
        seeds = await asyncio.wait_for(_seed(http, url, checker, config.seed_notes), SETUP_TIMEOUT_S)
        state = _Run(config, servers[-1].base_url, tokens, seeds)
        restarter = asyncio.create_task(_restart_midway(state, servers)) if config.restart else None
        started = time.monotonic()
        state.deadline = started + config.time_limit_s
        try:
            await asyncio.wait_for(
                asyncio.gather(*(_client(state, http, i) for i in range(config.clients))),
                config.time_limit_s + 1.0,
            )
        except TimeoutError:
            pass
        finished = time.monotonic()
        if restarter is not None:
            if state.halfway.is_set():
                await asyncio.wait_for(restarter, STOP_TIMEOUT_S + SETUP_TIMEOUT_S + 5)
            else:
                restarter.cancel()
        report = _summarise(state, started, finished)
        await asyncio.wait_for(_verify(state, http, checker), VERIFY_TIMEOUT_S + 0.1 * len(state.notes))
    return report, [*tokens.all_strings(), checker]


def run(config: LoadConfig) -> LoadReport:
    """One bounded run against fresh processes in a temporary directory; always stops its servers."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, running_idp() as idp:
        port = free_port()
        first = ServerProcess(server_env(idp.issuer, port, Path(tmp) / "notes.db"), Path(tmp) / "server-1.log")
        servers = [first]
        try:
            first.start()
            report, tokens = asyncio.run(_load(config, idp, servers))
            report.final_exit_code = servers[-1].stop()
            report.key_requests = idp.discovery_fetches + idp.jwks_fetches
        finally:
            for server in servers:
                server.kill()
        log = "".join(s.log.read_text(errors="replace") for s in servers if s.log.exists())
        report.server_log_errors = sum(
            1 for line in log.splitlines()
            if "Traceback" in line or '"level": "error"' in line or '"level": "critical"' in line
        )
        report.tokens_in_log = sum(1 for t in tokens if t.split(".")[-1] and t.split(".")[-1] in log)
    return report


# --- printing -----------------------------------------------------------------------------------


def render(report: LoadReport) -> str:
    r = report
    lines = [
        f"load: {r.clients} clients, {r.requests} requests, framings {' + '.join(FRAMINGS)}, "
        f"SIGTERM restart: {'yes' if r.restart else 'no'}",
        f"requests served            {r.served} of {r.requests}"
        f"   (not served: {r.connection_errors} connection errors, {r.timeouts} timeouts, all retried)",
        *([f"connection errors          {', '.join(f'{k}: {v}' for k, v in sorted(r.connection_error_kinds.items()))}"]
          if r.connection_error_kinds else []),
        f"wrong decisions            {r.wrong_decisions}",
        f"5xx                        {r.server_errors}",
        f"tool errors                {r.tool_errors}",
        f"acknowledged writes        {r.acked_creates} creates, {r.acked_updates} updates"
        f" (+ seed notes); missing afterwards: {r.missing_writes}",
        f"refused writes applied     {r.denied_writes_applied}",
        f"latency p50 / p99          {r.p50_ms:.1f} ms / {r.p99_ms:.1f} ms",
        f"throughput                 {r.throughput_rps:.0f} requests/s over {r.load_seconds:.1f} s"
        f"{' (time limit hit)' if r.time_limit_hit else ''}; machine load {r.machine_load:.1f} on {r.cpus} CPUs",
        f"longest stall              {r.longest_stall_s:.2f} s without any answer",
    ]
    if r.restart:
        if r.restart_gap_s is None:
            lines.append(f"restart                    did not complete (exit code {r.restart_exit_code})")
        else:
            lines.append(
                f"restart                    SIGTERM -> exit {r.restart_exit_code} in {r.drain_s:.2f} s "
                f"({r.answered_while_draining} answers while draining); new process "
                f"ready {r.start_s:.2f} s later; restart gap {r.restart_gap_s:.2f} s; "
                f"{r.answered_after_restart} answers by the new process"
            )
    lines.append(f"final stop                 exit {r.final_exit_code}")
    lines.append(f"IdP key requests           {r.key_requests} (discovery + JWKS, every process)")
    lines.append(f"server log                 {r.server_log_errors} errors or tracebacks, {r.tokens_in_log} tokens")
    lines += decision_table(r.decisions)
    if r.notes:
        lines.append("first connection error of each kind outside a restart:")
        lines += [f"  {n}" for n in r.notes]
    if r.examples:
        lines.append("first problems:")
        lines += [f"  {e}" for e in r.examples]
    lines.append("PASS" if not r.failures else "FAIL: " + "; ".join(r.failures))
    return "\n".join(lines)


_SHORT = {ALLOW: "200", SCOPE: "403s", INVALID: "401i", BARE: "401-"}


def decision_table(decisions: dict[str, int]) -> list[str]:
    """One row per token kind, one column per tool, cells ``answer:count``."""
    cells: dict[tuple[str, str], list[str]] = {}
    for key, count in sorted(decisions.items()):
        label, tool, seen = key.split(" ", 2)
        cells.setdefault((label, tool), []).append(f"{_SHORT.get(seen, seen)}:{count}")
    labels = sorted({label for label, _ in cells}, key=lambda x: (PERSONAS.index(x.split(":")[0]), x))
    lines = [
        "answers per token kind and tool (200 allowed, 403s insufficient_scope, 401i invalid_token,"
        " 401- no error code):",
        f"  {'':22}" + "".join(f"{tool:>14}" for tool in TOOLS),
    ]
    for label in labels:
        lines.append(f"  {label:22}" + "".join(f"{' '.join(cells.get((label, t), ['-'])):>14}" for t in TOOLS))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    defaults = LoadConfig()
    parser.add_argument("--clients", type=int, default=defaults.clients, help="concurrent clients (default 100)")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="requests in all (default 1500)")
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit_s,
                        help="seconds after which the clients stop, served or not (default 60)")
    parser.add_argument("--restart", action="store_true", help="SIGTERM the server halfway and start a new one")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the request mix")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    config = LoadConfig(clients=args.clients, requests=args.requests, time_limit_s=args.time_limit,
                        restart=args.restart, seed=args.seed)
    report = run(config)
    print(json.dumps(asdict(report) | {"failures": report.failures}, indent=2) if args.json else render(report))
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
