"""KServe storage-config (STORAGE_CONFIG / STORAGE_OVERRIDE_CONFIG) mapped onto source variables."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import FAST_RETRY_ENV
from support.hfserver import HubServer

from storage import download
from storage.errors import BadURIError
from storage.storageconfig import apply_storage_config, uri_with_bucket


def cfg(config: dict, override: dict | None = None, **env: str) -> dict[str, str]:
    out = {"STORAGE_CONFIG": json.dumps(config), **env}
    if override is not None:
        out["STORAGE_OVERRIDE_CONFIG"] = json.dumps(override)
    return out


def test_s3_keys_map_onto_kserve_aws_variables():
    env = apply_storage_config("s3://b/m", cfg({
        "type": "s3", "endpoint_url": "http://minio:9000", "access_key_id": "AK", "secret_access_key": "SK",
        "region": "eu-west-1", "ca_bundle": "/ca.pem", "verify_ssl": "0", "anonymous": "false"}))
    assert {k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE", "S3_VERIFY_SSL", "awsAnonymousCredential")} == {
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_DEFAULT_REGION": "eu-west-1", "AWS_CA_BUNDLE": "/ca.pem", "S3_VERIFY_SSL": "0",
        "awsAnonymousCredential": "false"}


def test_override_keys_win_and_the_input_is_not_modified():
    base = cfg({"type": "s3", "region": "us-east-1", "access_key_id": "AK"}, {"region": "ap-south-1"})
    env = apply_storage_config("s3://b/m", base)
    assert env["AWS_DEFAULT_REGION"] == "ap-south-1" and env["AWS_ACCESS_KEY_ID"] == "AK"
    assert "AWS_DEFAULT_REGION" not in base


def test_config_for_another_scheme_changes_nothing():
    env = cfg({"type": "s3", "access_key_id": "AK"})
    assert apply_storage_config("gs://b/m", env) == env
    assert apply_storage_config("/local/path", env) == env


def test_bucket_fills_in_a_bucketless_uri():
    env = cfg({"type": "s3", "bucket": "models"})
    assert uri_with_bucket("s3:///llm/v1", env) == "s3://models/llm/v1"
    assert uri_with_bucket("s3://other/llm", env) == "s3://other/llm"


def test_gs_service_account_json_plain_or_base64():
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----x"}
    plain = apply_storage_config("gs://b/m", cfg({"type": "gs", "service_account_json": key}))
    assert json.loads(plain["GOOGLE_APPLICATION_CREDENTIALS_JSON"]) == key
    encoded = base64.b64encode(json.dumps(key).encode()).decode()
    b64 = apply_storage_config("gs://b/m", cfg({"type": "gcs", "base64_service_account": encoded}))
    assert json.loads(b64["GOOGLE_APPLICATION_CREDENTIALS_JSON"]) == key
    with pytest.raises(BadURIError):
        apply_storage_config("gs://b/m", cfg({"type": "gs", "base64_service_account": "not base64!"}))


def test_azure_keys_apply_to_both_uri_forms():
    config = {"type": "azure", "account_name": "acct", "account_key": "KEY", "sas_token": "sv=1&sig=x",
              "client_id": "cid", "client_secret": "csec", "tenant_id": "tid", "endpoint_url": "http://e/acct"}
    for uri in ("az://c/m", "https://acct.blob.core.windows.net/c/m"):
        env = apply_storage_config(uri, cfg(config))
        assert env["AZURE_STORAGE_ACCOUNT_NAME"] == "acct" and env["AZURE_STORAGE_ACCESS_KEY"] == "KEY"
        assert env["AZURE_STORAGE_SAS_TOKEN"] == "sv=1&sig=x" and env["AZURE_STORAGE_BLOB_ENDPOINT"] == "http://e/acct"
        assert (env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"], env["AZURE_TENANT_ID"]) == ("cid", "csec", "tid")


def test_http_headers_become_the_hosts_headers_variable():
    env = apply_storage_config("https://models.example.com/m.bin",
                               cfg({"type": "http", "headers": {"Authorization": "Bearer t"}}))
    assert json.loads(env["models.example.com-headers"]) == {"Authorization": "Bearer t"}


def test_malformed_json_is_a_bad_uri_error_that_does_not_echo_it():
    with pytest.raises(BadURIError) as err:
        apply_storage_config("s3://b/m", {"STORAGE_CONFIG": '{"secret_access_key": "hunter2hunter2"'})
    assert "STORAGE_CONFIG" in str(err.value) and "hunter2" not in str(err.value)


def test_hf_token_from_storage_config_opens_a_gated_repo(tmp_path):
    token = "hf_from_storage_config_123456"
    with HubServer() as hub:
        hub.commit("org/gated", {"config.json": b"{}"}, gated=True, readers={token})
        env = apply_storage_config("hf://org/gated", cfg({"type": "hf", "token": token, "endpoint": hub.url},
                                                          **FAST_RETRY_ENV))
        download("hf://org/gated", tmp_path / "dest", env=env)
    assert (tmp_path / "dest" / "config.json").read_bytes() == b"{}"
