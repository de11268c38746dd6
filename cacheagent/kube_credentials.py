"""Credentials for a cache's download: a Secret's keys (or a service account's Secrets) as env.

A LocalModelCache names them with ``spec.credentials`` (``secretName`` and/or
``serviceAccountName``, in ``namespace``, default: the agent's own namespace) or KServe's
``spec.serviceAccountName``. Every key whose name is a valid environment variable (AWS_*,
GOOGLE_*, AZURE_*, HF_TOKEN, ...) becomes one for the engine, and so does KServe's
``<hostname>-headers`` (a JSON object of HTTP headers); KServe's S3 annotations on the
Secret (``serving.kserve.io/s3-endpoint``, ``s3-usehttps``, ``s3-region``) are honoured. They are
read at download time, so a rotated Secret is used on the next attempt, and never logged: errors
name the Secret, not its contents.
"""

from __future__ import annotations

import base64
import re

from kubernetes import client
from kubernetes.client.rest import ApiException

from cacheagent.reconcile_select import CacheSpec
from storage.errors import AccessDeniedError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KSERVE = "serving.kserve.io/"


class CredentialsError(AccessDeniedError):
    """The Secret or service account a cache names cannot be read."""


class KubeCredentials:
    def __init__(self, api: client.ApiClient, default_namespace: str):
        self.core = client.CoreV1Api(api)
        self.default_namespace = default_namespace

    def __call__(self, spec: CacheSpec) -> dict[str, str]:
        ref = spec.credentials or {}
        namespace = ref.get("namespace") or self.default_namespace
        env: dict[str, str] = {}
        if ref.get("serviceAccountName"):
            env.update(self._service_account_env(ref["serviceAccountName"], namespace))
        if ref.get("secretName"):
            env.update(self._secret_env(ref["secretName"], namespace))
        return env

    def _service_account_env(self, name: str, namespace: str) -> dict[str, str]:
        try:
            sa = self.core.read_namespaced_service_account(name, namespace, _request_timeout=15)
        except ApiException as exc:
            raise CredentialsError(f"service account {namespace}/{name}: cannot read it ({exc.status}); "
                                   "check that it exists and the agent may get it") from None
        env: dict[str, str] = {}
        for ref in sa.secrets or []:
            env.update(self._secret_env(ref.name, namespace))
        return env

    def _secret_env(self, name: str, namespace: str) -> dict[str, str]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=15)
        except ApiException as exc:
            raise CredentialsError(f"secret {namespace}/{name}: cannot read it ({exc.status}); "
                                   "check that it exists and the agent may get it") from None
        return secret_env(secret.data or {}, (secret.metadata.annotations or {}) if secret.metadata else {})


def secret_env(data: dict[str, str], annotations: dict[str, str]) -> dict[str, str]:
    """Env variables from a Secret's base64 ``data`` and KServe's S3 annotations."""
    env = {}
    for key, value in data.items():
        if _ENV_NAME.match(key) or key.endswith("-headers"):
            env[key] = base64.b64decode(value).decode("utf-8", "replace")
    endpoint = annotations.get(_KSERVE + "s3-endpoint")
    if endpoint:
        scheme = "http" if annotations.get(_KSERVE + "s3-usehttps", "1") == "0" else "https"
        env.setdefault("AWS_ENDPOINT_URL", endpoint if "://" in endpoint else f"{scheme}://{endpoint}")
    if annotations.get(_KSERVE + "s3-region"):
        env.setdefault("AWS_DEFAULT_REGION", annotations[_KSERVE + "s3-region"])
    return env
