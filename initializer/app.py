"""``modeldepot``: the command-line face of the library (every command is a library call)."""

from __future__ import annotations

from pathlib import Path

import typer

from initializer.cli import run_pairs, setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Get model artifacts onto nodes: parallel, verified, atomic.")


@app.command()
def download(
    src: str = typer.Argument(..., help="s3://, gs://, hf://, oci://, https://, pvc://, file:// or a path"),
    dest: Path = typer.Argument(..., help="directory to publish into (created; replaced atomically)"),
    include: list[str] = typer.Option(None, "--include", help="keep only paths matching this glob (repeatable)"),
    exclude: list[str] = typer.Option(None, "--exclude", help="drop paths matching this glob (repeatable)"),
    concurrency: int = typer.Option(None, "--concurrency", min=1, help="connections at once (default 16)"),
    part_size: str = typer.Option(None, "--part-size", help="ranged part size for large files, e.g. 32Mi"),
    cache_dir: Path = typer.Option(None, "--cache-dir", envvar="MODELDEPOT_CACHE_DIR",
                                   help="serve from / fill the node store at DIR"),
) -> None:
    """Download SRC into DEST, verify it, publish it atomically."""
    from storage.config import parse_size

    setup_logging()
    kwargs = {"include": include or None, "exclude": exclude or None, "concurrency": concurrency,
              "cache_dir": str(cache_dir) if cache_dir else None}
    if part_size:
        try:
            kwargs["part_size"] = parse_size(part_size)
        except Exception as exc:  # noqa: BLE001 - BadURIError; one line either way
            typer.echo(f"modeldepot: error: {exc}", err=True)
            raise typer.Exit(2) from None
    raise typer.Exit(run_pairs([(src, str(dest))], prog="modeldepot", **kwargs))


@app.command()
def verify(
    dest: Path = typer.Argument(..., help="a directory modeldepot published"),
    quick: bool = typer.Option(False, "--quick", help="check presence and sizes only, no re-hash"),
) -> None:
    """Re-hash DEST against its manifest. Exit 0 when it matches, 1 listing what does not."""
    from storage import verify as verify_dest

    problems = verify_dest(dest, full=not quick)
    if problems:
        for line in problems:
            typer.echo(f"{dest}: {line}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{dest}: OK")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("modeldepot-demo"), "--dir", help="where the sample model and DEST go"),
) -> None:
    """Serve a generated sample model on 127.0.0.1, download it twice, verify it. No cloud needed."""
    from initializer.demo import run_demo

    raise typer.Exit(run_demo(workdir))


def _mount_other_front_doors() -> None:
    """The node store's commands and the agent live in cacheagent/; they mount here."""
    from cacheagent.agent_cli import agent
    from cacheagent.cli import cache_app

    app.add_typer(cache_app, name="cache")
    app.command(name="agent")(agent)


_mount_other_front_doors()


def main() -> None:
    app()
