"""Each fault the proxy can inject ends in a verified download or a clear error, never a partial DEST.

Transient faults (5xx, 429, reset, truncation, stall) are retried with backoff and resume from the
byte received (``Range: bytes=<received>-``); permanent ones are covered in test_download_errors.
"""

from __future__ import annotations

import time

import pytest
from conftest import FAST_RETRY_ENV, object_gets, s3_env_for
from support.faultproxy import Fault, s3_error
from support.models import MiB, assert_tree_equal, blob, upload_tree

from storage import download, verify
from storage.errors import IntegrityError, StorageError, TransientExhaustedError

BIG = blob(4 * MiB + 999, "faulty")
FILES = {"config.json": b"{}", "big.bin": BIG, "sub/small.bin": blob(5000, "small")}
SINGLE_PART = 64 * MiB  # one GET per file, so a retry's Range shows the resume offset


@pytest.fixture
def model(s3_client, bucket):
    upload_tree(s3_client, bucket, "m", FILES)
    return f"s3://{bucket}/m"


def _resumed_gets(proxy, bucket):
    gets = object_gets(proxy, bucket, r"big\.bin$")
    assert len(gets) >= 2, [(g.fault, g.range) for g in gets]
    return gets


@pytest.mark.parametrize("code", [500, 502, 503, 429])
def test_transient_status_is_retried_to_a_verified_download(code, model, bucket, s3_proxy, tmp_path):
    body = s3_error("SlowDown" if code in (429, 503) else "InternalError")
    s3_proxy.add(
        Fault.status(
            code, body=body, headers={"Retry-After": "0"}, method="GET", path=r"/m/big\.bin$", count=2
        )
    )
    dest = tmp_path / "dest"
    download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert_tree_equal(dest, FILES)
    assert verify(dest) == []
    assert len(object_gets(s3_proxy, bucket, r"big\.bin$")) == 3


def test_listing_5xx_is_retried(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.status(503, body=s3_error("SlowDown"), method="GET", path=rf"^/{bucket}/?$", count=1))
    dest = tmp_path / "dest"
    download(model, dest, env=s3_env_for(s3_proxy.url))
    assert_tree_equal(dest, FILES)


def test_reset_mid_body_resumes_from_received_bytes(model, bucket, s3_proxy, tmp_path):
    cut = 2 * MiB + 12345
    s3_proxy.add(Fault.reset(after=cut, method="GET", path=r"/m/big\.bin$"))
    dest = tmp_path / "dest"
    download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "big.bin").read_bytes() == BIG
    assert verify(dest) == []
    first, retry = _resumed_gets(s3_proxy, bucket)[:2]
    assert first.fault == "reset" and first.bytes_sent == cut
    assert retry.range_start is not None and 0 < retry.range_start <= cut, retry.range


def test_truncated_body_resumes_from_received_bytes(model, bucket, s3_proxy, tmp_path):
    cut = 3 * MiB + 1
    s3_proxy.add(Fault.truncate(after=cut, method="GET", path=r"/m/big\.bin$"))
    dest = tmp_path / "dest"
    download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "big.bin").read_bytes() == BIG
    assert verify(dest) == []
    first, retry = _resumed_gets(s3_proxy, bucket)[:2]
    assert first.fault == "truncate"
    assert retry.range_start is not None and 0 < retry.range_start <= cut, retry.range


def test_stalled_body_times_out_and_resumes(model, bucket, s3_proxy, tmp_path):
    cut = MiB + 7
    s3_proxy.add(Fault.stall(after=cut, seconds=60, method="GET", path=r"/m/big\.bin$"))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url, MODELDEPOT_STALL_TIMEOUT="0.5"))
    assert time.monotonic() - t0 < 15, "the stall timeout did not fire"
    assert (dest / "big.bin").read_bytes() == BIG
    first, retry = _resumed_gets(s3_proxy, bucket)[:2]
    assert first.fault == "stall"
    assert retry.range_start is not None and 0 < retry.range_start <= cut, retry.range


def test_faults_in_several_parts_still_verify(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.reset(after=100_000, method="GET", path=r"/m/big\.bin$", count=2))
    s3_proxy.add(Fault.truncate(after=200_000, method="GET", path=r"/m/big\.bin$", count=2))
    s3_proxy.add(Fault.status(503, body=s3_error("SlowDown"), method="GET", path=r"/m/big\.bin$", count=2))
    dest = tmp_path / "dest"
    download(model, dest, part_size=MiB, concurrency=4, env=s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="8"))
    assert_tree_equal(dest, FILES)
    assert verify(dest) == []


def test_persistent_503_exhausts_retries_without_publishing(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.status(503, body=s3_error("SlowDown"), method="GET", path=r"/m/big\.bin$", count=1000))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    with pytest.raises(TransientExhaustedError) as exc:
        download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="3"))
    assert time.monotonic() - t0 < 20
    assert model in str(exc.value) and "\n" not in str(exc.value)
    assert not dest.exists()
    assert len(object_gets(s3_proxy, bucket, r"big\.bin$")) == 3, (
        "MODELDEPOT_RETRIES=3 should mean 3 attempts"
    )


def test_persistent_reset_exhausts_retries_without_publishing(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.reset(after=0, method="GET", path=r"/m/big\.bin$", count=1000))
    dest = tmp_path / "dest"
    with pytest.raises(TransientExhaustedError):
        download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="3"))
    assert not dest.exists()


def test_corrupted_bytes_never_publish(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.corrupt(at=MiB + 5, method="GET", path=r"/m/big\.bin$", count=1000))
    dest = tmp_path / "dest"
    with pytest.raises((IntegrityError, TransientExhaustedError)) as exc:
        download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url, MODELDEPOT_RETRIES="2"))
    assert "\n" not in str(exc.value)
    assert not dest.exists()


def test_corruption_once_is_refetched_to_a_verified_download(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.corrupt(at=10, method="GET", path=r"/m/big\.bin$", count=1))
    dest = tmp_path / "dest"
    try:
        download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    except IntegrityError:
        assert not dest.exists()  # failing clearly is acceptable too; publishing bad bytes is not
        return
    assert (dest / "big.bin").read_bytes() == BIG
    assert verify(dest) == []


# -- the same faults in front of an HTTP source --------------------------------------------
# The HTTP source may probe a URL with a one-byte ranged GET while listing; faults aim at the data
# GETs, and assertions look at those.


def _is_data_get(rec) -> bool:
    return rec.range != "bytes=0-0"


def _data_gets(proxy):
    return [r for r in proxy.requests_for(r"model\.bin$") if _is_data_get(r)]


@pytest.fixture
def http_model(tmp_path, http_server_factory):
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.bin").write_bytes(BIG)
    return http_server_factory(root)


def test_http_503_then_success(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    proxy.add(Fault.status(503, method="GET", path=r"model\.bin$", count=2, when=_is_data_get))
    dest = tmp_path / "dest"
    download(f"{proxy.url}/model.bin", dest, part_size=SINGLE_PART, env=dict(FAST_RETRY_ENV))
    assert (dest / "model.bin").read_bytes() == BIG
    assert len(_data_gets(proxy)) == 3


def test_http_reset_resumes_with_range(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    cut = 2 * MiB
    proxy.add(Fault.reset(after=cut, method="GET", path=r"model\.bin$", when=_is_data_get))
    dest = tmp_path / "dest"
    download(f"{proxy.url}/model.bin", dest, part_size=SINGLE_PART, env=dict(FAST_RETRY_ENV))
    assert (dest / "model.bin").read_bytes() == BIG
    first, retry = _data_gets(proxy)[:2]
    assert first.fault == "reset"
    assert retry.range_start is not None and 0 < retry.range_start <= cut, retry.range


def test_http_stall_times_out_and_resumes(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    proxy.add(Fault.stall(after=MiB, seconds=60, method="GET", path=r"model\.bin$", when=_is_data_get))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    download(
        f"{proxy.url}/model.bin",
        dest,
        part_size=SINGLE_PART,
        env={**FAST_RETRY_ENV, "MODELDEPOT_STALL_TIMEOUT": "0.5"},
    )
    assert time.monotonic() - t0 < 15
    assert (dest / "model.bin").read_bytes() == BIG
    retry = _data_gets(proxy)[1]
    assert retry.range_start is not None and 0 < retry.range_start <= MiB, retry.range


def test_http_truncation_resumes_with_range(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    proxy.add(Fault.truncate(after=3 * MiB, method="GET", path=r"model\.bin$", when=_is_data_get))
    dest = tmp_path / "dest"
    download(f"{proxy.url}/model.bin", dest, part_size=SINGLE_PART, env=dict(FAST_RETRY_ENV))
    assert (dest / "model.bin").read_bytes() == BIG
    retry = _data_gets(proxy)[1]
    assert retry.range_start is not None and 0 < retry.range_start <= 3 * MiB, retry.range


# -- sources that change or misbehave under us -----------------------------------------------


def test_http_server_ignoring_range_still_yields_correct_bytes(tmp_path, http_server_factory, fault_proxy):
    root = tmp_path / "www-norange"
    root.mkdir()
    (root / "model.bin").write_bytes(BIG)
    proxy = fault_proxy(http_server_factory(root, ranges=False).base_url)
    proxy.add(Fault.reset(after=2 * MiB, method="GET", path=r"model\.bin$", when=_is_data_get))
    dest = tmp_path / "dest"
    try:
        download(f"{proxy.url}/model.bin", dest, part_size=MiB, env=dict(FAST_RETRY_ENV))
    except StorageError as exc:  # refusing clearly is acceptable; splicing a 200 body at an offset is not
        assert "\n" not in str(exc) and not dest.exists()
        return
    assert (dest / "model.bin").read_bytes() == BIG
    assert verify(dest) == []


def test_s3_object_replaced_between_parts_never_publishes_a_mix(s3_client, bucket, s3_proxy, tmp_path):
    old, new = blob(3 * MiB, "old"), blob(3 * MiB, "new")
    s3_client.put_object(Bucket=bucket, Key="m/w.bin", Body=old)

    def swap(rec):  # runs in the proxy before forwarding the third part
        if rec.range_start == 2 * MiB:
            s3_client.put_object(Bucket=bucket, Key="m/w.bin", Body=new)
            return True
        return False

    s3_proxy.add(Fault.stall(after=0, seconds=0.0, method="GET", path=r"/m/w\.bin$", when=swap))
    dest = tmp_path / "dest"
    try:
        download(f"s3://{bucket}/m", dest, part_size=MiB, concurrency=1, env=s3_env_for(s3_proxy.url))
    except StorageError:
        assert not dest.exists()
        return
    assert (dest / "w.bin").read_bytes() in (old, new), "published a file spliced from two object versions"
    assert verify(dest) == []


def test_http_file_replaced_between_parts_never_publishes_a_mix(tmp_path, http_server_factory, fault_proxy):
    root = tmp_path / "www-swap"
    root.mkdir()
    old, new = blob(3 * MiB, "old"), blob(3 * MiB, "new")
    (root / "model.bin").write_bytes(old)
    proxy = fault_proxy(http_server_factory(root).base_url)

    def swap(rec):
        if rec.range_start == 2 * MiB:
            (root / "model.bin").write_bytes(new)  # same inode and size, new mtime -> new ETag
            return True
        return False

    proxy.add(Fault.stall(after=0, seconds=0.0, method="GET", path=r"model\.bin$", when=swap))
    dest = tmp_path / "dest"
    try:
        download(f"{proxy.url}/model.bin", dest, part_size=MiB, concurrency=1, env=dict(FAST_RETRY_ENV))
    except StorageError:
        assert not dest.exists()
        return
    assert (dest / "model.bin").read_bytes() in (old, new), "published a file spliced from two versions"


def test_request_that_never_answers_times_out_and_is_retried(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.hang(60, method="GET", path=r"/m/big\.bin$"))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    download(model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url, MODELDEPOT_STALL_TIMEOUT="0.5"))
    assert time.monotonic() - t0 < 15, "a silent server held the download past the stall timeout"
    assert_tree_equal(dest, FILES)


def test_stalled_listing_times_out_and_is_retried(model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.hang(60, method="GET", path=rf"^/{bucket}/?$"))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    download(model, dest, env=s3_env_for(s3_proxy.url, MODELDEPOT_STALL_TIMEOUT="0.5"))
    assert time.monotonic() - t0 < 15, "a silent listing held the download past the stall timeout"
    assert_tree_equal(dest, FILES)


def test_http_hang_before_headers_times_out_and_is_retried(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    proxy.add(Fault.hang(60, method="GET", path=r"model\.bin$", when=_is_data_get))
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    download(f"{proxy.url}/model.bin", dest, env={**FAST_RETRY_ENV, "MODELDEPOT_STALL_TIMEOUT": "0.5"})
    assert time.monotonic() - t0 < 15
    assert (dest / "model.bin").read_bytes() == BIG


def test_http_without_content_length_downloads_whole_file(http_model, fault_proxy, tmp_path):
    proxy = fault_proxy(http_model.base_url)
    proxy.add(Fault.chunked(path=r"model\.bin$", count=1000))
    dest = tmp_path / "dest"
    download(f"{proxy.url}/model.bin", dest, env=dict(FAST_RETRY_ENV))
    assert (dest / "model.bin").read_bytes() == BIG
    assert verify(dest) == []


def _fail_after_two_parts(http_model, fault_proxy, tmp_path):
    """A 4-part download whose parts 2 and 3 keep failing: parts 0 and 1 land in staging."""
    proxy = fault_proxy(http_model.base_url)
    late = lambda rec: _is_data_get(rec) and (rec.range_start or 0) >= 2 * MiB  # noqa: E731
    proxy.add(Fault.status(503, method="GET", path=r"model\.bin$", count=100, when=late))
    dest = tmp_path / "dest"
    env = {**FAST_RETRY_ENV, "MODELDEPOT_RETRIES": "2"}
    with pytest.raises(TransientExhaustedError):
        download(f"{proxy.url}/model.bin", dest, part_size=MiB, concurrency=1, env=env)
    proxy.clear_faults()
    proxy.clear_log()
    return proxy, dest, env


def _early_part_gets(proxy):
    return [r for r in _data_gets(proxy) if (r.range_start or 0) < 2 * MiB]


def test_parts_finished_before_a_failure_are_not_fetched_again(http_model, fault_proxy, tmp_path):
    proxy, dest, env = _fail_after_two_parts(http_model, fault_proxy, tmp_path)
    download(f"{proxy.url}/model.bin", dest, part_size=MiB, concurrency=1, env=env)
    assert (dest / "model.bin").read_bytes() == BIG and verify(dest) == []
    assert _early_part_gets(proxy) == []


def test_parts_recorded_before_a_reboot_are_fetched_again(http_model, fault_proxy, tmp_path):
    # The page cache does not survive a power loss, so parts journaled in another boot are not
    # trusted: only fdatasync'd whole files are.
    proxy, dest, env = _fail_after_two_parts(http_model, fault_proxy, tmp_path)
    journal = tmp_path / ".dest.modeldepot-staging" / "journal"
    text = journal.read_text()
    assert '"event":"part"' in text
    journal.write_text(text.replace('"boot":"', '"boot":"another-boot-'))
    download(f"{proxy.url}/model.bin", dest, part_size=MiB, concurrency=1, env=env)
    assert (dest / "model.bin").read_bytes() == BIG and verify(dest) == []
    assert len(_early_part_gets(proxy)) == 2
