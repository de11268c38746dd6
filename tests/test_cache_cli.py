"""``modeldepot cache …``: each command is one Store call, with a table or ``--json``."""

from __future__ import annotations

import json
import os

import pytest
from conftest import requested_bytes, run_cli
from support.models import blob, write_tree
from typer.testing import CliRunner

from cacheagent.cli import cache_app
from cacheagent.store import Store, key_for

runner = CliRunner()


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


@pytest.fixture
def src(tmp_path):
    return str(write_tree(tmp_path / "src", {"w.bin": blob(50_000, "w"), "config.json": b"{}"}))


def cache(*args: str, env: dict | None = None):
    return runner.invoke(cache_app, list(args), env=env)


def test_ensure_then_ls_as_json(store, src):
    r = cache("ensure", src, "--root", str(store.root), "--pin", "team-a", "--json")
    assert r.exit_code == 0, r.output
    r = cache("ls", "--root", str(store.root), "--json")
    (rec,) = json.loads(r.output)
    assert rec["key"] == key_for(src) and rec["state"] == "ready" and rec["pinned_by"] == ["team-a"]
    assert rec["bytes"] == 50_002 and rec["files"] == 2


def test_ls_prints_a_table(store, src):
    store.ensure(src)
    r = cache("ls", "--root", str(store.root))
    header, row = r.output.splitlines()
    assert header.split()[:3] == ["KEY", "STATE", "SIZE"]
    assert row.startswith(key_for(src)) and " ready " in row and row.endswith(src)


def test_root_comes_from_the_environment(store, src):
    store.ensure(src)
    r = cache("du", "--json", env={"MODELDEPOT_CACHE_DIR": str(store.root)})
    assert r.exit_code == 0 and json.loads(r.output)["used"] == 50_002


def test_du_reports_capacity_and_available(store, src):
    store.ensure(src)
    r = cache("du", "--root", str(store.root), "--capacity", "1Mi", "--json")
    doc = json.loads(r.output)
    assert doc == {**doc, "used": 50_002, "capacity": 1 << 20, "available": (1 << 20) - 50_002, "blobs": 2}


def test_pin_and_unpin(store, src):
    key = store.ensure(src).key
    assert json.loads(cache("pin", key, "me", "--root", str(store.root), "--json").output)[0]["pinned_by"] == ["me"]
    assert json.loads(cache("unpin", src, "me", "--root", str(store.root), "--json").output)[0]["pinned_by"] == []


def test_verify_exits_1_naming_the_corrupt_file(store, src):
    key = store.ensure(src).key
    assert cache("verify", "--root", str(store.root)).output.strip() == "OK"
    b = store.root / "models" / key / "w.bin"
    os.chmod(b, 0o644)
    b.write_bytes(b"x" * 50_000)
    r = cache("verify", "--root", str(store.root))
    assert r.exit_code == 1 and f"{key}: w.bin: content does not match" in r.output


def test_scrub_repairs_and_reports_throughput(store, src):
    key = store.ensure(src).key
    b = store.root / "models" / key / "w.bin"
    os.chmod(b, 0o644)
    b.write_bytes(b"x" * 50_000)
    r = cache("scrub", "--root", str(store.root), "--json")
    doc = json.loads(r.output)
    assert r.exit_code == 0 and len(doc["corrupt"]) == 1 and doc["refetched"] == [key] and doc["mb_per_s"] >= 0
    assert store.verify() == []


def test_fsck_reports_and_repairs_debris(store, src):
    store.ensure(src)
    (store.root / "ingest" / ".tmp" / "leftover").write_bytes(b"x")
    r = cache("fsck", "--root", str(store.root), "--no-repair")
    assert r.exit_code == 1 and "INCONSISTENT" in r.output and "leftover" in r.output
    r = cache("fsck", "--root", str(store.root), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["repaired"]
    assert cache("fsck", "--root", str(store.root)).output.strip() == "result: consistent"


def test_gc_and_evict(store, src, tmp_path):
    other = str(write_tree(tmp_path / "other", {"o.bin": blob(60_000, "o")}))
    store.ensure(src)
    store.ensure(other)
    r = cache("evict", "--root", str(store.root), "--capacity", "100000", "--json")
    assert json.loads(r.output) == {"evicted": [key_for(src)]}
    r = cache("gc", "--root", str(store.root), "--json")
    assert json.loads(r.output)["removed_blobs"] == 0


def test_errors_are_one_line_and_exit_1(store, src):
    store.ensure(src, pin="keep")
    r = cache("evict", "--root", str(store.root), "--capacity", "1000")
    assert r.exit_code == 1
    assert r.output.startswith("modeldepot cache: error: ") and r.output.count("\n") == 1


def test_mounted_as_modeldepot_cache(store, src):
    store.ensure(src)
    proc = run_cli("modeldepot", "cache", "ls", "--json", env={"MODELDEPOT_CACHE_DIR": str(store.root)})
    assert proc.returncode == 0, proc.stderr
    assert [r["key"] for r in json.loads(proc.stdout)] == [key_for(src)]


def corrupt_blob_of(store, data: bytes) -> None:
    import xxhash

    b = store.layout.blobs / xxhash.xxh3_128(data).hexdigest()
    os.chmod(b, 0o644)
    with open(b, "r+b") as fh:
        fh.write(b"x" * 100)


def test_verify_repair_refetches_only_the_damaged_file(store, src):
    key = store.ensure(src).key
    kept = (store.root / "models" / key / "config.json").stat().st_ino
    corrupt_blob_of(store, blob(50_000, "w"))
    r = cache("verify", "--repair", "--root", str(store.root))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"{key}: w.bin: content does not match its xxh3")
    assert f"unpublished: {key} (w.bin)" in lines and f"re-fetched: {key}" in lines
    assert lines[-1] == "result: repaired"
    assert cache("verify", "--root", str(store.root)).output.strip() == "OK"
    assert (store.root / "models" / key / "config.json").stat().st_ino == kept, "the intact file was reused"


def test_verify_repair_no_refetch_unpublishes_and_exits_1_until_ensured(store, src):
    key = store.ensure(src).key
    (store.root / "models" / key / "config.json").unlink()
    r = cache("verify", "--quick", "--repair", "--no-refetch", "--root", str(store.root), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["problems"] == [f"{key}: config.json: missing"]
    assert doc["repair"]["unpublished"] == {key: ["config.json"]} and doc["repair"]["refetched"] == []
    assert doc["not_repaired"] == [key]
    assert json.loads(cache("ls", "--root", str(store.root), "--json").output)[0]["state"] == "partial"
    assert cache("ensure", src, "--root", str(store.root)).exit_code == 0
    assert cache("verify", "--root", str(store.root)).output.strip() == "OK"


def test_verify_repair_says_when_the_source_is_gone(store, src):
    key = store.ensure(src).key
    corrupt_blob_of(store, blob(50_000, "w"))
    os.rename(src, src + ".gone")
    r = cache("verify", "--repair", "--root", str(store.root))
    assert r.exit_code == 1
    assert f"failed: {key}: " in r.output and f"not repaired: {key} {src}" in r.output
    assert r.output.splitlines()[-1] == "result: NOT REPAIRED"


def test_verify_repair_refetches_with_the_process_credentials(tmp_path, http_server_factory):
    token = "Bearer repair-" + os.urandom(4).hex()
    www = write_tree(tmp_path / "www", {"m.bin": blob(120_000, "http")})
    server = http_server_factory(www, {"Authorization": token})
    env = {"127.0.0.1-headers": json.dumps({"Authorization": token}), "MODELDEPOT_CACHE_DIR": str(tmp_path / "st")}
    uri = server.url("m.bin")
    assert run_cli("modeldepot", "cache", "ensure", uri, env=env).returncode == 0
    store = Store(tmp_path / "st")
    corrupt_blob_of(store, blob(120_000, "http"))
    server.clear()
    proc = run_cli("modeldepot", "cache", "verify", "--repair", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"re-fetched: {key_for(uri)}" in proc.stdout and token not in proc.stdout + proc.stderr
    gets = [r for r in server.requests if r.method == "GET"]
    assert len(gets) == 1 and requested_bytes(gets, 120_000) == 120_000, "fetched once, with the token"
    assert store.verify() == []
