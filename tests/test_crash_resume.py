"""kill -9 of a `storage-initializer` mid-download, then a rerun: nothing published early, nothing
finished fetched twice, the partial file resumed, and the result verified.

One scenario (module-scoped fixture) runs the crash and the rerun once; each test asserts one
behaviour of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import REPO, cli_argv, cli_env, object_gets, requested_bytes, s3_env_for
from support.faultproxy import Fault, FaultProxy
from support.models import MiB, assert_tree_equal, blob, upload_tree

from storage import verify

SMALL = {f"shard-{i}.bin": blob(300_000 + i, f"small{i}") for i in range(5)}
BIG = blob(8 * MiB + 4321, "crash-big")
FILES = {**SMALL, "config.json": b'{"k": 1}', "big.bin": BIG}
STALL_AFTER = 512 * 1024


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def crash(s3_server, s3_client, tmp_path_factory):
    bucket = f"crash-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    upload_tree(s3_client, bucket, "m", FILES)
    work = tmp_path_factory.mktemp("crash")
    dest = work / "out" / "model"
    dest.parent.mkdir()
    uri = f"s3://{bucket}/m"
    with FaultProxy(s3_server.endpoint) as proxy:
        # Every part of big.bin sends a little, then hangs: the run is stuck mid-file when killed.
        proxy.add(Fault.stall(after=STALL_AFTER, seconds=300, method="GET", path=r"/m/big\.bin$", count=1000))
        env = s3_env_for(
            proxy.url,
            MODELDEPOT_STALL_TIMEOUT="300",
            MODELDEPOT_PART_SIZE=str(2 * MiB),
            MODELDEPOT_CONCURRENCY="8",
            MODELDEPOT_PROGRESS_INTERVAL="0.5",
        )
        log = open(work / "first-run.log", "w+")
        proc = subprocess.Popen(
            [*cli_argv("storage-initializer"), uri, str(dest)],
            env=cli_env(env),
            cwd=str(REPO),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            small_keys = [*SMALL, "config.json"]

            def small_done():
                done = {r.path.rsplit("/", 1)[-1] for r in object_gets(proxy, bucket) if r.complete}
                return all(k in done for k in small_keys)

            def big_started():
                return any(r.bytes_sent >= STALL_AFTER for r in object_gets(proxy, bucket, r"big\.bin$"))

            _wait(
                lambda: proc.poll() is not None or (small_done() and big_started()),
                30,
                "the first run to stall",
            )
            assert proc.poll() is None, f"first run exited early:\n{open(work / 'first-run.log').read()}"
            time.sleep(1.0)  # let the engine write, hash and stage what it received
            dest_before_kill = dest.exists()
            first_log = list(proxy.requests)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        dest_after_kill = dest.exists()
        staging_after_kill = sorted(p.name for p in dest.parent.iterdir())

        proxy.clear_faults()
        proxy.clear_log()
        env["MODELDEPOT_STALL_TIMEOUT"] = "5"
        rerun = subprocess.run(
            [*cli_argv("storage-initializer"), uri, str(dest)],
            env=cli_env(env),
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        rerun_log = list(proxy.requests)
    yield {
        "bucket": bucket,
        "dest": dest,
        "dest_before_kill": dest_before_kill,
        "dest_after_kill": dest_after_kill,
        "staging_after_kill": staging_after_kill,
        "first_log": first_log,
        "rerun": rerun,
        "rerun_log": rerun_log,
    }


class _Log:
    def __init__(self, records):
        self.requests = records


def _gets(records, bucket, key_regex=r".+"):
    return object_gets(_Log(records), bucket, key_regex)


def test_dest_absent_while_the_first_run_was_in_flight(crash):
    assert not crash["dest_before_kill"]


def test_dest_absent_after_kill_9(crash):
    assert not crash["dest_after_kill"], crash["staging_after_kill"]
    assert any("modeldepot-staging" in n for n in crash["staging_after_kill"]), crash["staging_after_kill"]


def test_rerun_after_kill_completes_verified(crash):
    rerun = crash["rerun"]
    assert rerun.returncode == 0, rerun.stderr
    assert_tree_equal(crash["dest"], FILES)
    assert verify(crash["dest"]) == []


def test_rerun_does_not_refetch_files_finished_before_the_kill(crash):
    # big.bin's short last part may complete too; a file is finished only when it was one GET.
    finished = {
        r.path.rsplit("/", 1)[-1] for r in _gets(crash["first_log"], crash["bucket"]) if r.complete
    } - {"big.bin"}
    assert set(SMALL) <= finished
    refetched = [
        r.path for r in _gets(crash["rerun_log"], crash["bucket"]) if r.path.rsplit("/", 1)[-1] in finished
    ]
    assert refetched == []


def test_rerun_resumes_the_partial_file_instead_of_starting_over(crash):
    gets = _gets(crash["rerun_log"], crash["bucket"], r"big\.bin$")
    assert gets, "big.bin was not fetched at all on the rerun"
    asked = requested_bytes(gets, len(BIG))
    assert asked < len(BIG), f"rerun asked for {asked} of {len(BIG)} bytes: {[g.range for g in gets]}"


def test_staging_is_gone_after_the_rerun(crash):
    leftovers = [p.name for p in crash["dest"].parent.iterdir() if "modeldepot-staging" in p.name]
    assert leftovers == []
