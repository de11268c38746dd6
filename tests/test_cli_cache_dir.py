"""`storage-initializer --cache-dir` and `modeldepot download --cache-dir`: the node store as a front door."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from storage import verify

BIN = Path(sys.executable).parent


def _model(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "config.json").write_text('{"a": 1}')
    return src


def test_cache_hit_materializes_without_touching_the_source(tmp_path):
    src = _model(tmp_path)
    cache = tmp_path / "cache"
    first = subprocess.run([BIN / "storage-initializer", "--cache-dir", cache, src, tmp_path / "d1"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(src)  # a hit must not need the source at all
    second = subprocess.run([BIN / "storage-initializer", f"--cache-dir={cache}", src, tmp_path / "d2"],
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert verify(tmp_path / "d2") == []
    assert (tmp_path / "d2" / "weights.bin").read_bytes() == (tmp_path / "d1" / "weights.bin").read_bytes()
    # Same filesystem as the store: DEST's files are links to the store's blobs, not copies.
    assert (tmp_path / "d2" / "weights.bin").stat().st_nlink > 1


def test_cache_dir_from_env_serves_modeldepot_download(tmp_path):
    src = _model(tmp_path)
    env = {**os.environ, "MODELDEPOT_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([BIN / "modeldepot", "download", str(src), str(tmp_path / "d")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "cache" / "models").is_dir() and any((tmp_path / "cache" / "models").iterdir())
    assert verify(tmp_path / "d") == []


def test_cache_dir_flag_without_value_is_a_usage_error(tmp_path):
    run = subprocess.run([BIN / "storage-initializer", "--cache-dir"], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr
