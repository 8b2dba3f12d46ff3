"""Service bindings as Kubernetes mounts them: read into the shape of ``VCAP_SERVICES``.

On Kyma the SAP BTP service operator writes each ``ServiceBinding`` into a Secret, and a Pod
mounts it as a folder, one file per key. `service_bindings` reads every folder under
``$SERVICE_BINDING_ROOT`` and returns them, together with the entries of ``VCAP_SERVICES``,
as one mapping ``{label: [{"name", "instance_name", "label", "plan", "tags", "credentials",
"source"}, ...]}``, so the identity, XSUAA and PostgreSQL loaders apply one set of rules
(choice among several, precedence of explicit settings, errors) whatever the platform.

Two folder layouts, told apart by the ``.metadata`` file:

* **SAP BTP service operator** (``.metadata`` present): ``.metadata`` is JSON,
  ``{"credentialProperties": [{"name", "format", "container"?}], "metaDataProperties": [...]}``;
  each named file holds one credential (``format: text``) or a JSON document (``json``:
  parsed; a ``container`` property, from ``spec.secretKey``, holds all credentials as one
  object). ``instance_name``, ``plan``, ``label``/``type`` and ``tags`` (JSON) describe the
  instance. Values are taken byte for byte; a property whose file is missing is skipped.
* **servicebinding.io** (no ``.metadata``): a ``type`` file (required; the label, and a tag),
  an optional ``provider``, and one text file per credential. A one-line value loses its line end
  (``echo`` and ``kubectl create secret --from-file`` keep one); PEM and other multi-line values
  are kept byte for byte. JSON is never guessed.

The folder's name is the binding's ``name``; the operator's ``instance_name`` matches too
(``MCP_AUTH_IDENTITY_SERVICE``). Names starting with ``.`` (Kubernetes' ``..data``) are skipped.
Errors name ``SERVICE_BINDING_ROOT`` and the folder and file at fault, never a value.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError

__all__ = ["service_bindings", "BINDING_ROOT_SETTING"]

BINDING_ROOT_SETTING = "SERVICE_BINDING_ROOT"
_MAX_VALUE_BYTES = 256 * 1024  # a PEM chain is a few KiB; anything this large is a wrong mount
_MAX_FILES = 256  # per binding folder
_MAX_BINDINGS = 64
_FORMATS = ("text", "json")


def service_bindings(env: Mapping[str, str]) -> dict[str, Any]:
    """``VCAP_SERVICES`` and the folders under ``SERVICE_BINDING_ROOT``, by label (VCAP's order first).

    Raises:
        ConfigError: naming ``VCAP_SERVICES`` (not a JSON object) or ``SERVICE_BINDING_ROOT``
            (not a folder, or a binding folder that cannot be read as either layout).
    """
    try:
        vcap = json.loads(env.get("VCAP_SERVICES") or "{}")
    except ValueError as exc:
        raise ConfigError("VCAP_SERVICES", "is not valid JSON") from exc
    if not isinstance(vcap, dict):
        raise ConfigError("VCAP_SERVICES", "must be a JSON object")
    merged: dict[str, Any] = dict(vcap)
    for binding in mounted_bindings(env.get(BINDING_ROOT_SETTING, "").strip()):
        existing = merged.get(binding["label"])
        # A non-list under this label in VCAP_SERVICES is ignored by every loader anyway.
        merged[binding["label"]] = [*(existing if isinstance(existing, list) else ()), binding]
    return merged


def mounted_bindings(root: str) -> list[dict[str, Any]]:
    """Every binding folder under ``root`` (sorted by name); ``[]`` when ``root`` is empty.

    Raises:
        ConfigError: naming ``SERVICE_BINDING_ROOT``.
    """
    if not root:
        return []
    if not os.path.isdir(root):
        raise ConfigError(BINDING_ROOT_SETTING, f"no such folder: {root!r}")
    try:
        names = sorted(n for n in os.listdir(root) if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
    except OSError as exc:
        raise ConfigError(BINDING_ROOT_SETTING, f"cannot list {root!r}: {exc.strerror}") from None
    if len(names) > _MAX_BINDINGS:
        raise ConfigError(BINDING_ROOT_SETTING, f"has {len(names)} folders; at most {_MAX_BINDINGS} bindings")
    return [read_binding(os.path.join(root, name), name) for name in names]


def read_binding(folder: str, name: str) -> dict[str, Any]:
    """One binding folder, in either layout, as a ``VCAP_SERVICES`` entry with its ``source``.

    Raises:
        ConfigError: naming ``SERVICE_BINDING_ROOT``, the folder and the file at fault.
    """
    where = f"{BINDING_ROOT_SETTING}/{name}"
    files = _files(folder, where)
    if ".metadata" in files:
        return _operator_binding(folder, name, where, files)
    if "type" in files:
        return _servicebinding_io(folder, name, where, files)
    raise ConfigError(
        where, "has neither a .metadata file (SAP BTP service operator) nor a type file (servicebinding.io)"
    )


def _files(folder: str, where: str) -> set[str]:
    """Names of the regular files in ``folder`` (symlinks followed: Secret volumes link each key)."""
    try:
        entries = os.listdir(folder)
    except OSError as exc:
        raise ConfigError(where, f"cannot be listed: {exc.strerror}") from None
    names = {
        n for n in entries if (not n.startswith(".") or n == ".metadata") and os.path.isfile(os.path.join(folder, n))
    }
    if len(names) > _MAX_FILES:
        raise ConfigError(where, f"has {len(names)} files; at most {_MAX_FILES}")
    return names


def _read(folder: str, key: str, where: str) -> str:
    path = os.path.join(folder, key)
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"{where}/{key}", "is not a regular file")
            data = handle.read(_MAX_VALUE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}/{key}", f"cannot be read: {exc.strerror}") from None
    if len(data) > _MAX_VALUE_BYTES:
        raise ConfigError(f"{where}/{key}", f"is larger than {_MAX_VALUE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}/{key}", "is not UTF-8 text") from None


def _json(text: str, setting: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(setting, f"{what} is not valid JSON") from None


def _properties(metadata: Mapping[str, Any], key: str, where: str) -> list[tuple[str, str, bool]]:
    """``(name, format, container)`` of ``.metadata[key]``, checked; names are plain file names."""
    items = metadata.get(key, [])
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"{where}/.metadata", f"{key} must be a list")
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{where}/.metadata", f"each {key} entry must be an object with a name")
        prop, fmt, container = item["name"], item.get("format", "text"), item.get("container", False)
        # A name is a key of the Secret, hence a file in this folder: never a path elsewhere.
        if not prop or prop.startswith(".") or "/" in prop or "\\" in prop or "\x00" in prop:
            raise ConfigError(f"{where}/.metadata", f"{key} names {prop[:60]!r}, which is not a file of the binding")
        if fmt not in _FORMATS:
            raise ConfigError(f"{where}/.metadata", f"{prop!r} has format {str(fmt)[:20]!r} (known: text, json)")
        if not isinstance(container, bool):
            raise ConfigError(f"{where}/.metadata", f"{prop!r}: container must be true or false")
        found.append((prop, fmt, container))
    return found


def _operator_binding(folder: str, name: str, where: str, files: set[str]) -> dict[str, Any]:
    metadata = _json(_read(folder, ".metadata", where), f"{where}/.metadata", "the file")
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where}/.metadata", "must be a JSON object")

    def value(prop: str, fmt: str) -> Any:
        text = _read(folder, prop, where)
        return _json(text, f"{where}/{prop}", "the value (format json)") if fmt == "json" else text

    credentials: dict[str, Any] = {}
    for prop, fmt, container in _properties(metadata, "credentialProperties", where):
        if prop not in files:
            continue  # like SAP's own readers: a key left out of the mount is simply absent
        parsed = value(prop, fmt)
        if container:
            if not isinstance(parsed, dict):
                raise ConfigError(f"{where}/{prop}", "holds the credentials (container) but is not a JSON object")
            credentials.update(parsed)
        else:
            credentials[prop] = parsed
    info = {prop: value(prop, fmt) for prop, fmt, _ in _properties(metadata, "metaDataProperties", where)
            if prop in files}
    label = info.get("label") or info.get("type")
    if not isinstance(label, str) or not label:
        raise ConfigError(where, "has no type or label: its .metadata names neither, or their files are missing")
    tags = info.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where}/tags", "must be a JSON array of strings")
    return {
        "name": name,
        "instance_name": info.get("instance_name") if isinstance(info.get("instance_name"), str) else None,
        "label": label,
        "plan": info.get("plan") if isinstance(info.get("plan"), str) else None,
        "tags": tags,
        "credentials": credentials,
        "source": where,
    }


def _chomp(text: str) -> str:
    """A one-line value without its line end (``echo`` and ``--from-file`` add one); others unchanged."""
    body = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    return body if "\n" not in body else text


def _servicebinding_io(folder: str, name: str, where: str, files: set[str]) -> dict[str, Any]:
    label = _chomp(_read(folder, "type", where)).strip()
    if not label:
        raise ConfigError(f"{where}/type", "is empty")
    provider = _chomp(_read(folder, "provider", where)).strip() if "provider" in files else None
    credentials = {key: _chomp(_read(folder, key, where)) for key in sorted(files - {"type", "provider", ".metadata"})}
    return {
        "name": name,
        "instance_name": None,
        "label": label,
        "plan": None,
        "tags": [label] + ([provider] if provider else []),
        "credentials": credentials,
        "source": where,
    }
