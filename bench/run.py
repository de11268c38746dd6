"""Download benchmark (issue 4): modeldepot against curl and KServe's own initializer, in one run.

    .venv/bin/python bench/run.py [--scale 1.0] [--repeat 3] [--only SCENARIO] [--json out.json]

Generates synthetic models, starts nginx (HTTP) and SeaweedFS (S3) on 127.0.0.1, runs every tool
as a subprocess on every scenario, cold (DEST deleted, page cache dropped where allowed) and warm
(DEST already complete), and prints: scenario | tool | MB/s (median) | ratio vs baseline | peak
RSS | verdict vs the issue's targets. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO / "tests")]

from support.procs import ManagedProcess, free_port  # noqa: E402

MB = 1_000_000
KSERVE_VENV = BENCH / ".venv-kserve"
KSERVE_PIN = "kserve-storage==0.21.0"
BUCKET = "bench"
RSS_LIMIT_MB = 300
VERIFY_LIMIT = 1.10


# -- scenarios ---------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    title: str
    kind: str  # "http" | "s3"
    files: list[tuple[str, int, str]]  # (relative path, size, "random" | "text")
    baseline: str
    target: float | None  # modeldepot MB/s ÷ baseline MB/s, cold, defaults

    @property
    def total(self) -> int:
        return sum(size for _, size, _ in self.files)


SMALL_FILES = [  # an LLM repo's small files: (name, size in bytes at scale 1)
    ("config.json", 700), ("generation_config.json", 180), ("tokenizer.json", 9_000_000),
    ("tokenizer_config.json", 50_000), ("special_tokens_map.json", 400),
    ("model.safetensors.index.json", 24_000), ("vocab.json", 1_800_000), ("merges.txt", 450_000),
    ("README.md", 12_000), ("LICENSE", 7_000), ("USE_POLICY.md", 4_700), ("chat_template.jinja", 4_000),
    ("preprocessor_config.json", 350), ("added_tokens.json", 1_200), ("tokenizer.model", 500_000),
    ("original/params.json", 220), ("original/tokenizer.model", 2_100_000), (".gitattributes", 1_500),
    ("configuration.json", 50), ("notice.txt", 3_000),
]


def scenarios(scale: float) -> list[Scenario]:
    def sz(n: float) -> int:
        return max(1024, int(n * scale))

    big = sz(2_000_000_000)
    llm = [(f"model-{i:05d}-of-00004.safetensors", sz(500_000_000), "random") for i in range(1, 5)]
    llm += [(name, max(50, int(size * min(1.0, scale * 20))), "text") for name, size in SMALL_FILES]
    return [
        Scenario("http-2g", "HTTP 1×2GB", "http", [("model.bin", big, "random")], "curl", 0.9),
        Scenario("s3-2g", "S3 1×2GB", "s3", [("model.bin", big, "random")], "kserve", 1.5),
        Scenario("s3-256x8m", "S3 256×8MB", "s3",
                 [(f"shard-{i:04d}.bin", sz(8_000_000), "random") for i in range(256)], "kserve", 2.0),
        Scenario("s3-llm", "S3 LLM 4×500MB+20", "s3", llm, "kserve", None),
    ]


# -- tools -------------------------------------------------------------------------------------
@dataclass
class Tool:
    name: str
    kinds: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    available: str | None = None  # None: runnable; else the reason it is N/A
    warm: bool = True  # also timed on a second run into the complete DEST

    def argv(self, src: str, dest: Path) -> list[str]:
        if self.name == "curl":
            return ["curl", "-sS", "-f", "-o", str(dest / src.rsplit("/", 1)[-1]), src]
        if self.name == "curl + fsync":  # what curl costs when its file must be durable, like ours
            out = dest / src.rsplit("/", 1)[-1]
            return ["sh", "-c", 'curl -sS -f -o "$1" "$2" && sync -d "$1"', "sh", str(out), src]
        if self.name == "kserve":
            return [str(KSERVE_VENV / "bin" / "python"), str(BENCH / "kserve_driver.py"), src, str(dest)]
        if self.name == "modeldepot no-verify":
            return [str(REPO / ".venv" / "bin" / "python"), str(BENCH / "noverify_driver.py"), src, str(dest)]
        return [str(REPO / ".venv" / "bin" / "storage-initializer"), src, str(dest)]

    def prewarm(self) -> list[str]:
        """Loads the tool's code (and botocore's S3 model) into the page cache after a drop, so a
        cold run measures the transfer, not reading site-packages from disk."""
        if self.name.startswith("curl"):
            return ["curl", "--version"]
        client = "botocore.session.get_session().create_client('s3', region_name='us-east-1')"
        if self.name == "kserve":
            return [str(KSERVE_VENV / "bin" / "python"), "-c",
                    f"import kserve_storage, boto3, requests, botocore.session; {client}"]
        return [str(REPO / ".venv" / "bin" / "python"), "-c",
                "import initializer.cli, storage.engine, storage.sources.s3, storage.sources.http, "
                f"urllib3, xxhash, botocore.session; {client}"]


def make_tools(kserve_reason: str | None) -> list[Tool]:
    return [
        Tool("curl", ("http",), available=None if shutil.which("curl") else "N/A: curl not installed"),
        Tool("curl + fsync", ("http",), warm=False,
             available=None if shutil.which("curl") else "N/A: curl not installed"),
        Tool("kserve", ("http", "s3"), available=kserve_reason),
        Tool("modeldepot", ("http", "s3")),
        Tool("modeldepot fsync=1", ("http", "s3"), env={"MODELDEPOT_FSYNC": "1"}, warm=False),
        Tool("modeldepot no-verify", ("http", "s3"), warm=False),
    ]


def ensure_kserve(install: bool) -> str | None:
    """None when bench/.venv-kserve can run kserve_storage; else why not."""
    py = KSERVE_VENV / "bin" / "python"
    probe = [str(py), "-c", "import kserve_storage, importlib.metadata as m; print(m.version('kserve-storage'))"]
    if py.exists():
        out = subprocess.run(probe, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == KSERVE_PIN.split("==")[1]:
            return None
    if not install:
        return f"N/A: {KSERVE_VENV.name} missing (run without --no-install)"
    print(f"bench: installing {KSERVE_PIN} into {KSERVE_VENV} (once) …", flush=True)
    try:
        subprocess.run(["python3", "-m", "venv", str(KSERVE_VENV)], check=True, capture_output=True)
        subprocess.run([str(KSERVE_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        KSERVE_PIN], check=True, capture_output=True, timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        tail = getattr(exc, "stderr", b"") or b""
        return f"N/A: installing {KSERVE_PIN} failed: {tail.decode(errors='replace')[-200:] or exc}"
    out = subprocess.run(probe, capture_output=True, text=True)
    return None if out.returncode == 0 else f"N/A: kserve_storage does not import: {out.stderr[-200:]}"


# -- measuring one run -------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


@dataclass
class Run:
    seconds: float
    rss_mb: float  # peak of the tool's process tree: max(sampled sum of VmRSS, largest VmHWM)
    maxrss_mb: float  # the largest single process's VmHWM
    rc: int
    error: str | None = None
    unchanged: bool | None = None  # warm runs: DEST's files kept their inodes and mtimes


def measure(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> Run:
    """Run ``argv`` in its own session; wall time, and peak memory of it and its children.

    Memory is sampled from /proc every 0.1 s (VmRSS summed over the process tree, VmHWM per
    process): wait4's ru_maxrss would also count the bench's own RSS, inherited across fork+exec.
    """
    peak_sum = peak_one = 0
    stop = threading.Event()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def sample():
            nonlocal peak_sum, peak_one
            while True:
                mem = [_mem_kb(p) for p in _tree(proc.pid)]
                peak_sum = max(peak_sum, sum(r for r, _ in mem))
                peak_one = max([peak_one] + [h for _, h in mem])
                if stop.wait(0.1):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(timeout, lambda: _killpg(proc.pid))
        killer.start()
        try:
            # waitid(WNOWAIT) leaves the exited process as a zombie for one last sample
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            seconds = time.monotonic() - t0
        finally:
            killer.cancel()
            stop.set()
        sampler.join()
        proc.wait()
    rc = proc.returncode
    error = None
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        error = f"exit {rc}{' (timeout)' if seconds >= timeout else ''}: {tail[0][:160]}"
    return Run(seconds, max(peak_sum, peak_one) / 1024, peak_one / 1024, rc, error)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_DROP = {"ok": None}


def drop_caches() -> bool:
    """sync, then drop the page cache where the kernel lets us; remembers a refusal."""
    os.sync()
    if _DROP["ok"] is False:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        _DROP["ok"] = True
    except OSError:
        _DROP["ok"] = False
    return bool(_DROP["ok"])


# -- data and servers --------------------------------------------------------------------------
def write_file(path: Path, size: int, kind: str) -> str:
    """Write ``size`` bytes (random, or JSON-ish text); returns their xxh3-128."""
    import xxhash

    path.parent.mkdir(parents=True, exist_ok=True)
    h = xxhash.xxh3_128()
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(16 << 20, left)
            if kind == "random":
                block = os.urandom(n)
            else:
                line = b'{"token": "%d", "id": %d},\n'
                block = b"".join(line % (i, i) for i in range(n // 20 + 1))[:n]
            fh.write(block)
            h.update(block)
            left -= n
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    import xxhash

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(".modeldepot") or not p.is_file() or p.is_symlink():
            continue
        h = xxhash.xxh3_128()
        with open(p, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
        out[rel] = (p.stat().st_size, h.hexdigest())
    return out


def tree_sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).as_posix().startswith(".modeldepot")}


def tree_identity(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


class Nginx:
    """nginx from Debian in the foreground, serving ``root`` on a free 127.0.0.1 port."""

    def __init__(self, root: Path, work: Path):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx not found: apt-get install nginx-light (tests/deps/apt.txt)")
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = work / "nginx.conf"
        conf.write_text(f"""
{user}
daemon off;
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    sendfile_max_chunk 0;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
    }}
}}
""")
        self.proc = ManagedProcess([binary, "-e", str(work / "error.log"), "-p", str(work), "-c", str(conf)],
                                   work / "nginx.out")
        self.proc.wait_port(self.port, timeout=20)

    def stop(self) -> None:
        self.proc.stop()


class S3:
    """SeaweedFS ``weed mini`` as the tests start it (tests/support/s3server.py), plus uploads."""

    def __init__(self, work: Path):
        from support.s3server import SeaweedS3

        self.server = SeaweedS3(work)
        self.client = self.server.client()
        self.client.create_bucket(Bucket=BUCKET)

    def env(self) -> dict[str, str]:
        from support.s3server import ACCESS_KEY, REGION, SECRET_KEY

        return {"AWS_ENDPOINT_URL": self.server.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def upload(self, root: Path, prefix: str) -> None:
        """Big files as multipart uploads (64 MiB parts: multipart ETags, no MD5, as real models)."""
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)
        files = [p for p in sorted(root.rglob("*")) if p.is_file()]

        def put(p: Path):
            self.client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(root).as_posix()}", Config=cfg)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def stop(self) -> None:
        self.server.stop()


# -- the benchmark -----------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    title: str
    phase: str  # "cold" | "warm"
    tool: str
    bytes: int
    runs: list[Run] = field(default_factory=list)
    na: str | None = None

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.error is None]

    @property
    def error(self) -> str | None:
        bad = [r.error for r in self.runs if r.error]
        return bad[0] if bad else None

    @property
    def median_s(self) -> float | None:
        ok = self.ok_runs
        return statistics.median(r.seconds for r in ok) if ok and not self.error else None

    @property
    def mbps(self) -> float | None:
        s = self.median_s
        return self.bytes / MB / s if s else None

    @property
    def rss_mb(self) -> float | None:
        return max((r.rss_mb for r in self.runs), default=None)


def run_scenario(sc: Scenario, tools: list[Tool], args, work: Path, servers: dict) -> list[Result]:
    data = work / "src" / sc.name
    shutil.rmtree(data, ignore_errors=True)
    print(f"\n== {sc.title}: generating {sc.total / MB:.1f} MB in {len(sc.files)} files", flush=True)
    digests = {rel: (size, write_file(data / rel, size, kind)) for rel, size, kind in sc.files}
    env_base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "MODELDEPOT_"))}
    env_base["MODELDEPOT_PROGRESS_INTERVAL"] = "3600"
    if sc.kind == "http":
        if "nginx" not in servers:
            servers["nginx"] = Nginx(work / "src", work / "nginx")
        src = f"http://127.0.0.1:{servers['nginx'].port}/{sc.name}/{sc.files[0][0]}"
    else:
        if "s3" not in servers:
            servers["s3"] = S3(work / "seaweed")
        t0 = time.monotonic()
        servers["s3"].upload(data, sc.name)
        print(f"   uploaded to seaweedfs in {time.monotonic() - t0:.1f}s", flush=True)
        shutil.rmtree(data)  # only the server's copy is needed now
        src = f"s3://{BUCKET}/{sc.name}"
        env_base.update(servers["s3"].env())

    mine = [t for t in tools if sc.kind in t.kinds]
    cold = {t.name: Result(sc.name, sc.title, "cold", t.name, sc.total, na=t.available) for t in mine}
    warm = {t.name: Result(sc.name, sc.title + " warm", "warm", t.name, sc.total, na=t.available)
            for t in mine if t.warm}
    runnable = [t for t in mine if t.available is None]
    dests = {t.name: work / "dest" / t.name.replace(" ", "_").replace("=", "") for t in runnable}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    checked: set[str] = set()

    def dest_of(t: Tool) -> Path:
        return dests[t.name] / "model"

    for rnd in range(args.repeat):
        order = runnable[rnd % len(runnable):] + runnable[:rnd % len(runnable)] if runnable else []
        for t in order:
            shutil.rmtree(dests[t.name], ignore_errors=True)
            (dest_of(t) if t.name.startswith("curl") else dests[t.name]).mkdir(parents=True)
            if drop_caches():
                subprocess.run(t.prewarm(), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            run = measure(t.argv(src, dest_of(t)), {**env_base, **t.env}, logs / f"{sc.name}.{dests[t.name].name}.log",
                          args.timeout)
            if run.error is None:
                run.error = check_output(dest_of(t), digests, full=t.name not in checked)
                checked.add(t.name)
            cold[t.name].runs.append(run)
            print(f"   cold #{rnd + 1} {t.name:<22} {run.seconds:7.2f}s  {sc.total / MB / run.seconds:8.1f} MB/s"
                  f"  {run.rss_mb:6.0f} MB{'  ' + run.error if run.error else ''}", flush=True)
    for rnd in range(args.repeat):
        for t in runnable:
            if not t.warm or cold[t.name].error:
                continue
            before = tree_identity(dest_of(t))
            if drop_caches():
                subprocess.run(t.prewarm(), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            run = measure(t.argv(src, dest_of(t)), {**env_base, **t.env}, logs / f"{sc.name}.{dests[t.name].name}.log",
                          args.timeout)
            if run.error is None:
                run.error = check_output(dest_of(t), digests, full=False)
                after = tree_identity(dest_of(t))
                run.unchanged = before == after
            warm[t.name].runs.append(run)
            print(f"   warm #{rnd + 1} {t.name:<22} {run.seconds:7.2f}s  rewrote nothing: {run.unchanged}"
                  f"  {run.rss_mb:6.0f} MB{'  ' + run.error if run.error else ''}", flush=True)

    for d in dests.values():
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    if sc.kind == "s3":
        servers["s3"].delete_prefix(sc.name)
    return list(cold.values()) + list(warm.values())


def check_output(dest: Path, digests: dict[str, tuple[int, str]], full: bool) -> str | None:
    """None when DEST holds exactly the source files (sizes; with ``full``, contents too)."""
    got = tree_digest(dest) if full else {k: (v, None) for k, v in tree_sizes(dest).items()}
    want = digests if full else {k: (v[0], None) for k, v in digests.items()}
    if got == want:
        return None
    missing = sorted(set(want) - set(got))[:2]
    extra = sorted(set(got) - set(want))[:2]
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:2]
    return f"wrong output: missing {missing} extra {extra} differing {wrong}"


# -- the table ---------------------------------------------------------------------------------
def summarize(results: list[Result], scs: dict[str, Scenario]) -> list[dict]:
    rows = []
    by = {(r.scenario, r.phase, r.tool): r for r in results}
    for r in results:
        sc = scs[r.scenario]
        base = by.get((r.scenario, r.phase, sc.baseline))
        ratio = None
        if r.median_s and base is not None and base.median_s:
            ratio = base.median_s / r.median_s  # = MB/s ratio: both moved the same bytes
        verdict = []
        if r.na:
            verdict.append(r.na)
        elif r.error:
            verdict.append(f"FAILED: {r.error}")
        elif r.tool.startswith("modeldepot"):
            if r.phase == "cold" and r.tool == "modeldepot" and sc.target is not None:
                if ratio is None:
                    verdict.append(f"≥{sc.target}× {sc.baseline}: no baseline")
                else:
                    verdict.append(f"{'ok' if ratio >= sc.target else 'MISS'} ≥{sc.target}× {sc.baseline}")
            if r.phase == "warm":
                same = all(x.unchanged for x in r.runs)
                verdict.append("ok nothing transferred" if same else "MISS files rewritten")
            rss = r.rss_mb or 0
            verdict.append(f"{'ok' if rss <= RSS_LIMIT_MB else 'MISS'} RSS≤{RSS_LIMIT_MB}")
        elif r.tool == sc.baseline:
            verdict.append("baseline")
        elif r.tool == "curl + fsync":
            verdict.append("reference: curl, then its file fsynced")
        rows.append({"scenario": r.title, "phase": r.phase, "tool": r.tool, "median_s": r.median_s,
                     "mbps": r.mbps, "ratio": ratio, "rss_mb": r.rss_mb, "verdict": "; ".join(verdict),
                     "seconds": [x.seconds for x in r.runs], "rss_runs_mb": [x.rss_mb for x in r.runs],
                     "maxrss_single_process_mb": [x.maxrss_mb for x in r.runs]})
    # overheads, cold: verification (no-verify switch) and fsync
    for name, sc in scs.items():
        md = by.get((name, "cold", "modeldepot"))
        if md is None:
            continue
        # (numerator, denominator): verification = default ÷ no-verify; fsync = fsync=1 ÷ default
        for num, den, label, limit in ((md, by.get((name, "cold", "modeldepot no-verify")),
                                        "verification overhead", VERIFY_LIMIT),
                                       (by.get((name, "cold", "modeldepot fsync=1")), md, "fsync overhead", None)):
            if num is None or den is None:
                continue
            o = den if num is md else num
            if num.median_s and den.median_s:
                f = num.median_s / den.median_s
                v = (f"{'ok' if f <= limit else 'MISS'} ≤{limit}×" if limit else "info")
                rows.append({"scenario": sc.title, "phase": "cold", "tool": label, "median_s": None, "mbps": None,
                             "ratio": f, "rss_mb": None, "verdict": f"{v} (time with ÷ without)"})
            else:
                rows.append({"scenario": sc.title, "phase": "cold", "tool": label, "median_s": None, "mbps": None,
                             "ratio": None, "rss_mb": None, "verdict": o.na or o.error or md.error or "N/A"})
    return rows


def print_table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    header = ["scenario", "tool", "MB/s (median)", "time s", "ratio vs baseline", "peak RSS MB", "verdict"]
    lines = [[r["scenario"], r["tool"], fmt(r["mbps"], ".1f"), fmt(r["median_s"], ".2f"),
              fmt(r["ratio"], ".2f") + ("×" if r["ratio"] is not None else ""), fmt(r["rss_mb"], ".0f"),
              r["verdict"]] for r in rows]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |" for x in lines]
    text = "\n".join(out)
    print(text)
    return text


def engine_state() -> str:
    """The commit benchmarked, and whether storage/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "storage", "initializer"], cwd=REPO,
                               capture_output=True, text=True).stdout.split()
    except OSError:
        return "unknown"
    changed = [x for x in dirty[1::2]]
    return f"{head or 'unknown'}" + (f" + uncommitted {' '.join(changed)}" if changed else "")


def expected_rows(scale: float = 0.005) -> list[tuple[str, str]]:
    """(scenario title, tool) of every row the table prints (the smoke test checks them)."""
    rows = []
    tools = make_tools(None)
    for sc in scenarios(scale):
        rows += [(sc.title, t.name) for t in tools if sc.kind in t.kinds]
        rows += [(sc.title + " warm", t.name) for t in tools if sc.kind in t.kinds and t.warm]
        rows += [(sc.title, "verification overhead"), (sc.title, "fsync overhead")]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="modeldepot download benchmark (issue 4)")
    ap.add_argument("--scale", type=float, default=1.0, help="size factor: 1.0 = 2 GB files, 0.005 = smoke")
    ap.add_argument("--repeat", type=int, default=3, help="cold and warm runs per tool (median reported)")
    ap.add_argument("--only", action="append", default=None,
                    help="scenario name (repeatable): http-2g, s3-2g, s3-256x8m, s3-llm")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--workdir", default=str(BENCH / "out" / "work"), help="data, servers and DESTs (wiped)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per tool run before it is killed")
    ap.add_argument("--no-install", action="store_true", help="do not create bench/.venv-kserve when missing")
    args = ap.parse_args(argv)

    scs = {s.name: s for s in scenarios(args.scale)}
    chosen = args.only or list(scs)
    unknown = [n for n in chosen if n not in scs]
    if unknown:
        ap.error(f"unknown scenario {unknown}; choose from {list(scs)}")
    work = Path(args.workdir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)

    tools = make_tools(ensure_kserve(not args.no_install))
    dropped = drop_caches()
    load = os.getloadavg()
    print(f"bench: scale {args.scale}, repeat {args.repeat}, {os.cpu_count()} CPUs, load {load[0]:.2f}; "
          f"page cache {'dropped before every run' if dropped else 'NOT dropped (no permission): runs are warm-cache'}",
          flush=True)
    engine = engine_state()
    print(f"bench: engine {engine}", flush=True)
    servers: dict = {}
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        for name in chosen:
            results += run_scenario(scs[name], tools, args, work, servers)
    finally:
        for s in servers.values():
            s.stop()
    rows = summarize(results, scs)
    print(f"\nbench: finished in {time.monotonic() - t0:.0f}s; MB = 10^6 bytes; ratio = baseline time ÷ tool time; "
          f"peak RSS = the tool's process tree; load at end {os.getloadavg()[0]:.2f}\n")
    print_table(rows)
    if args.json:
        doc = {"engine": engine, "scale": args.scale, "repeat": args.repeat, "page_cache_dropped": dropped, "cpus": os.cpu_count(),
               "python": platform.python_version(), "rows": rows,
               "runs": [{**{k: v for k, v in asdict(r).items() if k != "runs"},
                         "runs": [asdict(x) for x in r.runs]} for r in results]}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results if r.tool.startswith("modeldepot") and r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
