"""The test infrastructure's own tests: the S3 server, the HTTP file server and the fault proxy.

These need no engine; if they fail, every download test built on them is meaningless.
"""

from __future__ import annotations

import socket
import time

import pytest
import urllib3
from support.faultproxy import Fault, s3_error
from support.models import MiB, blob

DATA = blob(3 * MiB + 5, "fixture")


def _pool(proxy_or_server, retries=False, timeout=5.0) -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool("127.0.0.1", proxy_or_server.port, retries=retries, timeout=timeout)


@pytest.fixture
def served(http_server):
    (http_server.root / "dir").mkdir()
    (http_server.root / "dir" / "file one.bin").write_bytes(DATA)
    return http_server


# -- S3 ------------------------------------------------------------------------------------


def test_s3_server_put_get_round_trip(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="m/a b/ü.bin", Body=DATA)
    s3_client.put_object(Bucket=bucket, Key="m/empty", Body=b"")
    assert s3_client.get_object(Bucket=bucket, Key="m/a b/ü.bin")["Body"].read() == DATA
    assert s3_client.get_object(Bucket=bucket, Key="m/empty")["Body"].read() == b""
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="m/")["Contents"]]
    assert sorted(keys) == ["m/a b/ü.bin", "m/empty"]


def test_s3_server_serves_ranges(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="r.bin", Body=DATA)
    got = s3_client.get_object(Bucket=bucket, Key="r.bin", Range="bytes=100-199")["Body"].read()
    assert got == DATA[100:200]


def test_s3_server_listens_only_on_loopback(s3_server):
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    argv = " ".join(s3_server.proc.argv)
    assert "-master.telemetry=false" in argv and "-ip.bind=127.0.0.1" in argv


def test_s3_through_proxy_keeps_signatures_valid(s3_server, s3_client, s3_proxy, bucket):
    s3_client.put_object(Bucket=bucket, Key="p/x.bin", Body=DATA)
    via = s3_server.client(endpoint=s3_proxy.url)
    assert via.get_object(Bucket=bucket, Key="p/x.bin")["Body"].read() == DATA
    assert [r.path for r in s3_proxy.requests_for(r"/p/x\.bin$")] == [f"/{bucket}/p/x.bin"]


def test_s3_error_fault_maps_to_botocore_error(s3_server, s3_client, s3_proxy, bucket):
    from botocore.exceptions import ClientError

    s3_client.put_object(Bucket=bucket, Key="d.bin", Body=b"x")
    s3_proxy.add(Fault.status(403, body=s3_error("AccessDenied"), path=r"/d\.bin$"))
    with pytest.raises(ClientError) as exc:
        s3_server.client(endpoint=s3_proxy.url).get_object(Bucket=bucket, Key="d.bin")
    assert exc.value.response["Error"]["Code"] == "AccessDenied"


# -- HTTP file server ----------------------------------------------------------------------


def test_http_server_get_head_etag_length(served):
    pool = _pool(served)
    r = pool.request("GET", "/dir/file%20one.bin")
    assert r.status == 200 and r.data == DATA
    assert int(r.headers["Content-Length"]) == len(DATA) and r.headers["ETag"]
    h = pool.request("HEAD", "/dir/file%20one.bin")
    assert h.status == 200 and int(h.headers["Content-Length"]) == len(DATA) and h.data == b""
    assert h.headers["ETag"] == r.headers["ETag"]


def test_http_server_range_requests(served):
    pool = _pool(served)
    r = pool.request("GET", "/dir/file%20one.bin", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.data == DATA[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    r = pool.request("GET", "/dir/file%20one.bin", headers={"Range": f"bytes={MiB}-"})
    assert r.status == 206 and r.data == DATA[MiB:]
    r = pool.request("GET", "/dir/file%20one.bin", headers={"Range": f"bytes={len(DATA)}-"})
    assert r.status == 416


def test_http_server_missing_file_is_404_and_query_is_recorded(served):
    pool = _pool(served)
    assert pool.request("GET", "/nope.bin?sig=1").status == 404
    assert served.requests[-1].query == "sig=1"


def test_http_server_auth_headers(http_server_factory, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"secret weights")
    server = http_server_factory(tmp_path / "a", {"X-Token": "right"})
    pool = _pool(server)
    assert pool.request("GET", "/f").status == 401
    assert pool.request("GET", "/f", headers={"X-Token": "wrong"}).status == 403
    r = pool.request("GET", "/f", headers={"X-Token": "right"})
    assert r.status == 200 and r.data == b"secret weights"


# -- fault proxy ---------------------------------------------------------------------------


def test_proxy_forwards_and_records(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    r = _pool(proxy).request("GET", "/dir/file%20one.bin", headers={"Range": "bytes=5-"})
    assert r.status == 206 and r.data == DATA[5:]
    (rec,) = proxy.requests
    deadline = time.monotonic() + 5  # the handler marks completion just after the last write
    while rec.finished is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (rec.method, rec.path, rec.range, rec.range_start) == ("GET", "/dir/file one.bin", "bytes=5-", 5)
    assert rec.complete and rec.bytes_sent == len(DATA) - 5


@pytest.mark.parametrize("code", [500, 503, 429, 403, 404])
def test_proxy_status_fault_fires_count_times(served, fault_proxy, code):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.status(code, method="GET", path=r"file one", count=2))
    pool = _pool(proxy)
    assert [pool.request("GET", "/dir/file%20one.bin").status for _ in range(3)] == [code, code, 200]
    assert pool.request("HEAD", "/dir/file%20one.bin").status == 200
    assert [r.fault for r in proxy.requests] == ["status", "status", None, None]


def test_proxy_skip_lets_first_matches_through(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.status(503, path=r"file", skip=1, count=1))
    pool = _pool(proxy)
    assert [pool.request("GET", "/dir/file%20one.bin").status for _ in range(3)] == [200, 503, 200]


def test_proxy_reset_mid_body(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.reset(after=MiB, path=r"file"))
    r = _pool(proxy).request("GET", "/dir/file%20one.bin", preload_content=False)
    got = bytearray()
    with pytest.raises((urllib3.exceptions.ProtocolError, ConnectionResetError)):
        for chunk in r.stream(64 * 1024):
            got += chunk
    assert len(got) <= MiB and bytes(got) == DATA[: len(got)]
    assert proxy.requests[0].bytes_sent == MiB and not proxy.requests[0].complete


def test_proxy_reset_is_a_tcp_rst(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.reset(after=1000, path=r"file"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /dir/file%20one.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass


def test_proxy_truncates_body_under_full_content_length(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.truncate(after=MiB + 3, path=r"file"))
    r = _pool(proxy).request("GET", "/dir/file%20one.bin", preload_content=False)
    assert int(r.headers["Content-Length"]) == len(DATA)
    got = bytearray()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for chunk in r.stream(64 * 1024):
            got += chunk
    assert len(got) <= MiB + 3 and bytes(got) == DATA[: len(got)]
    assert proxy.requests[0].bytes_sent == MiB + 3 and not proxy.requests[0].complete


def test_proxy_stall_holds_the_body(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.stall(after=1000, seconds=3, path=r"file"))
    r = _pool(proxy, timeout=urllib3.Timeout(connect=2, read=0.5)).request(
        "GET", "/dir/file%20one.bin", preload_content=False
    )
    got = bytearray()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        for chunk in r.stream(500):
            got += chunk
    assert bytes(got) == DATA[:1000]


def test_proxy_stall_then_carries_on(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.stall(after=1000, seconds=0.5, path=r"file"))
    t0 = time.monotonic()
    r = _pool(proxy).request("GET", "/dir/file%20one.bin")
    assert r.data == DATA and time.monotonic() - t0 >= 0.5


def test_proxy_stop_ends_a_long_stall(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.stall(after=10, seconds=300, path=r"file"))
    r = _pool(proxy, timeout=10).request("GET", "/dir/file%20one.bin", preload_content=False)
    assert r.read(10) == DATA[:10]
    t0 = time.monotonic()
    proxy.stop()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        r.read()
    assert time.monotonic() - t0 < 5


def test_proxy_corrupt_flips_one_byte(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.corrupt(at=12345, path=r"file"))
    got = _pool(proxy).request("GET", "/dir/file%20one.bin").data
    assert len(got) == len(DATA) and got != DATA
    assert [i for i in range(len(DATA)) if got[i] != DATA[i]] == [12345]


def test_http_server_can_ignore_ranges(http_server_factory, tmp_path):
    (tmp_path / "nr").mkdir()
    (tmp_path / "nr" / "f").write_bytes(DATA)
    server = http_server_factory(tmp_path / "nr", ranges=False)
    r = _pool(server).request("GET", "/f", headers={"Range": "bytes=10-19"})
    assert r.status == 200 and r.data == DATA and "Accept-Ranges" not in r.headers


def test_http_server_honours_if_match_and_if_range(served):
    pool = _pool(served)
    etag = pool.request("HEAD", "/dir/file%20one.bin").headers["ETag"]
    assert pool.request("GET", "/dir/file%20one.bin", headers={"If-Match": '"other"'}).status == 412
    r = pool.request("GET", "/dir/file%20one.bin", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status == 200 and r.data == DATA
    r = pool.request(
        "GET", "/dir/file%20one.bin", headers={"Range": "bytes=0-9", "If-Range": etag, "If-Match": etag}
    )
    assert r.status == 206 and r.data == DATA[:10]


def test_proxy_hang_sends_nothing_then_carries_on(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.hang(0.8, path=r"file"))
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        _pool(proxy, timeout=urllib3.Timeout(connect=2, read=0.3)).request("GET", "/dir/file%20one.bin")
    proxy.add(Fault.hang(0.3, path=r"file"))
    t0 = time.monotonic()
    assert _pool(proxy).request("GET", "/dir/file%20one.bin").data == DATA
    assert time.monotonic() - t0 >= 0.3


def test_proxy_chunked_drops_content_length(served, fault_proxy):
    proxy = fault_proxy(served.base_url)
    proxy.add(Fault.chunked(path=r"file", count=2))
    pool = _pool(proxy)
    r = pool.request("GET", "/dir/file%20one.bin")
    assert r.data == DATA and "Content-Length" not in r.headers
    assert r.headers.get("Transfer-Encoding") == "chunked"
    h = pool.request("HEAD", "/dir/file%20one.bin")
    assert "Content-Length" not in h.headers
