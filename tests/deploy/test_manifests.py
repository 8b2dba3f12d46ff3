"""The Kyma manifests (deploy/kyma): rendered by ``kubectl kustomize``, validated, and consistent.

Core kinds are validated offline against the Kubernetes schemas of ``kubernetes-validate``
(strict: unknown fields fail); the custom resources against the small schemas in
`tests.deploy._crds`, written from their documentation. Then what the issue asks of each object,
and that the objects agree with each other, with the image and with the server's settings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import server.permissions as permissions
from auth import load_settings
from tests.deploy._crds import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kyma"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(BASE)


def test_the_base_renders_the_objects_the_issue_names(docs: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert [k for k in kinds if not k[1].startswith("notes-mcp-config")] == [
        ("APIRule", "notes-mcp"), ("Deployment", "notes-mcp"), ("PodDisruptionBudget", "notes-mcp"),
        ("Service", "notes-mcp"), ("ServiceBinding", "notes-mcp-db-binding"),
        ("ServiceBinding", "notes-mcp-ias-binding"), ("ServiceInstance", "notes-mcp-db"),
        ("ServiceInstance", "notes-mcp-ias")]


def test_core_kinds_pass_the_kubernetes_schemas_strictly(docs: list[dict[str, Any]]) -> None:
    core = [d for d in docs if "/" not in d["apiVersion"] or d["apiVersion"].split("/")[0] in ("apps", "policy")]
    assert {d["kind"] for d in core} == {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    for doc in core:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_strict_validation_would_notice_a_misspelt_field(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_custom_resources_pass_their_documented_schemas(docs: list[dict[str, Any]]) -> None:
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in SCHEMAS]
    assert len(custom) == 5
    for doc in custom:
        jsonschema.validate(doc, SCHEMAS[(doc["apiVersion"], doc["kind"])])


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "rules", 0, "noAuth"), False),                      # noAuth must be true to be the strategy
    (("spec", "rules", 0, "jwt"), {"authentications": []}),       # two strategies on one rule
    (("spec", "rules", 0, "path"), "mcp"),                        # not a path
    (("spec", "hosts"), ["Notes_MCP"]),
    (("spec", "timeout"), 4000),
    (("spec", "rules", 0, "methods"), ["FETCH"]),
    (("spec", "accessStrategies"), []),                          # a v1beta1 field
])
def test_apirule_schema_refuses_what_the_docs_rule_out(docs: list[dict[str, Any]], path: tuple[Any, ...],
                                                       value: Any) -> None:
    rule = yaml.safe_load(yaml.safe_dump(one(docs, "APIRule")))
    target = rule
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, SCHEMAS[("gateway.kyma-project.io/v2", "APIRule")])


def test_deployment_is_restricted_probed_and_sized(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]} and context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # the pod's user is the image's: runAsNonRoot can only check a numeric USER
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user and (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(user.group(1)), int(user.group(2)))
    # writable: /tmp only, in memory (libpq's PEM files)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    assert writable == ["/tmp"] and volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
    # the SIGTERM drain (8 s) and the preStop pause fit in the grace period
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + 8


def test_bindings_are_mounted_where_the_settings_read_them(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    root = env["SERVICE_BINDING_ROOT"]["value"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounted = {volumes[m["name"]]["secret"]["secretName"]: m["mountPath"] for m in container["volumeMounts"]
               if "secret" in volumes[m["name"]]}
    bindings = {d["spec"]["secretName"]: d for d in docs if d["kind"] == "ServiceBinding"}
    assert set(mounted) == set(bindings)
    assert all(path.startswith(root + "/") and path.count("/") == root.count("/") + 1 for path in mounted.values())
    instances = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceInstance"}
    offerings = {instances[b["spec"]["serviceInstanceName"]]["spec"]["serviceOfferingName"] for b in bindings.values()}
    assert offerings == {"identity", "postgresql-db"}
    ias = bindings["notes-mcp-ias-binding"]["spec"]
    assert ias["parameters"]["credential-type"] == "X509_GENERATED"
    assert env["HOST"]["value"] == "0.0.0.0" and env["PORT"]["value"] == str(container["ports"][0]["containerPort"])


def test_config_map_reference_resolves_to_the_resource_url(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config = [d for d in docs if d["kind"] == "ConfigMap"]
    refs = {e["valueFrom"]["configMapKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {config[0]["metadata"]["name"]}  # the generated name, hash suffix included
    env = {e["name"]: e for e in container["env"]}
    url = env["MCP_RESOURCE_URL"]["value"].replace("$(PUBLIC_HOST)", config[0]["data"]["PUBLIC_HOST"])
    settings = load_settings({"MCP_RESOURCE_URL": url, "MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com",
                              "MCP_AUTH_AUDIENCE": "x"})
    assert settings.resource_url == "https://notes-mcp.example.kyma.ondemand.com/mcp"


def test_service_pdb_and_apirule_point_at_the_pods(docs: list[dict[str, Any]]) -> None:
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    port = service["spec"]["ports"][0]
    assert port["targetPort"] == deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    rule = one(docs, "APIRule")
    assert rule["spec"]["service"] == {"name": service["metadata"]["name"], "port": port["port"]}


def test_apirule_keeps_mcp_discovery_working(docs: list[dict[str, Any]]) -> None:
    """No gateway token check on the MCP path or the metadata: the app's 401 challenge must reach clients."""
    rules = {r["path"]: r for r in one(docs, "APIRule")["spec"]["rules"]}
    assert set(rules) == {"/mcp", "/.well-known/oauth-protected-resource",
                          "/.well-known/oauth-protected-resource/{**}"}
    assert all(r.get("noAuth") is True and "jwt" not in r for r in rules.values())
    assert "POST" in rules["/mcp"]["methods"] and rules["/.well-known/oauth-protected-resource/{**}"]["methods"] == [
        "GET"]
    assert "/health" not in rules and "/*" not in rules  # probes stay inside the cluster


def test_overlay_sets_image_host_and_plan_the_documented_way(tmp_path: Path) -> None:
    folder = tmp_path / "overlay"
    folder.mkdir()
    base = os.path.relpath(BASE, folder)  # kustomize takes bases by relative path (or a git URL)
    (folder / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: notes
resources:
  - {base}
components:
  - {base}/components/xsuaa
images:
  - name: notes-mcp
    newName: registry.example.com/team/notes-mcp
    newTag: "1.2.3"
configMapGenerator:
  - name: notes-mcp-config
    behavior: merge
    literals:
      - PUBLIC_HOST=notes-mcp.c-1a2b3c.kyma.ondemand.com
patches:
  - target: {{kind: ServiceInstance, name: notes-mcp-db}}
    patch: |-
      - op: replace
        path: /spec/servicePlanName
        value: standard
""")
    docs = render(folder)
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/team/notes-mcp:1.2.3"
    config = one(docs, "ConfigMap")
    assert config["data"]["PUBLIC_HOST"] == "notes-mcp.c-1a2b3c.kyma.ondemand.com"
    assert {e["valueFrom"]["configMapKeyRef"]["name"] for e in container["env"] if "valueFrom" in e} == {
        config["metadata"]["name"]}
    assert one(docs, "ServiceInstance", "notes-mcp-db")["spec"]["servicePlanName"] == "standard"
    assert {d["metadata"].get("namespace") for d in docs} == {"notes"}
    # the XSUAA component: its binding is mounted next to the others and its scopes are the tools' groups
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/bindings/notes-mcp-xsuaa" in mounts
    xsuaa = one(docs, "ServiceInstance", "notes-mcp-xsuaa")
    scopes = {s["name"].removeprefix("$XSAPPNAME.") for s in xsuaa["spec"]["parameters"]["scopes"]}
    assert scopes == permissions.required_groups()
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[(doc["apiVersion"], doc["kind"])])
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
