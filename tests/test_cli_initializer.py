"""`storage-initializer SRC DEST [SRC DEST ...]`: KServe's contract, run as a real subprocess."""

from __future__ import annotations

import json

from conftest import run_cli, s3_env_for, stderr_lines
from support.faultproxy import Fault, s3_error
from support.models import MiB, assert_tree_equal, blob, nested_tree, upload_tree

from storage import verify

SECRET = "SEKRETcli0ddb4llValue77"


def test_odd_argument_count_is_usage_error_exit_2():
    proc = run_cli("storage-initializer", "s3://b/m")
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_three_arguments_is_usage_error_exit_2(tmp_path):
    proc = run_cli("storage-initializer", "s3://b/m", str(tmp_path / "d"), "s3://b/other")
    assert proc.returncode == 2
    assert not (tmp_path / "d").exists()


def test_success_exits_0_with_a_verified_dest(s3_client, s3_server, bucket, tmp_path):
    files = nested_tree()
    upload_tree(s3_client, bucket, "m", files)
    dest = tmp_path / "dest"
    proc = run_cli("storage-initializer", f"s3://{bucket}/m", str(dest), env=s3_env_for(s3_server.endpoint))
    assert proc.returncode == 0, proc.stderr
    assert_tree_equal(dest, files)
    assert verify(dest) == []


def test_failure_exits_1_with_one_stderr_line_naming_the_uri(s3_server, bucket, tmp_path):
    uri = f"s3://{bucket}/no/such/model"
    proc = run_cli("storage-initializer", uri, str(tmp_path / "dest"), env=s3_env_for(s3_server.endpoint))
    assert proc.returncode == 1
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert uri in lines[0]
    assert not (tmp_path / "dest").exists()


def test_bad_uri_exits_1_with_one_line(tmp_path):
    proc = run_cli("storage-initializer", "ftp://x/y", str(tmp_path / "dest"))
    assert proc.returncode == 1
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "ftp://x/y" in lines[0], proc.stderr


def test_secret_key_never_printed(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"w.bin": b"w"})
    s3_proxy.add(Fault.status(403, body=s3_error("AccessDenied"), method="GET", count=100))
    env = s3_env_for(s3_proxy.url, AWS_SECRET_ACCESS_KEY=SECRET, MODELDEPOT_PROGRESS_INTERVAL="0.1")
    proc = run_cli("storage-initializer", f"s3://{bucket}/m", str(tmp_path / "dest"), env=env)
    assert proc.returncode == 1
    assert SECRET not in proc.stderr and SECRET not in proc.stdout


def test_secret_header_never_printed_on_success(http_server_factory, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "w.bin").write_bytes(blob(MiB, "w"))
    server = http_server_factory(tmp_path / "www", {"Authorization": f"Bearer {SECRET}"})
    env = {
        "127.0.0.1-headers": json.dumps({"Authorization": f"Bearer {SECRET}"}),
        "MODELDEPOT_PROGRESS_INTERVAL": "0.01",
    }
    proc = run_cli("storage-initializer", server.url("w.bin"), str(tmp_path / "dest"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stderr and SECRET not in proc.stdout


def test_two_pairs_download_concurrently(http_server_factory, fault_proxy, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.bin").write_bytes(blob(200_000, "a"))
    (root / "b.bin").write_bytes(blob(200_000, "b"))
    proxy = fault_proxy(http_server_factory(root).base_url)
    for name in ("a", "b"):
        proxy.add(
            Fault.stall(
                after=1000,
                seconds=1.5,
                method="GET",
                path=rf"/{name}\.bin$",
                when=lambda r: r.range != "bytes=0-0",
            )
        )
    env = {"MODELDEPOT_STALL_TIMEOUT": "30"}
    proc = run_cli(
        "storage-initializer",
        f"{proxy.url}/a.bin",
        str(tmp_path / "da"),
        f"{proxy.url}/b.bin",
        str(tmp_path / "db"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert verify(tmp_path / "da") == [] and verify(tmp_path / "db") == []
    (a,) = [r for r in proxy.requests_for(r"/a\.bin$") if r.fault == "stall"]
    (b,) = [r for r in proxy.requests_for(r"/b\.bin$") if r.fault == "stall"]
    assert a.started < b.finished and b.started < a.finished, "the two pairs ran one after the other"


def test_one_failing_pair_fails_the_run_and_names_its_uri(s3_client, s3_server, bucket, tmp_path):
    upload_tree(s3_client, bucket, "good", {"w.bin": b"w"})
    bad = f"s3://{bucket}/missing"
    proc = run_cli(
        "storage-initializer",
        f"s3://{bucket}/good",
        str(tmp_path / "good"),
        bad,
        str(tmp_path / "bad"),
        env=s3_env_for(s3_server.endpoint),
    )
    assert proc.returncode == 1
    assert any(bad in line for line in stderr_lines(proc)), proc.stderr
    assert not (tmp_path / "bad").exists()


def test_progress_lines_go_to_stderr_without_a_tty(s3_client, bucket, s3_proxy, tmp_path):
    upload_tree(s3_client, bucket, "m", {"big.bin": blob(2 * MiB, "p")})
    s3_proxy.add(Fault.stall(after=MiB, seconds=1.5, method="GET", path=r"/m/big\.bin$"))
    env = s3_env_for(s3_proxy.url, MODELDEPOT_PROGRESS_INTERVAL="0.2", MODELDEPOT_STALL_TIMEOUT="30")
    proc = run_cli("storage-initializer", f"s3://{bucket}/m", str(tmp_path / "dest"), env=env)
    assert proc.returncode == 0, proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) >= 2, proc.stderr
    assert any(ch.isdigit() for ch in "".join(lines))
    assert "\r" not in proc.stderr, "carriage-return progress bars do not belong in a non-TTY log"


def test_storage_allow_patterns_env_applies_to_the_cli(s3_client, s3_server, bucket, tmp_path):
    upload_tree(s3_client, bucket, "m", {"a.json": b"{}", "b.bin": b"b", "c/d.json": b"[]"})
    dest = tmp_path / "dest"
    env = s3_env_for(s3_server.endpoint, STORAGE_ALLOW_PATTERNS='["*.json"]')
    proc = run_cli("storage-initializer", f"s3://{bucket}/m", str(dest), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_tree_equal(dest, {"a.json": b"{}", "c/d.json": b"[]"})


def test_pvc_uri_through_the_cli(tmp_path):
    (tmp_path / "pvcs" / "claim" / "llm").mkdir(parents=True)
    (tmp_path / "pvcs" / "claim" / "llm" / "w.bin").write_bytes(b"w")
    dest = tmp_path / "dest"
    proc = run_cli(
        "storage-initializer",
        "pvc://claim/llm",
        str(dest),
        env={"MODELDEPOT_PVC_ROOT": str(tmp_path / "pvcs")},
    )
    assert proc.returncode == 0, proc.stderr
    assert_tree_equal(dest, {"w.bin": b"w"})


def test_url_token_never_printed_in_progress_or_errors(http_server_factory, tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "w.bin").write_bytes(blob(MiB, "w"))
    server = http_server_factory(tmp_path / "www")
    ok = f"{server.base_url}/w.bin?token={SECRET}"
    missing = f"{server.base_url}/missing.bin?X-Amz-Signature={SECRET}"
    env = {"MODELDEPOT_PROGRESS_INTERVAL": "0.01"}
    proc = run_cli("storage-initializer", ok, str(tmp_path / "d1"), missing, str(tmp_path / "d2"), env=env)
    assert proc.returncode == 1
    assert SECRET not in proc.stderr and SECRET not in proc.stdout
    assert "missing.bin" in proc.stderr
