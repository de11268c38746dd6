"""S3 full-object checksums: a whole-object GET asks for the CRC32 stored with the object and the
file is verified against it instead of the ETag's MD5 (six times cheaper to compute); objects
stored without one keep the MD5 check. Against SeaweedFS, with the fault proxy corrupting and
cutting the bytes in transit."""

from __future__ import annotations

import base64
import zlib

import pytest
from botocore.config import Config
from conftest import object_gets, s3_env_for
from support.faultproxy import Fault
from support.models import MiB, blob
from support.s3server import ACCESS_KEY, REGION, SECRET_KEY

from storage import download, verify
from storage.errors import IntegrityError
from storage.hashing import checker_value, new_checker
from storage.sources.s3 import response_checksums

DATA = blob(3 * MiB + 4321, "crc")
SINGLE_PART = 64 * MiB  # one stream per file


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture
def crc_model(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="m/w.bin", Body=DATA, ChecksumAlgorithm="CRC32")
    return f"s3://{bucket}/m"


@pytest.fixture
def plain_client(s3_server):
    """A client that stores no additional checksum: only the ETag's MD5 describes the object."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3_server.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name=REGION, config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


def test_crc32_checker_matches_what_s3_stores(s3_client, crc_model, bucket):
    head = s3_client.head_object(Bucket=bucket, Key="m/w.bin", ChecksumMode="ENABLED")
    checker = new_checker("crc32")
    checker.update(DATA[:1000])
    checker.update(DATA[1000:])
    assert checker_value("crc32", checker) == head["ChecksumCRC32"] == crc32_b64(DATA)


def test_whole_object_get_asks_for_the_checksum_without_range(crc_model, bucket, s3_proxy, tmp_path):
    dest = tmp_path / "dest"
    download(crc_model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "w.bin").read_bytes() == DATA
    (get,) = object_gets(s3_proxy, bucket, r"w\.bin$")
    assert get.range is None
    assert get.headers.get("x-amz-checksum-mode") == "ENABLED"
    assert "x-amz-checksum-mode" in get.headers.get("authorization", ""), "the header must be signed"


def test_ranged_parts_do_not_ask_for_a_checksum(crc_model, bucket, s3_proxy, tmp_path):
    dest = tmp_path / "dest"
    download(crc_model, dest, part_size=MiB, env=s3_env_for(s3_proxy.url))
    assert (dest / "w.bin").read_bytes() == DATA
    gets = object_gets(s3_proxy, bucket, r"w\.bin$")
    assert len(gets) == 4 and all(g.range for g in gets)
    assert not any("x-amz-checksum-mode" in g.headers for g in gets)


def test_flipped_byte_fails_the_crc32_check(crc_model, bucket, s3_proxy, tmp_path):
    s3_proxy.add(Fault.corrupt(at=MiB + 17, method="GET", path=r"/m/w\.bin$", count=1000))
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError) as exc:
        download(crc_model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    message = str(exc.value)
    assert "w.bin" in message and "crc32" in message and "md5" not in message and "\n" not in message
    assert not dest.exists()


def test_reset_mid_stream_resumes_and_verifies_the_crc32(crc_model, bucket, s3_proxy, tmp_path):
    cut = MiB + 999
    s3_proxy.add(Fault.reset(after=cut, method="GET", path=r"/m/w\.bin$"))
    dest = tmp_path / "dest"
    download(crc_model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "w.bin").read_bytes() == DATA
    assert verify(dest) == []
    first, retry = object_gets(s3_proxy, bucket, r"w\.bin$")
    assert first.fault == "reset" and first.range is None
    assert retry.range_start is not None and 0 < retry.range_start <= cut
    assert "x-amz-checksum-mode" not in retry.headers


def test_corruption_after_a_resume_fails_the_crc32_learned_before_it(crc_model, bucket, s3_proxy, tmp_path):
    # The CRC32 comes with the first (whole-object) response only; the resumed ranged GET carries
    # none. The hashing must span both, so a byte flipped in the second response still fails.
    s3_proxy.add(Fault.reset(after=MiB, method="GET", path=r"/m/w\.bin$"))
    s3_proxy.add(Fault.corrupt(at=MiB, method="GET", path=r"/m/w\.bin$", count=1000))
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"w\.bin failed its crc32 check"):
        download(crc_model, dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    first, second = object_gets(s3_proxy, bucket, r"w\.bin$")[:2]
    assert first.fault == "reset" and second.fault == "corrupt" and second.range_start
    assert not dest.exists()


def test_object_without_a_stored_checksum_keeps_the_md5_check(plain_client, bucket, s3_server, s3_proxy, tmp_path):
    plain_client.put_object(Bucket=bucket, Key="m/w.bin", Body=DATA)
    got = plain_client.get_object(Bucket=bucket, Key="m/w.bin", ChecksumMode="ENABLED")
    got["Body"].close()
    assert response_checksums(got["ResponseMetadata"]["HTTPHeaders"]) == {}, "SeaweedFS made up a checksum"
    dest = tmp_path / "ok"
    download(f"s3://{bucket}/m", dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "w.bin").read_bytes() == DATA
    s3_proxy.add(Fault.corrupt(at=123, method="GET", path=r"/m/w\.bin$", count=1000))
    with pytest.raises(IntegrityError, match=r"w\.bin failed its md5 check"):
        download(f"s3://{bucket}/m", tmp_path / "bad", part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))


def test_response_checksums_keep_full_object_values_only():
    crc = crc32_b64(b"x")
    sha = base64.b64encode(bytes(range(32))).decode()
    assert response_checksums({"x-amz-checksum-crc32": crc, "x-amz-checksum-type": "FULL_OBJECT",
                               "x-amz-checksum-sha256": sha}) == {"crc32": crc, "sha256": bytes(range(32)).hex()}
    assert response_checksums({"x-amz-checksum-crc32": "AAAAAA==-3"}) == {}
    assert response_checksums({"x-amz-checksum-crc32c": crc, "x-amz-checksum-type": "COMPOSITE"}) == {}
    assert response_checksums({"etag": '"abc"', "content-length": "1"}) == {}


def test_crc_checkers_give_the_standard_check_values():
    # The catalogue's check values of "123456789": CRC-32 (ISO-HDLC, S3's crc32) and CRC-64/NVME.
    for algorithm, want in (("crc32", "cbf43926"), ("crc64nvme", "ae8b14860a799888")):
        checker = new_checker(algorithm)
        checker.update(b"1234")
        checker.update(b"56789")
        assert base64.b64decode(checker_value(algorithm, checker)).hex() == want


def test_object_stored_with_crc64nvme_is_verified_by_it(s3_client, bucket, s3_proxy, tmp_path):
    # What S3 stores for objects uploaded without naming a checksum; MD5 is the fallback otherwise.
    s3_client.put_object(Bucket=bucket, Key="m/w.bin", Body=DATA, ChecksumAlgorithm="CRC64NVME")
    head = s3_client.head_object(Bucket=bucket, Key="m/w.bin", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC64NVME"), "SeaweedFS returned no CRC64NVME"
    dest = tmp_path / "ok"
    download(f"s3://{bucket}/m", dest, part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
    assert (dest / "w.bin").read_bytes() == DATA
    s3_proxy.add(Fault.corrupt(at=MiB + 5, method="GET", path=r"/m/w\.bin$", count=1000))
    with pytest.raises(IntegrityError, match=r"w\.bin failed its crc64nvme check"):
        download(f"s3://{bucket}/m", tmp_path / "bad", part_size=SINGLE_PART, env=s3_env_for(s3_proxy.url))
