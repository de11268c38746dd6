"""Node store benchmark: materializing a cached model vs ``cp -r``, and scrub throughput.

    python bench/bench_cache.py [--size 4G] [--files 4] [--workdir DIR]

Generates a model of random data in a temp dir under WORKDIR (default: the system temp dir), fills
a store on the same filesystem, then times, in the same run: ``cp -r`` of the model, materializing
it from the store into a fresh DEST (hard links + manifest, published atomically), and a scrub
(re-hash of every blob). Prints a small table. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cacheagent.store import Store  # noqa: E402
from storage import verify  # noqa: E402
from storage.config import parse_size  # noqa: E402

BLOCK = 64 << 20


def make_model(root: Path, size: int, files: int) -> None:
    """``files`` shards of random bytes (a 64 MiB random block, varied per block: incompressible
    and distinct everywhere, without paying for ``size`` bytes of urandom)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bench"}\n')
    base = bytearray(os.urandom(BLOCK))
    per = size // files
    for i in range(files):
        with open(root / f"model-{i:05d}-of-{files:05d}.safetensors", "wb") as fh:
            left = per
            n = 0
            while left > 0:
                base[:16] = os.urandom(16)
                chunk = memoryview(base)[: min(left, BLOCK)]
                fh.write(chunk)
                left -= len(chunk)
                n += 1


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4G", help="model size (Kubernetes quantity), default 4G")
    ap.add_argument("--files", type=int, default=4, help="weight shards, default 4")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the temp dir goes")
    args = ap.parse_args()
    size = parse_size(args.size)

    work = Path(tempfile.mkdtemp(prefix="modeldepot-bench-cache-", dir=args.workdir))
    try:
        src, root = work / "src", work / "store"
        print(f"generating {size / 1e9:.2f} GB in {args.files} shards under {work} ...", flush=True)
        make_model(src, size, args.files)
        store = Store(root)
        fill = timed(lambda: store.ensure(str(src)))
        key = store.list()[0].key

        cp = timed(lambda: subprocess.run(["cp", "-r", str(src), str(work / "copy")], check=True))
        dest = work / "dest" / "model"
        mat = timed(lambda: store.materialize(key, dest))
        assert verify(dest, full=False) == [], "materialized DEST does not match its manifest"
        report = store.scrub()
        assert report.corrupt == []

        gb = size / 1e9
        rows = [
            ("fill store (ensure, local source)", fill, f"{gb / fill * 1000:.0f} MB/s"),
            ("cp -r model", cp, f"{gb / cp * 1000:.0f} MB/s"),
            ("materialize from store", mat, f"{gb / mat * 1000:.0f} MB/s"),
            ("scrub (re-hash all blobs)", report.seconds, f"{report.mb_per_s:.0f} MB/s"),
        ]
        print()
        print(f"{'operation':36}  {'seconds':>8}  {'throughput':>12}")
        for name, secs, rate in rows:
            print(f"{name:36}  {secs:8.3f}  {rate:>12}")
        print()
        print(f"materialize is {cp / mat:.0f}x faster than cp -r ({size / 1e9:.2f} GB, {args.files + 1} files)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
