"""The node store's contract, one behaviour per test, with local-directory sources."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from support.models import MiB, blob, read_tree, write_tree

from cacheagent.store import Store, key_for
from storage import CapacityError, NotFoundError, verify

SHARED = blob(1 * MiB, "shared-weights")


def model(tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    return str(write_tree(tmp_path / "src" / name, files))


def blob_path(store: Store, data: bytes) -> Path:
    import xxhash

    return store.layout.blobs / xxhash.xxh3_128(data).hexdigest()


def keys(store: Store) -> list[str]:
    return sorted(r.key for r in store.list() if r.state == "ready")


def test_key_is_kserves_storage_key():
    import hashlib

    uri = "s3://bucket/models/llama"
    assert key_for(uri) == hashlib.sha256(uri.encode()).hexdigest()[:16]
    assert key_for(uri, include=["*.json"]) != key_for(uri)


def test_ensure_publishes_a_verified_model_of_hard_links_into_blobs(tmp_path):
    files = {"config.json": b'{"a": 1}', "w/model.bin": blob(300_000, "w")}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    record = store.ensure(src)
    published = store.root / "models" / record.key
    assert record.state == "ready" and record.bytes == sum(map(len, files.values())) and record.files == 2
    assert read_tree(published) == files
    assert verify(published) == []
    for rel, data in files.items():
        b = blob_path(store, data)
        assert os.path.samefile(published / rel, b)
        assert b.stat().st_mode & 0o222 == 0, "blobs are read-only"
    assert store.verify() == []


def test_store_never_shares_an_inode_with_a_local_source(tmp_path):
    src = model(tmp_path, "m", {"w.bin": blob(50_000, "x")})
    store = Store(tmp_path / "store")
    store.ensure(src)
    src_file = Path(src) / "w.bin"
    assert src_file.stat().st_nlink == 1
    assert src_file.stat().st_mode & 0o200, "the source keeps its mode"


def test_identical_files_across_revisions_are_stored_once(tmp_path):
    rev1 = model(tmp_path, "rev1", {"model.bin": SHARED, "config.json": b"rev 1"})
    rev2 = model(tmp_path, "rev2", {"model.bin": SHARED, "config.json": b"rev 2"})
    store = Store(tmp_path / "store")
    k1, k2 = store.ensure(rev1).key, store.ensure(rev2).key
    shared = blob_path(store, SHARED)
    assert shared.stat().st_nlink == 3  # blobs/ + models/k1 + models/k2
    assert os.path.samefile(store.root / "models" / k1 / "model.bin", store.root / "models" / k2 / "model.bin")
    usage = store.usage()
    assert usage.blobs == 3
    assert usage.used == len(SHARED) + len(b"rev 1") + len(b"rev 2")
    on_disk = sum(p.stat().st_blocks * 512 for p in store.layout.blobs.iterdir())
    assert on_disk < 1.5 * len(SHARED), "the shared weights occupy the disk once"


def test_a_hit_touches_last_use_and_downloads_nothing(tmp_path):
    src = model(tmp_path, "m", {"a.bin": blob(10_000, "a")})
    store = Store(tmp_path / "store")
    first = store.ensure(src)
    inode = (store.root / "models" / first.key / "a.bin").stat().st_ino
    os.rename(src, src + ".gone")  # a miss would now fail: the source is not there
    second = store.ensure(src)
    assert second.last_used > first.last_used
    assert (store.root / "models" / first.key / "a.bin").stat().st_ino == inode


def test_unpinned_models_are_evicted_least_recently_used_first(tmp_path):
    size = 100_000
    srcs = {n: model(tmp_path, n, {"w.bin": blob(size, n)}) for n in "abcde"}
    store = Store(tmp_path / "store", capacity=int(3.5 * size))
    for n in "abc":
        store.ensure(srcs[n])
    store.ensure(srcs["a"])  # a is now the most recently used
    store.ensure(srcs["d"])
    assert keys(store) == sorted(key_for(srcs[n]) for n in "acd")
    store.ensure(srcs["e"])
    assert keys(store) == sorted(key_for(srcs[n]) for n in "ade")
    assert store.usage().used <= store.capacity
    assert store.verify() == []


def test_capacity_takes_kubernetes_quantities(tmp_path):
    assert Store(tmp_path / "s", capacity="500Gi").capacity == 500 * 1024**3
    assert Store(tmp_path / "s", capacity="1G").usage().capacity == 10**9


def test_unpinned_models_make_room_for_a_pinned_one(tmp_path):
    size = 100_000
    u = model(tmp_path, "u", {"w.bin": blob(size, "u")})
    p = model(tmp_path, "p", {"w.bin": blob(size, "p")})
    store = Store(tmp_path / "store", capacity=int(1.5 * size))
    store.ensure(u)
    store.ensure(p, pin="cache-p")
    assert keys(store) == [key_for(p)]


def test_pinned_models_over_capacity_fail_the_ensure_and_stay_untouched(tmp_path):
    size = 100_000
    a, b, c = (model(tmp_path, n, {"w.bin": blob(size, n)}) for n in "abc")
    store = Store(tmp_path / "store", capacity=int(2.5 * size))
    store.ensure(a, pin="cache-a")
    store.ensure(b, pin="cache-b")
    with pytest.raises(CapacityError, match=r"pinned.*raise the storageLimit or unpin"):
        store.ensure(c, pin="cache-c")
    by_key = {r.key: r for r in store.list()}
    assert by_key[key_for(a)].state == by_key[key_for(b)].state == "ready"
    assert by_key[key_for(a)].pinned_by == ["cache-a"] and by_key[key_for(b)].pinned_by == ["cache-b"]
    assert key_for(c) not in by_key or (by_key[key_for(c)].state != "ready" and not by_key[key_for(c)].pinned_by)
    assert not (store.root / "ingest" / key_for(c)).exists(), "the listing size stopped it before downloading"
    assert store.verify() == []


def test_over_capacity_is_caught_after_commit_when_the_size_was_not_known(tmp_path, monkeypatch):
    from cacheagent import maintenance

    monkeypatch.setattr(maintenance, "listed_new_bytes", lambda *a, **k: None)
    size = 100_000
    a, b = (model(tmp_path, n, {"w.bin": blob(size, n)}) for n in "ab")
    store = Store(tmp_path / "store", capacity=int(1.5 * size))
    store.ensure(a, pin="cache-a")
    with pytest.raises(CapacityError):
        store.ensure(b)
    assert keys(store) == [key_for(a)]
    assert store.usage().used == size, "the model that did not fit was taken out again"


def test_evict_makes_room_for_the_bytes_asked_for(tmp_path):
    size = 100_000
    a, b = (model(tmp_path, n, {"w.bin": blob(size, n)}) for n in "ab")
    store = Store(tmp_path / "store", capacity=3 * size)
    store.ensure(a)
    store.ensure(b)
    assert store.evict(0) == []
    assert store.evict(int(1.5 * size)) == [key_for(a)]
    store.pin(b, "keep")
    with pytest.raises(CapacityError):
        store.evict(3 * size)
    assert keys(store) == [key_for(b)]


def test_pin_and_unpin_by_uri_or_key(tmp_path):
    src = model(tmp_path, "m", {"w.bin": b"x"})
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    assert store.pin(src, "one").pinned_by == ["one"]
    assert store.pin(key, "two").pinned_by == ["one", "two"]
    assert store.unpin(key, "one").pinned_by == ["two"]
    with pytest.raises(NotFoundError):
        store.unpin("0123456789abcdef", "two")


def test_materialize_hard_links_a_cached_model_and_publishes_a_manifest(tmp_path):
    files = {"a.bin": blob(200_000, "a"), "d/b.json": b"{}"}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    dest = tmp_path / "out" / "model"
    manifest = store.materialize(src, dest)
    assert read_tree(dest) == files and verify(dest) == []
    assert manifest.source == src
    assert os.path.samefile(dest / "a.bin", store.root / "models" / key / "a.bin")
    assert not list(dest.parent.glob(".*staging*")), "no staging debris beside DEST"


def test_materialize_again_leaves_dest_as_is(tmp_path):
    src = model(tmp_path, "m", {"a.bin": blob(1000, "a")})
    store = Store(tmp_path / "store")
    store.ensure(src)
    dest = tmp_path / "dest"
    store.materialize(src, dest)
    before = (dest / ".modeldepot" / "manifest.json").stat().st_ino
    store.materialize(src, dest)
    assert (dest / ".modeldepot" / "manifest.json").stat().st_ino == before


def test_materialize_replaces_another_model_atomically(tmp_path):
    one = model(tmp_path, "one", {"a.bin": b"one", "only-in-one.txt": b"1"})
    two = model(tmp_path, "two", {"a.bin": b"two"})
    store = Store(tmp_path / "store")
    store.ensure(one)
    store.ensure(two)
    dest = tmp_path / "dest"
    store.materialize(one, dest)
    store.materialize(two, dest)
    assert read_tree(dest) == {"a.bin": b"two"} and verify(dest) == []


def test_materialize_copies_across_filesystems(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second writable filesystem at /dev/shm")
    files = {"a.bin": blob(100_000, "x")}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    store.ensure(src)
    dest = shm / f"modeldepot-test-{uuid.uuid4().hex}" / "model"
    try:
        store.materialize(src, dest)
        assert read_tree(dest) == files and verify(dest) == []
        assert (dest / "a.bin").stat().st_dev != store.root.stat().st_dev
    finally:
        import shutil

        shutil.rmtree(dest.parent, ignore_errors=True)


def test_materialize_of_a_model_not_held_fails_clearly(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(NotFoundError, match="not in the store"):
        store.materialize("s3://nowhere/model", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_gc_deletes_only_blobs_no_model_references(tmp_path):
    rev1 = model(tmp_path, "rev1", {"model.bin": SHARED, "config.json": b"rev 1"})
    rev2 = model(tmp_path, "rev2", {"model.bin": SHARED, "config.json": b"rev 2"})
    store = Store(tmp_path / "store")
    k1 = store.ensure(rev1).key
    store.ensure(rev2)
    import shutil

    shutil.rmtree(store.root / "models" / k1)  # a model deleted by hand
    report = store.gc()
    assert report.removed_blobs == 1 and report.freed_bytes == len(b"rev 1")
    assert blob_path(store, SHARED).stat().st_nlink == 2
    assert store.verify() == []


def test_gc_running_alongside_ensures_loses_nothing(tmp_path):
    srcs = [model(tmp_path, f"m{i}", {"shared.bin": SHARED, "own.bin": blob(200_000, i)}) for i in range(4)]
    store = Store(tmp_path / "store")
    stop = threading.Event()
    errors: list[BaseException] = []

    def collect():
        while not stop.is_set():
            try:
                Store(store.root).gc()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    t = threading.Thread(target=collect)
    t.start()
    try:
        for s in srcs:
            Store(store.root).ensure(s)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert len(keys(store)) == 4 and store.verify() == []


def test_verify_reports_a_corrupted_blob_by_model(tmp_path):
    src = model(tmp_path, "m", {"w.bin": blob(100_000, "w")})
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    flip_byte(blob_path(store, blob(100_000, "w")))
    problems = store.verify()
    assert len(problems) == 1 and problems[0].startswith(f"{key}: w.bin: content does not match")
    assert store.verify(full=False) == []


def flip_byte(path: Path, offset: int = 1234) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def test_scrub_removes_a_corrupted_blob_and_refetches_it(tmp_path):
    good = blob(300_000, "weights")
    files = {"w.bin": good, "config.json": b"{}"}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    bad = blob_path(store, good)
    flip_byte(bad)
    report = store.scrub()
    assert report.blobs == 2 and report.bytes == len(good) + 2
    assert report.corrupt == [bad.name] and report.refetched == [key] and report.failed == {}
    assert bad.read_bytes() == good
    assert read_tree(store.root / "models" / key) == files
    assert store.verify() == [] and store.fsck(repair=False).consistent
    assert store.scrub().corrupt == []


def test_scrub_repairs_every_model_sharing_the_corrupted_blob(tmp_path):
    rev1 = model(tmp_path, "rev1", {"model.bin": SHARED, "config.json": b"rev 1"})
    rev2 = model(tmp_path, "rev2", {"model.bin": SHARED, "config.json": b"rev 2"})
    store = Store(tmp_path / "store")
    k1, k2 = store.ensure(rev1).key, store.ensure(rev2).key
    flip_byte(blob_path(store, SHARED))
    report = store.scrub()
    assert sorted(report.refetched) == sorted([k1, k2])
    assert blob_path(store, SHARED).stat().st_nlink == 3, "still stored once after the repair"
    assert store.verify() == []


def test_a_partial_download_is_listed_as_such(tmp_path):
    src = model(tmp_path, "m", {"a.bin": b"a"})
    store = Store(tmp_path / "store")
    key = key_for(src)
    (store.root / "ingest" / f".{key}.modeldepot-staging" / "tree").mkdir(parents=True)
    store.states.update(key, uri=src)
    (record,) = store.list()
    assert record.key == key and record.state == "partial" and record.bytes is None


def test_a_model_materialized_on_the_same_filesystem_counts_as_held(tmp_path):
    size = 100_000
    a, b = (model(tmp_path, n, {"w.bin": blob(size, n)}) for n in "ab")
    store = Store(tmp_path / "store", capacity=int(1.5 * size))
    store.ensure(a)
    store.materialize(a, tmp_path / "dest")  # DEST's hard links keep a's bytes on disk
    with pytest.raises(CapacityError, match="linked outside the store"):
        store.ensure(b)
    assert keys(store) == [key_for(a)], "evicting a would free nothing, so it is kept"


def test_fsck_restores_a_lost_blob_from_the_model_that_still_links_it(tmp_path):
    data = blob(80_000, "lost")
    src = model(tmp_path, "m", {"w.bin": data})
    store = Store(tmp_path / "store")
    store.ensure(src)
    blob_path(store, data).unlink()
    report = store.fsck(repair=True)
    assert any("restored" in r for r in report.repaired)
    assert blob_path(store, data).read_bytes() == data and store.verify() == []


def test_fsck_unpublishes_a_model_missing_a_file_and_ensure_refetches_only_that(tmp_path):
    files = {"keep.bin": blob(80_000, "keep"), "lost.bin": blob(80_000, "lost")}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    kept_inode = (store.root / "models" / key / "keep.bin").stat().st_ino
    (store.root / "models" / key / "lost.bin").unlink()
    report = store.fsck(repair=True)
    assert report.consistent and not (store.root / "models" / key).exists()
    assert store.list()[0].state == "partial"
    store.ensure(src)
    assert read_tree(store.root / "models" / key) == files and store.verify() == []
    assert (store.root / "models" / key / "keep.bin").stat().st_ino == kept_inode, "the intact file was reused"


def test_repair_unpublishes_a_corrupt_file_and_ensure_refetches_only_that(tmp_path):
    files = {"keep.bin": blob(80_000, "keep"), "bad.bin": blob(90_000, "bad")}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    kept_inode = (store.root / "models" / key / "keep.bin").stat().st_ino
    bad = blob_path(store, files["bad.bin"])
    flip_byte(bad)
    assert store.problems(full=False) == []
    (problem,) = store.problems()
    assert (problem.key, problem.kind, problem.path) == (key, "corrupt", "bad.bin")
    report = store.repair([problem])
    assert report.unpublished == {key: ["bad.bin"]} and report.removed_blobs == [bad.name]
    assert report.skipped == [] and [p.line for p in report.found] == [problem.line]
    assert not bad.exists() and not (store.root / "models" / key).exists()
    assert store.list()[0].state == "partial"
    store.ensure(src)
    assert read_tree(store.root / "models" / key) == files and store.verify() == []
    assert (store.root / "models" / key / "keep.bin").stat().st_ino == kept_inode, "the intact file was reused"
    assert bad.read_bytes() == files["bad.bin"]


def test_repair_skips_a_model_being_read_and_takes_it_on_a_later_try(tmp_path):
    from cacheagent.locks import FileLock

    rev1 = model(tmp_path, "rev1", {"model.bin": SHARED, "config.json": b"rev 1"})
    rev2 = model(tmp_path, "rev2", {"model.bin": SHARED, "config.json": b"rev 2"})
    store = Store(tmp_path / "store")
    k1, k2 = store.ensure(rev1).key, store.ensure(rev2).key
    flip_byte(blob_path(store, SHARED))
    found = store.problems()
    assert sorted(p.key for p in found) == sorted([k1, k2])
    with FileLock(store.layout.key_lock(k2), shared=True):  # what materialize holds while linking
        report = store.repair(found)
    assert report.skipped == [k2] and list(report.unpublished) == [k1]
    assert report.removed_blobs == [blob_path(store, SHARED).name], "no re-fetch may link to it again"
    assert (store.root / "models" / k2 / "model.bin").exists(), "a model in use is left as it is"
    report = store.repair(found)  # the same (now stale) list: k2's file is still the corrupt one
    assert report.skipped == [] and list(report.unpublished) == [k2] and report.removed_blobs == []
    assert store.repair(found).taken_out == [], "nothing left to do"
    store.ensure(rev1)
    store.ensure(rev2)
    assert store.verify() == []
    assert blob_path(store, SHARED).stat().st_nlink == 3, "stored once again after the repair"


def test_repair_leaves_a_model_mended_since_the_verify_alone(tmp_path):
    files = {"w.bin": blob(60_000, "w"), "config.json": b"{}"}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    flip_byte(blob_path(store, files["w.bin"]))
    stale = store.problems()
    assert store.scrub().refetched == [key]  # someone else repaired it meanwhile
    report = store.repair(stale)
    assert report.taken_out == [] and report.removed_blobs == [] and report.found == []
    assert read_tree(store.root / "models" / key) == files and store.verify() == []


def test_repair_refetches_a_missing_file_and_removes_one_not_in_the_manifest(tmp_path):
    files = {"a.bin": blob(40_000, "a"), "b.bin": blob(40_000, "b")}
    src = model(tmp_path, "m", files)
    store = Store(tmp_path / "store")
    key = store.ensure(src).key
    (store.root / "models" / key / "b.bin").unlink()
    (store.root / "models" / key / "stray.txt").write_text("x")
    found = store.problems(full=False)
    assert sorted((p.kind, p.path) for p in found) == [("extra", "stray.txt"), ("missing", "b.bin")]
    report = store.repair(found, refetch=True)
    assert report.unpublished == {key: ["b.bin"]} and report.removed_files == [f"{key}/stray.txt"]
    assert report.refetched == [key] and report.failed == {}
    assert read_tree(store.root / "models" / key) == files and store.verify() == []
