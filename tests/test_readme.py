"""Every Python and shell snippet in README.md and docs/*.md runs as written, against real dev servers.

Conventions (also stated in the README's "Repository layout"):

* a fenced block must name its language; ``python``, ``bash`` and ``sh`` blocks are run, every
  other tag (``console`` for commands that need a real BTP/IAS account or start a server,
  ``json``, ``http``, ``text``, ``mermaid``, ...) is not;
* ``<!-- not-tested: reason -->`` on the line before a python/bash block skips it (kept rare);
* ``<!-- run-in: langchain -->`` runs a python block in the LangChain environment of
  `tests._venvs` (it needs ``mcp<2``).

The test starts ``python -m server --dev`` and ``python -m server --dev --mtls`` on free ports
(the walkthrough's ``MCP_DEV_CLIENTS`` set) and rewrites ``http://127.0.0.1:8080`` and
``https://127.0.0.1:8080`` in the snippets to them. Ports 8090 to 8099 (the local issuer and a
user's own servers in ``docs/local-issuer.md``, which a snippet starts itself) become free ports,
the same number the same port within one snippet. Each snippet runs with ``HOME`` in a fresh
temporary folder, the working directory where ``--dev --mtls`` wrote ``data/dev-certs``, this
interpreter first on ``PATH`` and the repository on ``PYTHONPATH``; bash runs with ``-e -o pipefail``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._live import free_port, stop_process
from tests._venvs import LANGCHAIN_REQUIREMENTS, ensure_venv

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RUN = {"python", "bash", "sh"}
DEV_CLIENTS = "archiver:archiver-secret:api_read_access+api_archive"  # the walkthrough's setting
START_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(180, func_only=True)


@dataclass(frozen=True)
class Snippet:
    line: int
    lang: str
    code: str
    marker: str  # the HTML comment on the line before, if any
    page: str = "README.md"

    @property
    def id(self) -> str:
        prefix = "" if self.page == "README.md" else self.page.removeprefix("docs/").removesuffix(".md") + "-"
        return f"{prefix}L{self.line}-{self.lang}"


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def snippets(text: str, page: str = "README.md") -> list[Snippet]:
    """Fenced blocks of ``text`` with their language and the comment line before them (pure)."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1 : j]]
        marker = before if before.startswith("<!--") else ""
        found.append(Snippet(i + 1, lang, "\n".join(body) + "\n", marker, page))
        i = j + 1
    return found


PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
ALL = [s for page in PAGES for s in snippets(page.read_text(), str(page.relative_to(REPO)))]
RUNNABLE = [s for s in ALL if s.lang in RUN and "not-tested" not in s.marker]


def test_every_fenced_block_names_its_language() -> None:
    untagged = [f"{s.page}:{s.line}" for s in ALL if not s.lang]
    assert untagged == [], f"{untagged}: tag each block (python, bash, console, json, ...)"


def test_skipped_snippets_are_few_and_give_a_reason() -> None:
    skipped = [s for s in ALL if s.lang in RUN and "not-tested" in s.marker]
    assert len(skipped) <= 2, [s.id for s in skipped]
    assert all(re.fullmatch(r"<!-- not-tested: \S.* -->", s.marker) for s in skipped), skipped


def test_the_readme_has_snippets_of_each_kind_to_run() -> None:
    assert {s.lang for s in RUNNABLE} >= {"python", "bash"}
    assert len(RUNNABLE) >= 8


# --- the servers ---------------------------------------------------------------------------------------



@dataclass
class Running:
    base_url: str
    workdir: Path


@contextlib.contextmanager
def dev_server(workdir: Path, *args: str) -> Iterator[Running]:
    port = free_port()
    scheme = "https" if "--mtls" in args else "http"
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(REPO), "MCP_NOTES_DB": str(workdir / "notes.db"),
           "MCP_DEV_CLIENTS": DEV_CLIENTS}
    log = open(workdir / f"server-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "server", "--dev", *args], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, (workdir / f"server-{port}.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{scheme}://127.0.0.1:{port}/health", verify=False, timeout=2).status_code == 200:  # noqa: S501
                    break
            assert time.monotonic() < deadline, "dev server did not start"
            time.sleep(0.2)
        yield Running(f"{scheme}://127.0.0.1:{port}", workdir)
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Running]]:
    workdir = tmp_path_factory.mktemp("readme")
    with dev_server(workdir) as plain, dev_server(workdir, "--mtls") as mtls:
        yield plain, mtls


_OWN_PORTS = re.compile(r"(?<![\d.])809\d(?!\d)")  # 8090-8099: servers a snippet starts itself


def localized(code: str, plain: Running, mtls: Running) -> str:
    code = code.replace("https://127.0.0.1:8080", mtls.base_url)
    code = code.replace("http://127.0.0.1:8080", plain.base_url)
    ports: dict[str, int] = {}

    def own_port(match: re.Match[str]) -> str:
        while match.group(0) not in ports:
            port = free_port()
            if port not in ports.values():
                ports[match.group(0)] = port
        return str(ports[match.group(0)])

    return _OWN_PORTS.sub(own_port, code)


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[s.id for s in RUNNABLE])
def test_readme_snippet_runs(snippet: Snippet, servers: tuple[Running, Running], tmp_path: Path) -> None:
    plain, mtls = servers
    code = localized(snippet.code, plain, mtls)
    home = tmp_path / "home"
    home.mkdir()
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PATH=bindir + os.pathsep + env.get("PATH", ""),
               npm_config_cache=str(Path.home() / ".npm"), NO_COLOR="1")
    if snippet.lang == "python":
        path = tmp_path / "snippet.py"
        path.write_text(code)
        python = sys.executable
        if "run-in: langchain" in snippet.marker:
            python = str(ensure_venv("langchain", LANGCHAIN_REQUIREMENTS).python)
        cmd = [python, str(path)]
    else:
        path = tmp_path / "snippet.sh"
        path.write_text(code)
        cmd = ["bash", "-e", "-o", "pipefail", str(path)]
    proc = subprocess.run(cmd, cwd=mtls.workdir, env=env, capture_output=True, text=True, timeout=150,
                          stdin=subprocess.DEVNULL)
    report = f"{snippet.page} line {snippet.line}:\n{code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stdout.strip(), report  # every snippet shows its result
    assert '"error"' not in proc.stdout and '"isError":true' not in proc.stdout.replace(" ", ""), report


def test_client_versions_in_the_docs_are_the_pinned_ones() -> None:
    """The per-client table names the versions the tests install, not older ones."""
    import tomllib

    from tests._node import INSPECTOR_VERSION, MCP_REMOTE_VERSION

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(p.split("==", 1) for p in pyproject["project"]["optional-dependencies"]["test"] if "==" in p)
    deploy = dict(p.split("==", 1) for p in pyproject["tool"]["deploy"]["pins"])
    langchain = dict(r.split("==", 1) for r in LANGCHAIN_REQUIREMENTS if "==" in r)
    table = (REPO / "docs" / "clients.md").read_text().split("## What the user sees, per client", 1)[1]
    rows = {row.split("|")[1].strip(): row for row in table.splitlines() if row.startswith("| ") and "---" not in row}
    expected = {
        "mcp": ".".join(deploy["mcp"].split(".")[:2]),
        "FastMCP": pins["fastmcp"],
        "OpenAI Agents SDK": ".".join(pins["openai-agents"].split(".")[:2]),
        "LangChain adapters": langchain["langchain-mcp-adapters"],
        "mcp-remote": MCP_REMOTE_VERSION,
        "Inspector CLI": INSPECTOR_VERSION,
    }
    for client, version in expected.items():
        cell = next((name for name in rows if name.lstrip("`").startswith(client)), None)
        assert cell is not None, f"no row for {client} in docs/clients.md"
        found = re.findall(r"\d+(?:\.\d+)+", cell)
        assert found and found[0] == version, f"{cell!r} should name {client} {version}"
