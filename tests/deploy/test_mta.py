"""``mta.yaml``: the MTA schema's rules for the fields we use, references that resolve, and agreement
with ``manifest.yml``, ``pyproject.toml`` and the server's settings.

The schema below is written from the MTA specification (schema 3.x, as SAP's Cloud MTA tools
check it): ``_schema-version``, ``ID`` and ``version`` required; ``ID`` and every module, resource
and requires name of ``[A-Za-z0-9_-.]``; ``version`` semantic; modules need ``name`` and ``type``,
resources ``name``; requires entries ``name``. The Cloud Foundry module parameters and the
managed-service resource parameters are the deploy service's documented ones. ``mbt build`` and
``cf deploy`` need a BTP account and tools this machine cannot fetch; what they would read is
checked here instead, including which files the ``zip`` builder packs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from server._settings import load_server_settings

ROOT = Path(__file__).resolve().parents[2]
CA_PEM = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
NAME = r"^[A-Za-z0-9_\-\.]+$"
SEMVER = (r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
          r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")
HEALTH = {"enum": ["http", "port", "process"]}
REQUIRES = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": NAME},
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"config": {"type": "object"}, "service-key-name": {"type": "string"}}},
    "properties": {"type": "object"}}}
MODULE = {"type": "object", "required": ["name", "type"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": NAME},
    "type": {"type": "string"},
    "path": {"type": "string"},
    "build-parameters": {"type": "object", "additionalProperties": False, "properties": {
        "builder": {"enum": ["zip", "custom", "npm", "npm-ci", "grunt", "golang", "evo", "maven", "fetcher"]},
        "commands": {"type": "array", "items": {"type": "string"}},
        "ignore": {"type": "array", "items": {"type": "string"}},
        "build-result": {"type": "string"}}},
    "parameters": {"type": "object", "additionalProperties": False, "properties": {
        "buildpack": {"type": "string"},
        "command": {"type": "string"},
        "memory": {"type": "string", "pattern": r"^\d+[MG]$"},
        "disk-quota": {"type": "string", "pattern": r"^\d+[MG]$"},
        "instances": {"type": "integer", "minimum": 1},
        "health-check-type": HEALTH,
        "health-check-http-endpoint": {"type": "string", "pattern": "^/"},
        "readiness-health-check-type": HEALTH,
        "readiness-health-check-http-endpoint": {"type": "string", "pattern": "^/"},
        "routes": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["route"], "additionalProperties": False,
            "properties": {"route": {"type": "string"}}}}}},
    "properties": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
    "requires": {"type": "array", "items": REQUIRES}}}
RESOURCE = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": NAME},
    "type": {"enum": ["org.cloudfoundry.managed-service", "org.cloudfoundry.existing-service",
                      "org.cloudfoundry.user-provided-service"]},
    "parameters": {"type": "object", "additionalProperties": False, "properties": {
        "service": {"type": "string"}, "service-plan": {"type": "string"}, "service-name": {"type": "string"},
        "config": {"type": "object"}}}},
    "if": {"properties": {"type": {"const": "org.cloudfoundry.managed-service"}}},
    "then": {"properties": {"parameters": {"required": ["service", "service-plan"]}}, "required": ["parameters"]}}
MTA = {"type": "object", "required": ["_schema-version", "ID", "version"], "additionalProperties": False,
       "properties": {
           "_schema-version": {"type": "string", "pattern": r"^3\.\d+(\.\d+)?$"},
           "ID": {"type": "string", "pattern": NAME},
           "version": {"type": "string", "pattern": SEMVER},
           "description": {"type": "string"},
           "provider": {"type": "string"},
           "copyright": {"type": "string"},
           "parameters": {"type": "object"},
           "build-parameters": {"type": "object"},
           "modules": {"type": "array", "items": MODULE},
           "resources": {"type": "array", "items": RESOURCE}}}


@pytest.fixture(scope="module")
def mta() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "mta.yaml").read_text())


def module(mta: dict[str, Any]) -> dict[str, Any]:
    (app,) = mta["modules"]
    return app


def test_mta_yaml_follows_the_schema_rules_for_the_fields_it_uses(mta: dict[str, Any]) -> None:
    jsonschema.validate(mta, MTA)


@pytest.mark.parametrize(("change", "where"), [
    (lambda m: m.pop("ID"), "ID required"),
    (lambda m: m.update(version="0.2"), "semantic version"),
    (lambda m: m["modules"][0].update(name="notes mcp"), "module name"),
    (lambda m: m["resources"][0]["parameters"].pop("service-plan"), "managed service needs a plan"),
    (lambda m: m["modules"][0]["parameters"].update(memory="256MB"), "memory unit"),
    (lambda m: m["modules"][0]["requires"].append({"nam": "x"}), "requires needs a name"),
])
def test_the_schema_would_notice_a_broken_descriptor(mta: dict[str, Any], change: Any, where: str) -> None:
    broken = json.loads(json.dumps(mta))
    change(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, MTA)


def test_names_are_unique_and_every_requires_resolves(mta: dict[str, Any]) -> None:
    names = [m["name"] for m in mta["modules"]] + [r["name"] for r in mta["resources"]]
    assert len(names) == len(set(names))
    resources = {r["name"]: r for r in mta["resources"]}
    required = [r["name"] for r in module(mta)["requires"]]
    assert set(required) == set(resources)
    services = {resources[n]["parameters"]["service"] for n in required}
    assert services == {"identity", "postgresql-db"}


def test_identity_is_bound_with_an_x509_certificate_and_its_instance_has_the_groups(mta: dict[str, Any]) -> None:
    (ias,) = [r for r in module(mta)["requires"] if r["name"] == "notes-mcp-ias"]
    assert ias["parameters"]["config"]["credential-type"] == "X509_GENERATED"
    resource = next(r for r in mta["resources"] if r["name"] == "notes-mcp-ias")
    assert resource["parameters"]["service-plan"] == "application"
    config = resource["parameters"]["config"]
    assert config["oauth2-configuration"]["token-policy"]["access-token-format"] == "jwt"
    assert config == json.loads((ROOT / "ias-config.json").read_text())  # test_permissions checks the groups


def test_routes_include_the_cert_route_for_mutual_tls(mta: dict[str, Any]) -> None:
    routes = [r["route"] for r in module(mta)["parameters"]["routes"]]
    assert routes == ["${default-host}.${default-domain}", "${default-host}.cert.${default-domain}"]


def test_the_app_runs_as_manifest_yml_runs_it(mta: dict[str, Any]) -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())["applications"][0]
    params = module(mta)["parameters"]
    for key in ("command", "memory", "instances", "health-check-type", "health-check-http-endpoint",
                "readiness-health-check-type", "readiness-health-check-http-endpoint"):
        assert params[key] == manifest[key], key
    assert [params["buildpack"]] == manifest["buildpacks"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert mta["version"] == project["version"]


def _packed(ignore: list[str]) -> set[str]:
    """The files the zip builder packs from the module path: everything not matched by ``ignore``."""
    def ignored(rel: Path) -> bool:
        for pattern in ignore:
            if pattern.endswith("/"):
                if any(fnmatch.fnmatch(part, pattern[:-1]) for part in rel.parts[:-1]):
                    return True
            elif fnmatch.fnmatch(rel.name, pattern) or fnmatch.fnmatch(str(rel), pattern):
                return True
        return False

    files = (p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file())
    return {str(p) for p in files if not ignored(p)}


def test_the_zip_builder_packs_what_the_buildpack_needs_and_no_tests(mta: dict[str, Any]) -> None:
    packed = _packed(module(mta)["build-parameters"]["ignore"])
    assert {"requirements.txt", "runtime.txt", "server/__main__.py", "auth/__init__.py", "tools/notes.py"} <= packed
    assert not any(re.match(r"(tests|bench|deploy|docs|\.git|\.venv|data)/", p) for p in packed)
    cfignore = [line.strip() for line in (ROOT / ".cfignore").read_text().splitlines() if line.strip()]
    assert set(cfignore) <= set(module(mta)["build-parameters"]["ignore"]) | {".cache/"}


def test_cf_deploy_environment_gives_the_settings_the_readme_describes(mta: dict[str, Any]) -> None:
    """What the deploy service hands the app: the module properties as env, the routes, the bindings."""
    app = module(mta)
    resources = {r["name"]: r["parameters"] for r in mta["resources"]}
    host, domain = "notes-mcp", "cfapps.eu10.hana.ondemand.com"
    uris = [r["route"].replace("${default-host}", host).replace("${default-domain}", domain)
            for r in app["parameters"]["routes"]]
    services: dict[str, list[dict[str, Any]]] = {}
    credentials = {
        "identity": {"clientid": "cid", "credential-type": "X509_GENERATED", "url": "https://t.accounts.ondemand.com",
                     "certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"},
        "postgresql-db": {"hostname": "pg.internal", "port": "5432", "dbname": "d", "username": "u",
                          "password": "p", "sslrootcert": CA_PEM},
    }
    for req in app["requires"]:
        params = resources[req["name"]]
        services.setdefault(params["service"], []).append({
            "label": params["service"], "name": params["service-name"], "plan": params["service-plan"],
            "tags": ["postgresql"] if params["service"] == "postgresql-db" else [],
            "credentials": credentials[params["service"]]})
    env = {**{k: str(v) for k, v in app["properties"].items()}, "PORT": "8080",
           "VCAP_APPLICATION": json.dumps({"application_name": app["name"], "application_uris": uris}),
           "VCAP_SERVICES": json.dumps(services)}
    settings = load_server_settings(env)
    assert settings.auth.resource_url == f"https://{host}.{domain}/mcp"
    assert f"{host}.cert.{domain}" in settings.allowed_hosts
    assert settings.host == "0.0.0.0" and settings.log_level == "INFO"
    assert settings.notes_db.host == "pg.internal"  # type: ignore[union-attr]
    assert settings.auth.trust_forwarded_client_cert is False  # a plain route is mapped: the header is not trusted
