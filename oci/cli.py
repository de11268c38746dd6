"""``modelcar``: build, push, pull and inspect model images. A thin layer over ``oci``.

Every failure is one line on stderr (``modelcar: error: ...``) and a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from storage.errors import StorageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build, push, pull and inspect OCI model images (KServe modelcars, ModelPack) without Docker.")

_INSECURE = typer.Option(False, "--insecure", help="Talk plain HTTP to the registry.")
_USER = typer.Option(None, "--username", help="Registry user; the password is read from stdin.")
_PASS_STDIN = typer.Option(False, "--password-stdin", help="Read the registry password from stdin.")
_JOBS = typer.Option(4, "--jobs", min=1, max=32, help="Parallel layer uploads.")


def _credentials(username: str | None, password_stdin: bool):
    if password_stdin and not username:
        raise typer.BadParameter("--password-stdin needs --username")
    if not username:
        return None
    from oci.auth import Credentials

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else ""
    return Credentials(username, password)


@app.command()
def build(
    model_dir: Annotated[Path, typer.Argument(help="Directory holding the model files.")],
    tag: Annotated[str, typer.Option("--tag", "-t", help="Image reference, e.g. registry.example/models/bert:v1.")],
    output_layout: Annotated[Path | None, typer.Option("--output-layout", help="OCI layout directory to write.")] = None,
    base: str = typer.Option(None, "--base", help="Base image: a registry reference or oci:LAYOUT[:TAG]."),
    busybox: Annotated[Path | None, typer.Option("--busybox", help="A static busybox to make the image runnable.")] = None,
    fmt: str = typer.Option("modelcar", "--format", help="modelcar or modelpack."),
    compression: str = typer.Option("none", "--compression", help="none, gzip or zstd."),
    large_file: int = typer.Option(32 << 20, "--large-file-threshold", help="Files this big get a layer each."),
    source: str = typer.Option(None, "--source", help="org.opencontainers.image.source annotation."),
    revision: str = typer.Option(None, "--revision", help="org.opencontainers.image.revision annotation."),
    platform: str = typer.Option("linux/amd64", "--platform", help="Platform when neither base nor busybox says."),
    push_: bool = typer.Option(False, "--push", help="Push to --tag after building."),
    insecure: bool = _INSECURE,
    username: str = _USER,
    password_stdin: bool = _PASS_STDIN,
    jobs: int = _JOBS,
) -> None:
    """Build a deterministic image from MODEL_DIR into an OCI layout (and optionally push it)."""
    from oci.build import BuildOptions
    from oci.build import build as do_build

    creds = _credentials(username, password_stdin)
    t0 = time.monotonic()
    result = do_build(model_dir, BuildOptions(
        tag=tag, output_layout=output_layout, base=base, busybox=busybox, format=fmt, compression=compression,
        large_file_threshold=large_file, source=source, revision=revision, platform=platform, insecure=insecure,
        jobs=jobs))
    typer.echo(f"built {result.digest} ({result.layers} layers) in oci:{result.layout}:{result.tag} "
               f"in {time.monotonic() - t0:.1f}s")
    if push_:
        _do_push(f"oci:{result.layout}:{result.tag}", tag, insecure, creds, jobs)


@app.command()
def push(
    layout: str = typer.Argument(..., help="OCI layout: DIR or oci:DIR:TAG."),
    ref: str = typer.Argument(..., help="Target image reference."),
    insecure: bool = _INSECURE,
    username: str = _USER,
    password_stdin: bool = _PASS_STDIN,
    jobs: int = _JOBS,
    mount_from: str = typer.Option(None, "--mount-from", help="Repository on the same registry to mount blobs from."),
) -> None:
    """Push an image from an OCI layout to a registry, uploading only missing blobs."""
    _do_push(layout, ref, insecure, _credentials(username, password_stdin), jobs, mount_from)


def _do_push(layout: str, ref: str, insecure: bool, creds, jobs: int, mount_from: str | None = None) -> None:
    from oci.push import push as do_push

    t0 = time.monotonic()
    result = do_push(layout, ref, insecure=insecure, credentials=creds, jobs=jobs, mount_from=mount_from)
    typer.echo(f"pushed {result.reference}@{result.digest}: {len(result.uploaded)} uploaded, "
               f"{len(result.mounted)} mounted, {len(result.skipped)} already present "
               f"in {time.monotonic() - t0:.1f}s")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="Image reference.")],
    dest: Annotated[Path, typer.Argument(help="Directory to receive the model files.")],
    insecure: bool = _INSECURE,
) -> None:
    """Download the model files of an image (its /models/ tree) into DEST, verified."""
    from oci.pull import pull as do_pull

    env = dict(os.environ)
    if insecure:
        env["KSERVE_OCI_INSECURE_REGISTRY"] = "true"
    revision = do_pull(ref, dest, env=env)
    typer.echo(f"pulled {ref}@{revision} into {dest}")


@app.command()
def inspect(
    ref: str = typer.Argument(..., help="Registry reference or oci:LAYOUT[:TAG]."),
    insecure: bool = _INSECURE,
) -> None:
    """Print an image's digest, manifest and config as JSON."""
    from oci.push import inspect as do_inspect

    typer.echo(json.dumps(do_inspect(ref, insecure=insecure), indent=2, sort_keys=True))


def main() -> None:
    try:
        app(standalone_mode=False)
    except StorageError as exc:
        typer.echo(f"modelcar: error: {exc}", err=True)
        sys.exit(exc.exit_code or 1)
    except typer.Abort:
        typer.echo("modelcar: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("modelcar: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like: still one line
        import click

        if isinstance(exc, click.ClickException):
            typer.echo(f"modelcar: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code or 2)
        raise


if __name__ == "__main__":
    main()
