"""`modeldepot download` and `modeldepot verify`, run as real subprocesses."""

from __future__ import annotations

import pytest
from conftest import run_cli, s3_env_for
from support.models import assert_tree_equal, blob, upload_tree

from storage import download, verify

FILES = {
    "config.json": b"{}",
    "model.safetensors": blob(100_000, "st"),
    "pytorch_model.bin": blob(1000, "pt"),
    "sub/extra.json": b'{"x": 1}',
}


@pytest.fixture
def model(s3_client, bucket):
    upload_tree(s3_client, bucket, "m", FILES)
    return f"s3://{bucket}/m"


@pytest.fixture
def downloaded(model, s3_server, tmp_path):
    dest = tmp_path / "dest"
    download(model, dest, env=s3_env_for(s3_server.endpoint))
    return dest


def test_download_with_include_exclude_and_concurrency(model, s3_server, tmp_path):
    dest = tmp_path / "dest"
    proc = run_cli(
        "modeldepot",
        "download",
        model,
        str(dest),
        "--include",
        "*.json",
        "--include",
        "*.safetensors",
        "--exclude",
        "sub/*",
        "--concurrency",
        "2",
        env=s3_env_for(s3_server.endpoint),
    )
    assert proc.returncode == 0, proc.stderr
    assert_tree_equal(dest, {k: FILES[k] for k in ("config.json", "model.safetensors")})
    assert verify(dest) == []


def test_download_failure_exits_1(s3_server, bucket, tmp_path):
    proc = run_cli(
        "modeldepot",
        "download",
        f"s3://{bucket}/nope",
        str(tmp_path / "d"),
        env=s3_env_for(s3_server.endpoint),
    )
    assert proc.returncode == 1
    assert f"s3://{bucket}/nope" in proc.stderr


def test_verify_of_an_intact_dest_exits_0(downloaded):
    proc = run_cli("modeldepot", "verify", str(downloaded))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_detects_a_flipped_byte(downloaded):
    path = downloaded / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x01
    path.write_bytes(bytes(data))
    proc = run_cli("modeldepot", "verify", str(downloaded))
    assert proc.returncode == 1
    assert "model.safetensors" in proc.stdout + proc.stderr
    assert "config.json" not in proc.stdout + proc.stderr


def test_verify_detects_a_deleted_file(downloaded):
    (downloaded / "sub" / "extra.json").unlink()
    proc = run_cli("modeldepot", "verify", str(downloaded))
    assert proc.returncode == 1
    assert "sub/extra.json" in proc.stdout + proc.stderr


def test_verify_detects_an_extra_file(downloaded):
    (downloaded / "intruder.bin").write_bytes(b"x")
    proc = run_cli("modeldepot", "verify", str(downloaded))
    assert proc.returncode == 1
    assert "intruder.bin" in proc.stdout + proc.stderr


def test_verify_of_a_dest_without_manifest_exits_1(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    proc = run_cli("modeldepot", "verify", str(tmp_path / "d"))
    assert proc.returncode == 1


def test_library_verify_reports_flipped_and_deleted_files(downloaded):
    path = downloaded / "pytorch_model.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    (downloaded / "config.json").unlink()
    problems = verify(downloaded)
    assert any(p.startswith("pytorch_model.bin") for p in problems)
    assert any(p.startswith("config.json") for p in problems)
    assert len(problems) == 2
