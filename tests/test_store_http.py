"""Where network-ness matters: a cache hit asks nothing of the source, even when it is gone."""

from __future__ import annotations

import os

import pytest
from support.httpserver import HTTPFileServer
from support.models import MiB, blob, read_tree, write_tree

from cacheagent.initializer_hook import download_via_cache
from cacheagent.store import Store, key_for
from storage import CapacityError, verify

WEIGHTS = blob(2 * MiB + 7, "http-weights")


@pytest.fixture
def source(tmp_path):
    write_tree(tmp_path / "www", {"model.safetensors": WEIGHTS})
    server = HTTPFileServer(tmp_path / "www")
    yield server
    server.stop()


def test_a_hit_makes_no_request_and_survives_the_source_going_away(source, tmp_path):
    uri = source.url("model.safetensors")
    store = Store(tmp_path / "store")
    store.ensure(uri)
    assert any(r.method == "GET" for r in source.requests)
    source.clear()
    source.stop()
    record = store.ensure(uri)
    assert record.state == "ready" and source.requests == []
    dest = tmp_path / "dest"
    download_via_cache(uri, dest, tmp_path / "store")
    assert read_tree(dest) == {"model.safetensors": WEIGHTS} and verify(dest) == []
    assert source.requests == []


def test_download_via_cache_fills_the_store_then_hard_links_dest(source, tmp_path):
    uri = source.url("model.safetensors")
    cache = tmp_path / "cache"
    dest = tmp_path / "mnt" / "models"
    manifest = download_via_cache(uri, dest, cache)
    assert [f.path for f in manifest.files] == ["model.safetensors"]
    assert read_tree(dest) == {"model.safetensors": WEIGHTS} and verify(dest) == []
    held = cache / "models" / key_for(uri) / "model.safetensors"
    assert os.path.samefile(dest / "model.safetensors", held)


def test_download_via_cache_keeps_filtered_downloads_apart(tmp_path):
    write_tree(tmp_path / "src", {"a.json": b"{}", "w.bin": WEIGHTS})
    src = str(tmp_path / "src")
    only_json = download_via_cache(src, tmp_path / "d1", tmp_path / "cache", include=["*.json"])
    everything = download_via_cache(src, tmp_path / "d2", tmp_path / "cache")
    assert [f.path for f in only_json.files] == ["a.json"]
    assert sorted(f.path for f in everything.files) == ["a.json", "w.bin"]
    assert len(Store(tmp_path / "cache").list()) == 2
    assert Store(tmp_path / "cache").usage().blobs == 2, "the shared config is stored once"


def test_download_via_cache_honours_the_capacity_variable(source, tmp_path):
    uri = source.url("model.safetensors")
    with pytest.raises(CapacityError):
        download_via_cache(uri, tmp_path / "dest", tmp_path / "cache",
                           env={"MODELDEPOT_CACHE_CAPACITY": "1Mi"})
    assert not (tmp_path / "dest").exists()
    assert not [r for r in source.requests if r.method == "GET" and r.range != "bytes=0-0"], \
        "the listed size stopped it before any data was fetched"
