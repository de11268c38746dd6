"""KServe's storage-config: ``STORAGE_CONFIG`` JSON (+ ``STORAGE_OVERRIDE_CONFIG``) → source env vars.

KServe's webhook puts one entry of the ``storage-config`` secret into the init container as
``STORAGE_CONFIG`` (a JSON object with a ``type``), and a per-InferenceService
``storage.parameters`` map as ``STORAGE_OVERRIDE_CONFIG``; override keys win. We translate the
entry onto the environment variables each source already reads, so sources never see it.
A config whose ``type`` does not match the URI's scheme is ignored (it is meant for another
source); variables the config does not mention are left as they were, and the config's values
win over ones already in the environment (KServe does the same).

| type    | key                      | becomes                                   | notes                                  |
|---------|--------------------------|-------------------------------------------|----------------------------------------|
| `s3`    | `endpoint_url`           | `AWS_ENDPOINT_URL`                        | e.g. `http://minio:9000`               |
| `s3`    | `access_key_id`          | `AWS_ACCESS_KEY_ID`                       |                                        |
| `s3`    | `secret_access_key`      | `AWS_SECRET_ACCESS_KEY`                   |                                        |
| `s3`    | `session_token`          | `AWS_SESSION_TOKEN`                       | temporary credentials                  |
| `s3`    | `region`                 | `AWS_DEFAULT_REGION`                      |                                        |
| `s3`    | `ca_bundle`              | `AWS_CA_BUNDLE`                           | path to a PEM bundle                   |
| `s3`    | `verify_ssl`             | `S3_VERIFY_SSL`                           | `"0"`/`false` turns TLS checks off      |
| `s3`    | `anonymous`              | `awsAnonymousCredential`                  | `"true"`: unsigned requests            |
| `s3`    | `virtual_bucket`         | `S3_USER_VIRTUAL_BUCKET`                  | `"true"`: virtual-hosted addressing     |
| `s3`    | `bucket`                 | (URI)                                     | fills in `s3:///path` (no bucket)       |
| `gs`    | `service_account_json`   | `GOOGLE_APPLICATION_CREDENTIALS_JSON`     | the key file's JSON (string or object) |
| `gs`    | `base64_service_account` | `GOOGLE_APPLICATION_CREDENTIALS_JSON`     | the same, base64-encoded               |
| `gs`    | `credentials_file`       | `GOOGLE_APPLICATION_CREDENTIALS`          | path to a mounted key file             |
| `gs`    | `endpoint_url`           | `GCS_ENDPOINT_URL`                        | custom JSON-API endpoint               |
| `gs`    | `anonymous`              | `GCS_ANONYMOUS`                           | `"true"`: public buckets               |
| `gs`    | `bucket`                 | (URI)                                     | fills in `gs:///path`                   |
| `azure` | `account_name`           | `AZURE_STORAGE_ACCOUNT_NAME`              | needed for `az://` with a key          |
| `azure` | `account_key`            | `AZURE_STORAGE_ACCESS_KEY`                |                                        |
| `azure` | `connection_string`      | `AZURE_STORAGE_CONNECTION_STRING`         |                                        |
| `azure` | `sas_token`              | `AZURE_STORAGE_SAS_TOKEN`                 | with or without the leading `?`        |
| `azure` | `client_id`              | `AZURE_CLIENT_ID`                         | service principal                      |
| `azure` | `client_secret`          | `AZURE_CLIENT_SECRET`                     | service principal                      |
| `azure` | `tenant_id`              | `AZURE_TENANT_ID`                         | service principal                      |
| `azure` | `endpoint_url`           | `AZURE_STORAGE_BLOB_ENDPOINT`             | emulator / sovereign cloud endpoint    |
| `azure` | `authority_host`         | `AZURE_AUTHORITY_HOST`                    | sovereign-cloud Entra ID               |
| `hf`    | `token`                  | `HF_TOKEN`                                |                                        |
| `hf`    | `endpoint`               | `HF_ENDPOINT`                             | mirrors, private hubs                  |
| `http`  | `headers`                | `<hostname>-headers`                      | JSON object of header → value          |

Types are also accepted under their other spellings: `gcs`/`gs`, `azure`/`az`/`azureblob`,
`hf`/`huggingface`, `http`/`https`/`uri`. Unknown keys are ignored (KServe ignores them too);
a malformed JSON document is a BadURIError naming the variable, never echoing its content.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from urllib.parse import urlsplit

from storage.config import json_object_env
from storage.errors import BadURIError

_TYPES = {
    "s3": "s3",
    "gs": "gs", "gcs": "gs",
    "azure": "azure", "az": "azure", "azureblob": "azure",
    "hf": "hf", "huggingface": "hf",
    "http": "http", "https": "http", "uri": "http",
}

_PLAIN = {
    "s3": {
        "endpoint_url": "AWS_ENDPOINT_URL",
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
        "region": "AWS_DEFAULT_REGION",
        "ca_bundle": "AWS_CA_BUNDLE",
        "verify_ssl": "S3_VERIFY_SSL",
        "anonymous": "awsAnonymousCredential",
        "virtual_bucket": "S3_USER_VIRTUAL_BUCKET",
    },
    "gs": {
        "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
        "endpoint_url": "GCS_ENDPOINT_URL",
        "anonymous": "GCS_ANONYMOUS",
    },
    "azure": {
        "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
        "account_key": "AZURE_STORAGE_ACCESS_KEY",
        "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
        "sas_token": "AZURE_STORAGE_SAS_TOKEN",
        "client_id": "AZURE_CLIENT_ID",
        "client_secret": "AZURE_CLIENT_SECRET",
        "tenant_id": "AZURE_TENANT_ID",
        "endpoint_url": "AZURE_STORAGE_BLOB_ENDPOINT",
        "authority_host": "AZURE_AUTHORITY_HOST",
    },
    "hf": {
        "token": "HF_TOKEN",
        "endpoint": "HF_ENDPOINT",
    },
    "http": {},
}


def _scheme_type(uri: str) -> str | None:
    """Which config type serves ``uri`` (None for local paths, pvc://, oci://)."""
    lower = uri.lower()
    scheme = lower.split("://", 1)[0] if "://" in lower else ""
    if scheme == "https" and (".blob.core.windows.net" in lower or ".blob.storage.azure.net" in lower):
        return "azure"
    return {"s3": "s3", "gs": "gs", "az": "azure", "hf": "hf", "http": "http", "https": "http"}.get(scheme)


def _load(env: Mapping[str, str], name: str) -> dict:
    return json_object_env(env, name, "a JSON object (one storage-config entry)")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def storage_config(env: Mapping[str, str]) -> dict:
    """The merged storage-config entry: ``STORAGE_CONFIG`` updated by ``STORAGE_OVERRIDE_CONFIG``."""
    config = _load(env, "STORAGE_CONFIG")
    config.update(_load(env, "STORAGE_OVERRIDE_CONFIG"))
    return config


def apply_storage_config(uri: str, env: Mapping[str, str]) -> dict:
    """``env`` with the storage-config entry mapped onto the variables ``uri``'s source reads.

    Returns a new dict (``env`` is not modified). Without a config, or with one whose ``type``
    is for another scheme, the result equals ``env``. Raises BadURIError for malformed JSON or a
    malformed value (a base64 key that does not decode, headers that are not an object).
    """
    out = dict(env)
    config = storage_config(env)
    if not config:
        return out
    kind = _TYPES.get(str(config.get("type", "")).strip().lower())
    if kind is None or kind != _scheme_type(uri):
        return out
    for key, var in _PLAIN[kind].items():
        if config.get(key) is not None and config.get(key) != "":
            out[var] = _text(config[key])
    if kind == "gs":
        if config.get("service_account_json"):
            out["GOOGLE_APPLICATION_CREDENTIALS_JSON"] = _text(config["service_account_json"])
        elif config.get("base64_service_account"):
            try:
                decoded = base64.b64decode(str(config["base64_service_account"]), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise BadURIError("storage-config: base64_service_account is not base64 of a JSON key file") from None
            out["GOOGLE_APPLICATION_CREDENTIALS_JSON"] = decoded
    if kind == "http" and config.get("headers") is not None:
        headers = config["headers"]
        if isinstance(headers, str):
            try:
                headers = json.loads(headers)
            except json.JSONDecodeError:
                raise BadURIError("storage-config: headers is not a JSON object of header names to values") from None
        if not isinstance(headers, dict):
            raise BadURIError("storage-config: headers is not a JSON object of header names to values")
        host = urlsplit(uri).hostname
        if host:
            out[f"{host}-headers"] = json.dumps({str(k): str(v) for k, v in headers.items()})
    return out


def uri_with_bucket(uri: str, env: Mapping[str, str]) -> str:
    """``s3:///path`` / ``gs:///path`` completed with the config's ``bucket`` (KServe's
    storage spec carries the bucket separately from the path); other URIs are returned as given."""
    config = storage_config(env)
    kind = _TYPES.get(str(config.get("type", "")).strip().lower())
    bucket = config.get("bucket")
    for scheme in ("s3", "gs"):
        if kind == scheme and bucket and uri.lower().startswith(f"{scheme}:///"):
            return f"{scheme}://{bucket}/{uri[len(scheme) + 4:]}"
    return uri
