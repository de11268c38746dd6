"""gs:// downloads against a real GCS JSON-API server (gcp-storage-emulator) on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FAST_RETRY_ENV, REPO
from support.faultproxy import Fault
from support.gcsserver import GCSEmulator
from support.models import MiB, assert_tree_equal, blob, nested_tree

from storage import download, verify
from storage.errors import AccessDeniedError, IntegrityError, NotFoundError
from storage.hashing import fast_crc32c


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = GCSEmulator(tmp_path_factory.mktemp("gcs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gbucket(gcs):
    name = f"t-{uuid.uuid4().hex[:16]}"
    gcs.create_bucket(name)
    return name


def gcs_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": endpoint, **FAST_RETRY_ENV, **extra}


def test_gs_round_trip_of_a_nested_tree_checks_md5(gcs, gbucket, tmp_path):
    files = nested_tree()
    gcs.upload_tree(gbucket, "models/llm", files)
    gcs.upload(gbucket, "models/llm-v2/w.bin", b"WRONG")
    dest = tmp_path / "llm"
    manifest = download(f"gs://{gbucket}/models/llm", dest, env=gcs_env(gcs.endpoint))
    assert_tree_equal(dest, files)
    assert verify(dest) == []
    by_path = manifest.by_path()
    assert set(by_path) == set(files)
    assert all(len(e.source.get("md5", "")) == 32 for e in by_path.values())


def test_gs_zero_byte_objects_are_kept(gcs, gbucket, tmp_path):
    gcs.upload_tree(gbucket, "m", {"empty.txt": b"", "x/also-empty": b"", "w.bin": b"w"})
    dest = tmp_path / "dest"
    download(f"gs://{gbucket}/m", dest, env=gcs_env(gcs.endpoint))
    assert_tree_equal(dest, {"empty.txt": b"", "x/also-empty": b"", "w.bin": b"w"})


def test_gs_exact_object_lists_as_its_basename(gcs, gbucket, tmp_path):
    gcs.upload_tree(gbucket, "m", {"sub/model.onnx": b"onnx", "sub/other": b"no"})
    dest = tmp_path / "dest"
    download(f"gs://{gbucket}/m/sub/model.onnx", dest, env=gcs_env(gcs.endpoint))
    assert_tree_equal(dest, {"model.onnx": b"onnx"})


def test_gs_missing_bucket_names_the_uri_and_the_bucket(gcs, tmp_path):
    with pytest.raises(NotFoundError) as err:
        download("gs://no-such-bucket-here/m", tmp_path / "dest", env=gcs_env(gcs.endpoint))
    assert str(err.value).startswith("gs://no-such-bucket-here/m:")
    assert "bucket 'no-such-bucket-here' does not exist" in str(err.value)
    assert not (tmp_path / "dest").exists()


def test_gs_missing_prefix_is_not_found(gcs, gbucket, tmp_path):
    gcs.upload_tree(gbucket, "m", {"a": b"a"})
    with pytest.raises(NotFoundError, match=rf"gs://{gbucket}/nothing-here: no objects"):
        download(f"gs://{gbucket}/nothing-here", tmp_path / "dest", env=gcs_env(gcs.endpoint))


def test_gs_reset_mid_file_resumes_by_range(gcs, gbucket, fault_proxy, tmp_path):
    data = blob(3 * MiB + 5, "big")
    gcs.upload_tree(gbucket, "m", {"model.safetensors": data, "config.json": b"{}"})
    proxy = fault_proxy(gcs.endpoint)
    proxy.add(Fault.reset(after=MiB, method="GET", path=r"model\.safetensors$", count=1))
    dest = tmp_path / "dest"
    download(f"gs://{gbucket}/m", dest, env=gcs_env(proxy.url))
    assert (dest / "model.safetensors").read_bytes() == data
    gets = proxy.requests_for(r"model\.safetensors$")
    assert gets[0].fault == "reset"
    assert any((r.range_start or 0) >= MiB for r in gets[1:]), [r.range for r in gets]


def test_gs_corrupted_bytes_fail_the_crc32c_check(gcs, gbucket, fault_proxy, tmp_path):
    # The listing gives md5Hash and crc32c: with CRC32C in C (11x faster than MD5) that is checked.
    gcs.upload_tree(gbucket, "m", {"w.bin": blob(200_000, "w")})
    proxy = fault_proxy(gcs.endpoint)
    proxy.add(Fault.corrupt(at=1000, method="GET", path=r"w\.bin$", count=10))
    algorithm = "crc32c" if fast_crc32c() else "md5"
    with pytest.raises(IntegrityError, match=rf"w\.bin failed its {algorithm} check"):
        download(f"gs://{gbucket}/m", tmp_path / "dest", env=gcs_env(proxy.url))
    assert not (tmp_path / "dest").exists()


def test_gs_corrupted_bytes_fail_the_md5_check_without_fast_crc32c(gcs, gbucket, fault_proxy, tmp_path, monkeypatch):
    import storage.hashing

    monkeypatch.setattr(storage.hashing, "fast_crc32c", lambda: False)
    gcs.upload_tree(gbucket, "m", {"w.bin": blob(3 * MiB, "w")})  # ranged parts too: part_size below
    proxy = fault_proxy(gcs.endpoint)
    proxy.add(Fault.corrupt(at=1000, method="GET", path=r"w\.bin$", count=10))
    with pytest.raises(IntegrityError, match=r"w\.bin failed its md5 check"):
        download(f"gs://{gbucket}/m", tmp_path / "dest", part_size=MiB, env=gcs_env(proxy.url))
    assert not (tmp_path / "dest").exists()


def test_gs_file_in_ranged_parts_is_checked_by_crc32c(gcs, gbucket, fault_proxy, tmp_path):
    if not fast_crc32c():
        pytest.skip("google-crc32c's C extension is not installed")
    data = blob(3 * MiB + 7, "parts")
    gcs.upload_tree(gbucket, "m", {"w.bin": data})
    dest = tmp_path / "ok"
    manifest = download(f"gs://{gbucket}/m", dest, part_size=MiB, env=gcs_env(gcs.endpoint))
    assert (dest / "w.bin").read_bytes() == data
    assert set(manifest.by_path()["w.bin"].source) >= {"md5"}, "the file is still known by its MD5"
    proxy = fault_proxy(gcs.endpoint)
    proxy.add(Fault.corrupt(at=5, method="GET", path=r"w\.bin$", count=10, skip=2))
    with pytest.raises(IntegrityError, match=r"w\.bin failed its crc32c check"):
        download(f"gs://{gbucket}/m", tmp_path / "bad", part_size=MiB, env=gcs_env(proxy.url))


class _RefusingTokenServer:
    """An OAuth token endpoint that refuses every grant, as Google does for a revoked key."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _service_account(token_uri: str) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "test", "private_key_id": "0123456789abcdef0123",
            "private_key": pem, "client_email": "sa@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": token_uri}


def test_gs_rejected_service_account_is_access_denied_without_the_key(gcs, gbucket, tmp_path):
    gcs.upload_tree(gbucket, "m", {"a": b"a"})
    tokens = _RefusingTokenServer()
    try:
        sa = _service_account(tokens.url)
        key_file = tmp_path / "sa.json"
        key_file.write_text(json.dumps(sa))
        env = {"GCS_ENDPOINT_URL": gcs.endpoint, "GOOGLE_APPLICATION_CREDENTIALS": str(key_file), **FAST_RETRY_ENV}
        with pytest.raises(AccessDeniedError) as err:
            download(f"gs://{gbucket}/m", tmp_path / "dest", env=env)
    finally:
        tokens.stop()
    message = str(err.value)
    assert message.startswith(f"gs://{gbucket}/m:") and "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "BEGIN PRIVATE KEY" not in message and sa["private_key_id"] not in message


def test_gs_source_uses_plain_json_api_so_emulators_answer_at_once():
    # Recent gcsfs otherwise probes a gRPC control API an emulator cannot answer (~60 s a call).
    code = ("import storage.sources.gcs, gcsfs, os; "
            "print(gcsfs.GCSFileSystem.__module__, os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["gcsfs.core", "false"], out.stderr[-2000:]
