"""Small JSON schemas for the custom resources the Kyma manifests use, written from their documentation.

Only the fields we use, plus the constraints their documentation states for them; anything else
is refused (``additionalProperties: false``), so a typo or a field from another API version fails.

* APIRule ``gateway.kyma-project.io/v2`` (Kyma API Gateway, "APIRule Custom Resource"): ``hosts``
  (1 item: a short host label, an FQDN or ``*.`` + FQDN, at most 255 characters), ``service``
  (``name``, ``namespace``, ``port`` 1-65535), ``gateway`` (``namespace/name``, at most 127),
  ``timeout`` (1-3900), ``rules`` (at least one: ``path`` as the documented pattern, ``methods``
  from the HTTP method enum, exactly one of ``noAuth``, ``jwt``, ``extAuth``).
* ServiceInstance and ServiceBinding ``services.cloud.sap.com/v1`` (SAP BTP service operator):
  ``serviceOfferingName``/``servicePlanName`` (non-empty), ``externalName`` (at most 100),
  ``parameters`` (any object); ``serviceInstanceName``, ``secretName``, ``secretKey``,
  ``secretRootKey``, ``credentialsRotationPolicy`` (``enabled``, ``rotationFrequency``,
  ``rotatedBindingTTL``).
"""

from __future__ import annotations

from typing import Any

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST = rf"^({_LABEL}|(\*\.)?{_LABEL}(\.{_LABEL})+)$"
_PATH = r"^((\/([A-Za-z0-9-._~!$&'()+,;=:@]|%[0-9a-fA-F]{2})*)|(\/\{\*{1,2}\}))+$|^\/\*$"
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
_DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"

_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": rf"^{_LABEL}$", "maxLength": 63},
                   "namespace": {"type": "string"}, "labels": {"type": "object"},
                   "annotations": {"type": "object"}},
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                       "metadata": _METADATA, "spec": spec},
        "additionalProperties": False,
    }


_SERVICE: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1},
                   "namespace": {"type": "string", "pattern": rf"^{_LABEL}$"},
                   "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
    "additionalProperties": False,
}
_JWT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "authentications": {"type": "array", "items": {
            "type": "object", "properties": {"issuer": {"type": "string"}, "jwksUri": {"type": "string"}},
            "additionalProperties": False}},
        "authorizations": {"type": "array", "items": {
            "type": "object", "properties": {"requiredScopes": {"type": "array", "items": {"type": "string"}},
                                             "audiences": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": False}},
    },
    "additionalProperties": False,
}
_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["path", "methods"],
    "properties": {
        "path": {"type": "string", "pattern": _PATH},
        "methods": {"type": "array", "minItems": 1, "items": {"enum": _METHODS}, "uniqueItems": True},
        "noAuth": {"type": "boolean"},
        "jwt": _JWT,
        "extAuth": {"type": "object"},
        "service": _SERVICE,
        "timeout": {"type": "integer", "minimum": 1, "maximum": 3900},
        "request": {"type": "object", "properties": {
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "cookies": {"type": "object", "additionalProperties": {"type": "string"}}},
            "additionalProperties": False},
    },
    # exactly one access strategy per rule
    "oneOf": [
        {"required": ["noAuth"], "properties": {"noAuth": {"const": True}}, "not": {"anyOf": [
            {"required": ["jwt"]}, {"required": ["extAuth"]}]}},
        {"required": ["jwt"], "not": {"anyOf": [{"required": ["noAuth"]}, {"required": ["extAuth"]}]}},
        {"required": ["extAuth"], "not": {"anyOf": [{"required": ["noAuth"]}, {"required": ["jwt"]}]}},
    ],
    "additionalProperties": False,
}

APIRULE = _resource("gateway.kyma-project.io/v2", "APIRule", {
    "type": "object",
    "required": ["hosts", "rules"],
    "properties": {
        "hosts": {"type": "array", "minItems": 1, "maxItems": 1,
                  "items": {"type": "string", "maxLength": 255, "pattern": _HOST}},
        "service": _SERVICE,
        "gateway": {"type": "string", "maxLength": 127, "pattern": rf"^{_LABEL}/{_LABEL}$"},
        "timeout": {"type": "integer", "minimum": 1, "maximum": 3900},
        "rules": {"type": "array", "minItems": 1, "items": _RULE},
    },
    "additionalProperties": False,
})

SERVICE_INSTANCE = _resource("services.cloud.sap.com/v1", "ServiceInstance", {
    "type": "object",
    "required": ["serviceOfferingName", "servicePlanName"],
    "properties": {
        "serviceOfferingName": {"type": "string", "minLength": 1},
        "servicePlanName": {"type": "string", "minLength": 1},
        "externalName": {"type": "string", "maxLength": 100},
        "parameters": {"type": "object"},
        "customTags": {"type": "array", "items": {"type": "string"}},
        "shared": {"type": "boolean"},
    },
    "additionalProperties": False,
})

SERVICE_BINDING = _resource("services.cloud.sap.com/v1", "ServiceBinding", {
    "type": "object",
    "required": ["serviceInstanceName"],
    "properties": {
        "serviceInstanceName": {"type": "string", "minLength": 1},
        "externalName": {"type": "string", "maxLength": 100},
        "secretName": {"type": "string", "pattern": rf"^{_LABEL}(\.{_LABEL})*$"},
        "secretKey": {"type": "string"},
        "secretRootKey": {"type": "string"},
        "parameters": {"type": "object"},
        "credentialsRotationPolicy": {
            "type": "object", "required": ["enabled"],
            "properties": {"enabled": {"type": "boolean"},
                           "rotationFrequency": {"type": "string", "pattern": _DURATION},
                           "rotatedBindingTTL": {"type": "string", "pattern": _DURATION}},
            "additionalProperties": False},
    },
    "additionalProperties": False,
})

SCHEMAS = {
    ("gateway.kyma-project.io/v2", "APIRule"): APIRULE,
    ("services.cloud.sap.com/v1", "ServiceInstance"): SERVICE_INSTANCE,
    ("services.cloud.sap.com/v1", "ServiceBinding"): SERVICE_BINDING,
}
