"""Benchmark: build and push a model image with modelcar vs olot + skopeo copy, in one run.

    .venv/bin/python bench/bench_modelcar.py --size-gb 4 [--olot PATH] [--workdir DIR]

Both sides start from the same model directory (N weight shards of random bytes + small JSON
files) and push to the same local docker-registry (127.0.0.1, filesystem storage), each into its
own repository. modelcar adds a static busybox layer; olot layers onto an OCI layout holding the
same busybox image (olot needs a base image). Then both re-push the unchanged model: modelcar
should upload no blob. Prints one JSON document with the timings.
Needs: docker-registry, skopeo, busybox-static (Debian); olot (PyPI: found on PATH, else installed into
bench/.venv-olot on first use; --olot names another script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.registry import DockerRegistry  # noqa: E402

from oci.build import build  # noqa: E402
from oci.push import push  # noqa: E402

CHUNK = 16 << 20


def make_model(root: Path, size: int, shards: int) -> None:
    root.mkdir(parents=True)
    per = size // shards
    for i in range(shards):
        with open(root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as fh:
            left = per
            while left:
                n = min(CHUNK, left)
                fh.write(os.urandom(n))
                left -= n
    (root / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_layers": 32}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(5000)}}))
    (root / "README.md").write_text("# bench model\n")


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


OLOT_VENV = Path(__file__).resolve().parent / ".venv-olot"


def ensure_olot() -> str:
    """olot from PATH, else from bench/.venv-olot, created on first use (like the kserve venv)."""
    found = shutil.which("olot") or (str(OLOT_VENV / "bin" / "olot") if (OLOT_VENV / "bin" / "olot").exists() else None)
    if found:
        return found
    print(f"bench: installing olot into {OLOT_VENV} (once) …", flush=True)
    subprocess.run(["python3", "-m", "venv", str(OLOT_VENV)], check=True)
    subprocess.run([str(OLOT_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "olot"], check=True)
    return str(OLOT_VENV / "bin" / "olot")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=4.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--olot", default=None, help="olot's script (default: PATH, else bench/.venv-olot)")
    ap.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args()
    args.olot = args.olot or ensure_olot()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-modelcar-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gb * (1 << 30))
    results: dict = {"size_bytes": size, "shards": args.shards}
    model = work / "model"
    try:
        make_model(model, size, args.shards)
        with DockerRegistry(work / "registry") as reg:
            host = reg.host
            env = {"HOME": str(work), "PATH": os.environ.get("PATH", "")}

            # modelcar: build (busybox + model layers) and push.
            ref = f"{host}/bench/modelcar:v1"
            t_build, r = timed(lambda: build(model, tag=ref, output_layout=work / "mc", busybox=args.busybox,
                                             jobs=args.jobs))
            t_push, p1 = timed(lambda: push(r.layout, ref, insecure=True, env=env, jobs=args.jobs))
            t_repush, p2 = timed(lambda: push(r.layout, ref, insecure=True, env=env, jobs=args.jobs))
            t_rebuild, r2 = timed(lambda: build(model, tag=ref, output_layout=work / "mc", busybox=args.busybox,
                                                jobs=args.jobs))
            t_repush2, p3 = timed(lambda: push(r2.layout, ref, insecure=True, env=env, jobs=args.jobs))
            results["modelcar"] = {
                "build_s": round(t_build, 2), "push_s": round(t_push, 2), "total_s": round(t_build + t_push, 2),
                "repush_unchanged_s": round(t_repush, 2), "repush_uploaded_blobs": len(p2.uploaded),
                "rebuild_same_digest": r2.digest == r.digest,
                "rebuild_and_push_s": round(t_rebuild + t_repush2, 2), "rebuild_push_uploaded_blobs": len(p3.uploaded),
            }

            # olot + skopeo: base layout (the same busybox image), layer the model in, copy it out.
            base_src = work / "base-model"
            base_src.mkdir()
            (base_src / ".keep").write_text("")
            base = build(base_src, tag=f"{host}/bench/base:latest", output_layout=work / "olot", busybox=args.busybox)
            files = sorted(str(p) for p in model.rglob("*") if p.is_file())
            t_olot, _ = timed(lambda: run([args.olot, str(base.layout), "--root-dir", str(model), *files]))
            dest = f"docker://{host}/bench/olot:v1"
            copy = ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{base.layout}:latest", dest]
            t_copy, _ = timed(lambda: run(copy))
            t_recopy, _ = timed(lambda: run(copy))
            results["olot_skopeo"] = {
                "olot_s": round(t_olot, 2), "skopeo_copy_s": round(t_copy, 2), "total_s": round(t_olot + t_copy, 2),
                "recopy_unchanged_s": round(t_recopy, 2),
            }
            results["speedup_build_push"] = round((t_olot + t_copy) / (t_build + t_push), 2)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
