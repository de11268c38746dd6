"""kill -9 of an ensure at every step, then fsck and a rerun; two processes ensuring one model.

Crashes are injected with MODELDEPOT_TEST_CRASH_AT=<step> (the store SIGKILLs itself there) or,
mid-transfer, by a progress reporter that SIGKILLs its own process after some bytes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO, cli_env, requested_bytes
from support.httpserver import HTTPFileServer
from support.models import MiB, blob, read_tree, write_tree

from cacheagent.store import Store, key_for
from storage import verify

FILES = {"config.json": b'{"layers": 2}', "a.bin": blob(200_000, "a"), "b/c.bin": blob(300_000, "c")}


def run_ensure(root, uri, *, env=None, capacity=None, script_extra="", progress="None", wait_for=None):
    script = "\n".join([
        "import os, sys, time",
        "from cacheagent.store import Store",
        "from storage.progress import NullProgress",
        script_extra,
        f"while {str(wait_for)!r} != 'None' and not os.path.exists({str(wait_for)!r}):",
        "    time.sleep(0.005)",
        f"record = Store(sys.argv[1], capacity={capacity!r}).ensure(sys.argv[2], progress={progress})",
        "print(record.key, record.state)",
    ])
    return subprocess.Popen([sys.executable, "-c", script, str(root), uri], env=cli_env(env), cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_recovers(root, uri, files):
    """fsck repairs what the crash left, a second fsck finds it consistent, ensure completes."""
    store = Store(root)
    first = store.fsck(repair=True)
    assert first.consistent, first.problems
    again = store.fsck(repair=False)
    assert again.consistent and again.problems == [] and again.repaired == [], again
    record = store.ensure(uri)
    assert record.state == "ready"
    assert read_tree(root / "models" / record.key) == files
    assert store.verify() == [] and store.fsck(repair=False).repaired == []
    assert not list((root / "ingest" / ".tmp").iterdir()) and not list((root / "ingest" / ".trash").iterdir())
    return first


@pytest.mark.parametrize("step", ["download", "downloaded", "commit", "linked", "published"])
def test_kill_at_each_ingest_and_commit_step_then_fsck_and_rerun(tmp_path, step):
    src = str(write_tree(tmp_path / "src", FILES))
    root = tmp_path / "store"
    proc = run_ensure(root, src, env={"MODELDEPOT_TEST_CRASH_AT": step})
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    key = key_for(src)
    assert (root / "models" / key).exists() == (step == "published"), "published only once complete"
    report = assert_recovers(root, src, FILES)
    if step in ("downloaded", "commit", "linked"):
        assert any("committing it" in r for r in report.repaired), "a finished download is rolled forward"


def test_kill_during_eviction_then_fsck_and_rerun(tmp_path):
    size = 200_000
    old = str(write_tree(tmp_path / "old", {"w.bin": blob(size, "old")}))
    new = str(write_tree(tmp_path / "new", {"w.bin": blob(size, "new")}))
    root = tmp_path / "store"
    Store(root).ensure(old)
    proc = run_ensure(root, new, capacity=int(1.5 * size), env={"MODELDEPOT_TEST_CRASH_AT": "evict"})
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "models" / key_for(old)).exists()
    report = Store(root).fsck(repair=True)
    assert any(".trash" in r for r in report.repaired)
    assert Store(root).usage().used == 0, "the evicted model's blob is gone"
    assert_recovers(root, new, {"w.bin": blob(size, "new")})


KILLER = textwrap.dedent("""
    class Killer(NullProgress):
        def advance(self, n):
            super().advance(n)
            if self.done_bytes - self.skipped_bytes >= int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), 9)
""")


def test_kill_mid_transfer_resumes_from_the_engines_staging(tmp_path):
    www = tmp_path / "www"
    size = 6 * MiB + 123
    files = {"model.bin": blob(size, "big")}
    write_tree(www, files)
    root = tmp_path / "store"
    env = {"MODELDEPOT_PART_SIZE": "1Mi", "MODELDEPOT_CONCURRENCY": "1", "KILL_AFTER": str(5 * MiB // 2)}
    with HTTPFileServer(www) as server:
        uri = server.url("model.bin")
        proc = run_ensure(root, uri, env=env, script_extra=KILLER, progress="Killer('x')")
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == -signal.SIGKILL, err
        report = Store(root).fsck(repair=True)
        assert report.consistent and any("staging" in p for p in report.pending)
        server.clear()
        store = Store(root)
        record = store.ensure(uri, env={"MODELDEPOT_PART_SIZE": "1Mi"})
        gets = [r for r in server.requests if r.method == "GET"]
        assert requested_bytes(gets, size) <= size - 2 * MiB, "parts finished before the kill are not fetched again"
    assert read_tree(root / "models" / record.key) == files
    assert store.verify() == []


def test_two_processes_ensuring_one_model_download_it_once(tmp_path):
    www = tmp_path / "www"
    size = 8 * MiB
    write_tree(www, {"model.bin": blob(size, "shared")})
    root = tmp_path / "store"
    go = tmp_path / "go"
    with HTTPFileServer(www) as server:
        uri = server.url("model.bin")
        procs = [run_ensure(root, uri, wait_for=go) for _ in range(2)]
        time.sleep(0.5)  # both interpreters started and waiting
        go.touch()
        outs = [p.communicate(timeout=60) for p in procs]
        gets = [r for r in server.requests if r.method == "GET"]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert {o[0].split()[0] for o in outs} == {key_for(uri)}
    assert requested_bytes(gets, size) == size, "the source served the data once"
    store = Store(root)
    assert [r.state for r in store.list()] == ["ready"] and store.verify() == []
    assert verify(root / "models" / key_for(uri)) == []
