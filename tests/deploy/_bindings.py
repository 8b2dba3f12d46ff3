"""Service bindings laid out on disk the way Kubernetes mounts them, for the settings and image tests.

`operator_secret` builds the data of the Secret the SAP BTP service operator writes for a
``ServiceBinding`` (its default layout: one key per credential, strings as text and anything else
as JSON, the instance's ``instance_name``/``instance_guid``/``plan``/``label``/``type``/``tags``,
and ``.metadata`` saying which key is which; with ``secret_key``, all credentials as one JSON
document under that key, as ``spec.secretKey`` asks). `mount_secret` writes Secret data as the
kubelet does: the files in a timestamped folder, ``..data`` linking to it, one link per key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def operator_secret(credentials: Mapping[str, Any], *, offering: str, instance_name: str, plan: str,
                    tags: list[str] | None = None, secret_key: str | None = None) -> dict[str, str]:
    """The Secret data (key -> text) the operator writes for a binding with ``credentials``."""
    data: dict[str, str] = {}
    credential_properties: list[dict[str, Any]] = []
    if secret_key is not None:
        data[secret_key] = json.dumps(credentials)
        credential_properties.append({"name": secret_key, "format": "json", "container": True})
    else:
        for key, value in credentials.items():
            name = key.replace(" ", "_")
            if isinstance(value, str):
                data[name] = value
                credential_properties.append({"name": name, "format": "text"})
            else:
                data[name] = json.dumps(value)
                credential_properties.append({"name": name, "format": "json"})
    data |= {"instance_name": instance_name, "instance_guid": "0b6f1f2e-8d1c-4b0e-9c55-2a4f9e3c1d77",
             "plan": plan, "label": offering, "type": offering}
    metadata = [{"name": n, "format": "text"} for n in ("instance_name", "instance_guid", "plan", "label", "type")]
    if tags:
        data["tags"] = json.dumps(tags)
        metadata.append({"name": "tags", "format": "json"})
    data[".metadata"] = json.dumps({"metaDataProperties": metadata, "credentialProperties": credential_properties})
    return data


def servicebinding_io(credentials: Mapping[str, str], *, type_: str, provider: str | None = None) -> dict[str, str]:
    """servicebinding.io: ``type``, optional ``provider``, one text entry per credential."""
    data = {"type": type_, **dict(credentials)}
    if provider:
        data["provider"] = provider
    return data


def mount_secret(root: Path, name: str, data: Mapping[str, str | bytes]) -> Path:
    """Write ``data`` under ``root/name`` as a Secret volume: ``..<stamp>/`` files, ``..data`` and key links."""
    folder = root / name
    stamp = folder / "..2026_12_06_10_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in data.items():
        (stamp / key).write_bytes(value.encode() if isinstance(value, str) else value)
    os.symlink(stamp.name, folder / "..data")
    for key in data:
        os.symlink(f"..data/{key}", folder / key)
    return folder
