"""``modeldepot demo``: the whole path on one machine, no cloud account.

Generates a small model, serves it as a tar over HTTP on 127.0.0.1, downloads it with the real
``storage-initializer`` command, shows the manifest, downloads again (nothing transferred), and
verifies. Everything it starts, it stops.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

from storage import read_manifest, verify
from storage.progress import human_bytes


def make_sample_model(root: Path, weights_mib: int = 64) -> Path:
    """A model-shaped tree: config, tokenizer, two weight shards, a nested folder."""
    model = root / "sample-model"
    if (model / "model-00002-of-00002.safetensors").exists():
        return model
    (model / "tokenizer").mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": 256}))
    (model / "generation_config.json").write_text(json.dumps({"max_new_tokens": 64}))
    (model / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(2000)}}))
    (model / "tokenizer" / "special_tokens_map.json").write_text("{}")
    for n in (1, 2):
        with open(model / f"model-0000{n}-of-00002.safetensors", "wb") as fh:
            for _ in range(weights_mib // 2):
                fh.write(os.urandom(1 << 20))
    return model


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server with Range support that counts the body bytes it sends."""

    sent = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{int(path.stat().st_mtime_ns)}-{path.stat().st_size}"')
        self.end_headers()

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end, status = int(a or 0), min(int(b) if b else size - 1, size - 1), 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{int(path.stat().st_mtime_ns)}-{size}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
                with _CountingHandler.lock:
                    _CountingHandler.sent += len(chunk)


def run_demo(workdir: Path) -> int:
    workdir = workdir.absolute()
    served = workdir / "served"
    served.mkdir(parents=True, exist_ok=True)
    model = make_sample_model(workdir)
    archive = served / "sample-model.tar"
    if not archive.exists():
        with tarfile.open(archive, "w") as tar:
            tar.add(model, arcname=".")
    dest = workdir / "models"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_CountingHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sample-model.tar"
    say = partial(print, flush=True)
    try:
        say(f"== serving a generated {human_bytes(archive.stat().st_size)} sample model at {url}")
        for attempt in ("first", "second"):
            before = _CountingHandler.sent
            say(f"== {attempt} run: storage-initializer {url} {dest}")
            rc = subprocess.call([sys.executable, "-m", "initializer.cli", url, str(dest)],
                                 env={**os.environ, "MODELDEPOT_PROGRESS_INTERVAL": "1"})
            if rc != 0:
                say(f"storage-initializer failed with exit code {rc}")
                return rc
            say(f"   the server sent {human_bytes(_CountingHandler.sent - before)} of body bytes")
            if attempt == "first":
                manifest = read_manifest(dest)
                say(f"== {dest}/.modeldepot/manifest.json: {len(manifest.files)} files, "
                    f"{human_bytes(manifest.total_bytes)}")
                for f in manifest.files:
                    say(f"   {f.xxh3_128}  {f.size:>10}  {f.path}")
        problems = verify(dest)
        say(f"== modeldepot verify {dest}: " + ("OK" if not problems else "; ".join(problems)))
        return 0 if not problems else 1
    finally:
        server.shutdown()
        server.server_close()
