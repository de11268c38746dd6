"""Azure Blob downloads (az:// and https://ACCOUNT.blob.core.windows.net) against Azurite."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FAST_RETRY_ENV
from support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite_binary
from support.faultproxy import Fault
from support.models import MiB, assert_tree_equal, blob, nested_tree

from storage import download, verify
from storage.errors import AccessDeniedError, IntegrityError, NotFoundError
from storage.manifest import read_manifest

pytestmark = pytest.mark.skipif(azurite_binary() is None, reason="azurite-blob not installed (tests/deps/npm.txt)")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def container(azurite):
    name = f"t-{uuid.uuid4().hex[:16]}"
    azurite.client().create_container(name)
    return name


def key_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"AZURE_STORAGE_BLOB_ENDPOINT": endpoint, "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY, **FAST_RETRY_ENV, **extra}


def test_az_round_trip_of_a_nested_tree_checks_content_md5(azurite, container, tmp_path):
    files = nested_tree()
    azurite.upload_tree(container, "models/llm", files)
    azurite.upload_tree(container, "models/llm-v2", {"w.bin": b"WRONG"})
    dest = tmp_path / "dest"
    manifest = download(f"az://{container}/models/llm", dest, env=key_env(azurite.endpoint))
    assert_tree_equal(dest, files)
    assert verify(dest) == []
    weights = manifest.by_path()["model.safetensors"]
    assert weights.source["md5"] == hashlib.md5(files["model.safetensors"]).hexdigest()


def test_account_url_form_and_zero_byte_blobs(azurite, container, tmp_path):
    files = {"empty.txt": b"", "x/also-empty": b"", "w.bin": b"w"}
    azurite.upload_tree(container, "m", files)
    dest = tmp_path / "dest"
    download(f"https://{ACCOUNT}.blob.core.windows.net/{container}/m", dest, env=key_env(azurite.endpoint))
    assert_tree_equal(dest, files)


def test_connection_string_alone_is_enough(azurite, container, tmp_path):
    azurite.upload_tree(container, "m", {"a.bin": b"a"})
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, **FAST_RETRY_ENV}
    download(f"az://{container}/m", tmp_path / "dest", env=env)
    assert (tmp_path / "dest" / "a.bin").read_bytes() == b"a"


def test_sas_token_in_the_url_is_used_and_kept_out_of_the_manifest(azurite, container, tmp_path):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    azurite.upload_tree(container, "m", {"a.bin": b"sas"})
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    env = {"AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint, **FAST_RETRY_ENV}
    dest = tmp_path / "dest"
    download(f"https://{ACCOUNT}.blob.core.windows.net/{container}/m?{sas}", dest, env=env)
    assert (dest / "a.bin").read_bytes() == b"sas"
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    assert signature not in (dest / ".modeldepot" / "manifest.json").read_text()
    assert "REDACTED" in read_manifest(dest).source


def test_az_missing_container_names_it(azurite, tmp_path):
    with pytest.raises(NotFoundError) as err:
        download("az://no-such-container/m", tmp_path / "dest", env=key_env(azurite.endpoint))
    assert str(err.value).startswith("az://no-such-container/m: container 'no-such-container' does not exist")


def test_az_missing_prefix_is_not_found(azurite, container, tmp_path):
    azurite.upload_tree(container, "m", {"a": b"a"})
    with pytest.raises(NotFoundError, match="no blobs under this prefix"):
        download(f"az://{container}/nothing", tmp_path / "dest", env=key_env(azurite.endpoint))


def test_az_wrong_key_is_access_denied_and_never_printed(azurite, container, tmp_path):
    azurite.upload_tree(container, "m", {"a": b"a"})
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    with pytest.raises(AccessDeniedError) as err:
        download(f"az://{container}/m", tmp_path / "dest", env=key_env(azurite.endpoint, AZURE_STORAGE_ACCESS_KEY=wrong))
    assert str(err.value).startswith(f"az://{container}/m: access denied")
    assert wrong not in str(err.value) and ACCOUNT_KEY not in str(err.value)


def test_az_reset_mid_file_resumes_by_range(azurite, container, fault_proxy, tmp_path):
    data = blob(3 * MiB + 3, "big")
    azurite.upload_tree(container, "m", {"model.safetensors": data, "config.json": b"{}"})
    proxy = fault_proxy(f"http://127.0.0.1:{azurite.port}")
    proxy.add(Fault.reset(after=MiB // 2, method="GET", path=r"model\.safetensors$", count=1))
    dest = tmp_path / "dest"
    download(f"az://{container}/m", dest, env=key_env(f"{proxy.url}/{ACCOUNT}"))
    assert (dest / "model.safetensors").read_bytes() == data
    gets = proxy.requests_for(r"model\.safetensors$")
    assert gets[0].fault == "reset"
    starts = [int(r.headers.get("x-ms-range", "bytes=0-").split("=")[1].split("-")[0]) for r in gets[1:]]
    assert any(s > 0 for s in starts), [r.headers.get("x-ms-range") for r in gets]


def test_az_corrupted_bytes_fail_the_md5_check(azurite, container, fault_proxy, tmp_path):
    azurite.upload_tree(container, "m", {"w.bin": blob(200_000, "w")})
    proxy = fault_proxy(f"http://127.0.0.1:{azurite.port}")
    proxy.add(Fault.corrupt(at=500, method="GET", path=r"w\.bin$", count=10))
    with pytest.raises(IntegrityError, match="md5"):
        download(f"az://{container}/m", tmp_path / "dest", env=key_env(f"{proxy.url}/{ACCOUNT}"))
    assert not (tmp_path / "dest").exists()
