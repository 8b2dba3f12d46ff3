"""Build the project's Dockerfile and run the image here, without a Docker daemon or an image registry.

* The base: ``mmdebstrap`` makes a Debian bookworm root with python3 and its venv module (the
  tarball is cached in ``~/.cache/btp-mcp-tests``), imported into buildah's storage once.
* The build: ``buildah bud --isolation chroot`` with the base as ``BASE_IMAGE``; the host's CA bundle
  and pip configuration are mounted read-only so the build's ``pip install`` reaches PyPI as the host does.
* The run: the image's root filesystem (``buildah mount``), bound read-only onto itself in a private
  mount namespace, with a memory ``/tmp``, ``/dev``, ``/proc`` and the bindings folder, then
  ``chroot --userspec`` as the image's ``USER`` with exactly the image's ``Env``, ``WorkingDir`` and
  ``Entrypoint``. The network is the host's (servers stay on 127.0.0.1).

Root is needed (mounts, chroot); missing Debian packages are installed with apt-get, as
`tests._postgres` does for PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "btp-mcp-tests"
SUITE = "bookworm"  # python3 3.11, as runtime.txt
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_IMAGE = f"localhost/btp-mcp-test-base:{SUITE}"
IMAGE = "localhost/notes-mcp:test"
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "unshare": "util-linux", "chroot": "coreutils"}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_tools() -> str | None:
    """Install what is missing (root, apt-get); the reason the image tests cannot run, or None."""
    if os.geteuid() != 0:
        return "building and running the image needs root (buildah chroot isolation, mount namespaces)"
    missing = missing_tools()
    if missing and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", *sorted({TOOLS[t] for t in missing})], check=False,
                       env=env, timeout=900)
        missing = missing_tools()
    return f"missing {', '.join(missing)} and no way to install them" if missing else None


def _run(*cmd: str, timeout: float = 600, **kwargs: Any) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True,
                          check=False, timeout=60).returncode == 0


def ensure_base() -> str:
    """The local Debian base image (made once, then cached as a tarball and in buildah's storage)."""
    if _image_exists(BASE_IMAGE):
        return BASE_IMAGE
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"debian-{SUITE}-{BASE_PACKAGES.replace(',', '-')}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial")
        _run("mmdebstrap", "--variant=apt", f"--include={BASE_PACKAGES}", SUITE, str(partial), timeout=900)
        partial.rename(tarball)
    container = _run("buildah", "from", "scratch").strip()
    try:
        _run("buildah", "add", container, str(tarball), "/")
        _run("buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--cmd", "/bin/sh", container)
        _run("buildah", "commit", "--quiet", container, BASE_IMAGE)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False, timeout=60)
    return BASE_IMAGE


def build_image(context: Path = ROOT) -> str:
    """``buildah bud`` the Dockerfile on the local base; cached layers make a rebuild take seconds."""
    base = ensure_base()
    volumes = []
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if os.path.isfile(path):
            volumes += ["-v", f"{path}:{path}:ro"]
    _run("buildah", "bud", "--isolation", "chroot", "--layers", "--quiet", "-f", str(context / "Dockerfile"),
         "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "REVISION=test", *volumes, "-t", IMAGE, str(context),
         timeout=900)
    return IMAGE


def inspect(image: str) -> dict[str, Any]:
    """The OCI image configuration (``config``: User, Env, Entrypoint, WorkingDir, Labels, ExposedPorts)."""
    data = json.loads(_run("buildah", "inspect", "--type", "image", image))
    return data["OCIv1"]


def listing(image: str, *folders: str) -> set[str]:
    """The names in ``folders`` of the image's root filesystem."""
    container = _run("buildah", "from", "--quiet", image).strip()
    try:
        rootfs = Path(_run("buildah", "mount", container).strip())
        return {p.name for folder in folders for p in (rootfs / folder.lstrip("/")).iterdir()}
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False, timeout=60)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False, timeout=60)


def image_size(image: str) -> int:
    """Bytes of the image's unpacked root filesystem (``du --apparent-size`` of a mounted container)."""
    container = _run("buildah", "from", "--quiet", image).strip()
    try:
        rootfs = _run("buildah", "mount", container).strip()
        return int(_run("du", "-s", "-x", "--apparent-size", "--block-size=1", rootfs).split()[0])
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False, timeout=60)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False, timeout=60)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    rootfs: Path
    container: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(image: str, env: Mapping[str, str], bindings: Path, log: Path) -> Running:
    """Run ``image`` as its USER with its Env + ``env``, root read-only, ``bindings`` at /bindings (read-only)."""
    config = inspect(image)["config"]
    user, workdir = config["User"], config.get("WorkingDir") or "/"
    entrypoint: Sequence[str] = [*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ())]
    container = _run("buildah", "from", "--quiet", image).strip()
    rootfs = Path(_run("buildah", "mount", container).strip())
    full_env = [*(config.get("Env") or ()), *(f"{k}={v}" for k, v in env.items())]
    script = " && ".join([
        f'mkdir -p "{rootfs}/bindings"',  # the mount point, as a container runtime creates it
        f'mount --bind "{rootfs}" "{rootfs}"',
        f'mount -o remount,bind,ro "{rootfs}"',
        f'mount -t tmpfs -o mode=1777,size=16m tmpfs "{rootfs}/tmp"',
        f'mount --bind /dev "{rootfs}/dev"',
        f'mount -t proc proc "{rootfs}/proc"',
        f'mount --bind "{bindings}" "{rootfs}/bindings"',
        f'mount -o remount,bind,ro "{rootfs}/bindings"',
        'exec "$@"',
    ])
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            "chroot", f"--userspec={user}", str(rootfs), "/usr/bin/env", "-i", "-C", workdir,
            *full_env, *entrypoint]
    handle = open(log, "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    handle.close()
    return Running(proc, rootfs, container, log)


def stop(running: Running, timeout: float = 20) -> int | None:
    """SIGTERM (the platform's stop), wait for the drain; the exit status (None if it had to be killed)."""
    status: int | None = None
    if running.proc.poll() is None:
        os.killpg(running.proc.pid, 15)
        deadline = time.monotonic() + timeout
        while running.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, 9)
            running.proc.wait(10)
        else:
            status = running.proc.returncode
    else:
        status = running.proc.returncode
    subprocess.run(["buildah", "umount", running.container], capture_output=True, check=False, timeout=60)
    subprocess.run(["buildah", "rm", running.container], capture_output=True, check=False, timeout=60)
    return status
