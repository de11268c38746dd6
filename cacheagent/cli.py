"""``modeldepot cache …``: the node store from a shell. Every command is one Store call.

Each command takes ``--root DIR`` (or MODELDEPOT_CACHE_DIR) and prints a table, or JSON with
``--json``. Errors are one line on stderr and exit code 1; ``verify`` and ``fsck`` also exit 1
when they find problems (fsck, and ``verify --repair``: problems they could not repair).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import typer

from storage.errors import StorageError
from storage.progress import human_bytes

cache_app = typer.Typer(name="cache", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        help="The node model store: list, check, repair, pin and fill it.")

ROOT = typer.Option(..., "--root", envvar="MODELDEPOT_CACHE_DIR", help="the store's root directory")
CAPACITY = typer.Option(None, "--capacity", envvar="MODELDEPOT_CACHE_CAPACITY",
                        help="the store's limit, e.g. 500Gi (Kubernetes quantity)")
JSON = typer.Option(False, "--json", help="print JSON instead of a table")


def _store(root: Path, capacity: str | None = None):
    from cacheagent.store import Store

    return Store(root, capacity=capacity)


def _run(fn: Callable[[], int | None]) -> None:
    try:
        code = fn()
    except StorageError as exc:
        typer.echo(f"modeldepot cache: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if code:
        raise typer.Exit(code)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _records(records, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records], indent=1))
        return
    _table([[r.key, r.state, human_bytes(r.bytes) if r.bytes is not None else "-",
             r.files if r.files is not None else "-", ",".join(r.pinned_by) or "-", _when(r.last_used), r.uri]
            for r in records], ["KEY", "STATE", "SIZE", "FILES", "PINNED BY", "LAST USED", "URI"])


def _report(report, as_json: bool, lines: list[tuple[str, object]]) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        return
    for label, value in lines:
        if isinstance(value, list):
            for item in value:
                typer.echo(f"{label}: {item}")
        else:
            typer.echo(f"{label}: {value}")


@cache_app.command("ls")
def ls(root: Path = ROOT, as_json: bool = JSON) -> None:
    """Models in the store: state, size, pins, last use."""
    _run(lambda: _records(_store(root).list(), as_json))


@cache_app.command("du")
def du(root: Path = ROOT, capacity: str = CAPACITY, as_json: bool = JSON) -> None:
    """Bytes the store holds (each blob once), its capacity and what is left."""
    def go():
        u = _store(root, capacity).usage()
        if as_json:
            typer.echo(json.dumps(u.to_dict(), indent=1))
            return
        cap = human_bytes(u.capacity) if u.capacity is not None else "unlimited"
        _table([[human_bytes(u.used), cap, human_bytes(u.available), u.blobs, human_bytes(u.ingesting)]],
               ["USED", "CAPACITY", "AVAILABLE", "BLOBS", "INGESTING"])
    _run(go)


@cache_app.command("verify")
def verify(key: str = typer.Argument(None, help="one model (key or URI); default: all"),
           root: Path = ROOT, quick: bool = typer.Option(False, "--quick", help="links and sizes only, no re-hash"),
           repair: bool = typer.Option(False, "--repair", help="take damaged models out of the store and fetch "
                                       "their damaged files again"),
           refetch: bool = typer.Option(True, "--refetch/--no-refetch", help="with --repair: fetch at once with "
                                        "this process's credentials (default), or leave that to the agent"),
           as_json: bool = JSON) -> None:
    """Re-hash published models against their manifests. Exit 1 listing problems (with --repair: if a
    model is not whole and published again afterwards)."""
    def go():
        store = _store(root)
        problems = store.problems(key, full=not quick)
        if not repair or not problems:
            if as_json:
                typer.echo(json.dumps({"problems": [p.line for p in problems]}, indent=1))
            else:
                for p in problems:
                    typer.echo(p.line)
                if not problems:
                    typer.echo("OK")
            return 1 if problems else 0
        r = store.repair(problems, refetch=refetch)
        keys = sorted({p.key for p in problems} | set(r.taken_out))
        left = sorted(set(r.skipped) | {k for k in keys if store.record(k).state != "ready" or store.verify(k, full=False)})
        if as_json:
            typer.echo(json.dumps({"problems": [p.line for p in problems], "repair": r.to_dict(), "not_repaired": left},
                                  indent=1))
            return 1 if left else 0
        for p in problems:
            typer.echo(p.line)
        uris = {k: store.record(k).uri for k in left}
        _report(r, False, [
            ("unpublished", [f"{k} ({', '.join(files)})" for k, files in r.unpublished.items()]),
            ("removed model", r.discarded), ("removed blob", r.removed_blobs), ("removed file", r.removed_files),
            ("re-fetched", r.refetched), ("failed", [f"{k}: {v}" for k, v in r.failed.items()]),
            ("skipped (in use, try again)", r.skipped),
            ("not repaired", [f"{k} {uris[k]}".rstrip() for k in left]),
            ("result", "repaired" if not left else
             "NOT REPAIRED" + ("" if refetch else ": the agent fetches unpublished models again, or run "
                                                  "`modeldepot cache ensure URI`")),
        ])
        return 1 if left else 0
    _run(go)


@cache_app.command("gc")
def gc(root: Path = ROOT, as_json: bool = JSON) -> None:
    """Delete blobs no model references."""
    def go():
        r = _store(root).gc()
        _report(r, as_json, [("removed blobs", r.removed_blobs), ("freed", human_bytes(r.freed_bytes)),
                             ("debris", r.debris)])
    _run(go)


@cache_app.command("fsck")
def fsck(root: Path = ROOT, repair: bool = typer.Option(True, "--repair/--no-repair", help="repair what is found"),
         as_json: bool = JSON) -> None:
    """Check the store's structure (after a crash) and repair it. Exit 1 if problems remain."""
    def go():
        r = _store(root).fsck(repair=repair)
        _report(r, as_json, [("problem", r.problems), ("repaired", r.repaired), ("pending", r.pending),
                             ("skipped (busy)", r.skipped),
                             ("result", "consistent" if r.consistent else "INCONSISTENT")])
        return 0 if r.consistent else 1
    _run(go)


@cache_app.command("evict")
def evict(root: Path = ROOT, capacity: str = CAPACITY,
          needed: str = typer.Option("0", "--bytes", help="make room for this much more, e.g. 10Gi"),
          as_json: bool = JSON) -> None:
    """Evict unpinned models, least recently used first, until the store fits its capacity."""
    from storage.config import parse_size

    def go():
        keys = _store(root, capacity).evict(parse_size(needed))
        if as_json:
            typer.echo(json.dumps({"evicted": keys}))
        else:
            typer.echo("\n".join(f"evicted {k}" for k in keys) or "nothing to evict")
    _run(go)


@cache_app.command("pin")
def pin(model: str = typer.Argument(..., help="key or source URI"), owner: str = typer.Argument(...),
        root: Path = ROOT, as_json: bool = JSON) -> None:
    """Keep MODEL from eviction on behalf of OWNER."""
    _run(lambda: _records([_store(root).pin(model, owner)], as_json))


@cache_app.command("unpin")
def unpin(model: str = typer.Argument(..., help="key or source URI"), owner: str = typer.Argument(...),
          root: Path = ROOT, as_json: bool = JSON) -> None:
    """Withdraw OWNER's pin on MODEL."""
    _run(lambda: _records([_store(root).unpin(model, owner)], as_json))


@cache_app.command("scrub")
def scrub(root: Path = ROOT, as_json: bool = JSON) -> None:
    """Re-hash every blob; remove corrupted ones and re-fetch their models. Exit 1 if a re-fetch fails."""
    def go():
        r = _store(root).scrub()
        if as_json:
            typer.echo(json.dumps({**r.to_dict(), "mb_per_s": round(r.mb_per_s, 1)}, indent=1))
        else:
            _report(r, False, [("checked", f"{r.blobs} blobs, {human_bytes(r.bytes)} in {r.seconds:.2f}s "
                                            f"({r.mb_per_s:.0f} MB/s)"),
                               ("corrupt blob", r.corrupt), ("re-fetched", r.refetched),
                               ("failed", [f"{k}: {v}" for k, v in r.failed.items()])])
        return 0 if r.ok else 1
    _run(go)


@cache_app.command("ensure")
def ensure(uri: str = typer.Argument(..., help="the model's source URI"), root: Path = ROOT,
           capacity: str = CAPACITY, pin: str = typer.Option(None, "--pin", help="pin it for this owner"),
           as_json: bool = JSON) -> None:
    """Download URI into the store unless it is already there; print its record."""
    from storage.progress import Progress
    from storage.sources.base import redact_uri

    _run(lambda: _records([_store(root, capacity).ensure(uri, pin=pin, progress=Progress(redact_uri(uri)))],
                          as_json))

