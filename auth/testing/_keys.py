"""The local issuer's signing key: loaded from a file, or created into it once, so restarts and instances agree."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["load_or_create_key", "new_key", "MIN_KEY_BITS"]

MIN_KEY_BITS = 2048


def new_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=MIN_KEY_BITS)


def load_or_create_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """The RSA private key in ``path`` (PEM, unencrypted), created there first if the file does not exist.

    A new key is written with mode 0600 (its folder, if created, 0700) and appears atomically:
    two processes starting at once end up with the same key, never with a half-written file.

    Raises:
        ValueError: the file is not an unencrypted PEM RSA private key of at least 2048 bits.
        OSError: it cannot be read, or created.
    """
    target = Path(path)
    if not target.exists():
        _create(target)
    data = target.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{target} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_KEY_BITS:
        raise ValueError(f"{target} must hold an RSA key of at least {MIN_KEY_BITS} bits")
    return key


def _create(target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, temporary = tempfile.mkstemp(prefix=".key-", dir=target.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(temporary, target)
    finally:
        os.unlink(temporary)
