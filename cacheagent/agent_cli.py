"""``modeldepot agent``: run the node agent (a plain function; initializer.app mounts it)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path

import typer
import urllib3


def _labels(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def agent(
    root: Path = typer.Option(..., "--root", help="the node store directory (the DaemonSet's hostPath)"),
    node: str = typer.Option(None, "--node", envvar="NODE_NAME", help="this node's name (default: $NODE_NAME, "
                             "else the hostname)"),
    specs: Path = typer.Option(None, "--specs", help="standalone: a directory of LocalModelCache YAML files; "
                               "status goes to DIR/.status/"),
    kubeconfig: str = typer.Option(None, "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)"),
    listen: str = typer.Option(":9090", "--listen", help="address for /metrics, /healthz, /readyz ('' disables)"),
    capacity: str = typer.Option(None, "--capacity", help="store capacity, e.g. 500Gi (default: the node "
                                 "group's storageLimit, else unlimited)"),
    label: list[str] = typer.Option(None, "--label", help="standalone: a node label KEY=VALUE (repeatable)"),
    max_downloads: int = typer.Option(2, "--max-downloads", min=1, help="models downloading at once"),
    resync: float = typer.Option(30.0, "--resync", min=0.1, help="seconds between full reconciles"),
    verify_interval: float = typer.Option(6 * 3600.0, "--verify-interval", min=0,
                                          help="seconds between re-hashes of the store; damaged models are "
                                          "fetched again (0: never verify)"),
    retry_base: float = typer.Option(10.0, "--retry-base", min=0.01, help="first retry delay of a failed "
                                     "download, doubling up to 10 minutes"),
    namespace: str = typer.Option(None, "--namespace", envvar="POD_NAMESPACE",
                                  help="where credentials Secrets are looked up by default"),
) -> None:
    """Keep every LocalModelCache that selects this node in the node store, and report it."""
    from cacheagent.agent import Agent
    from cacheagent.metrics import Metrics
    from cacheagent.store import Store
    from storage.config import parse_size

    logging.basicConfig(level=os.environ.get("MODELDEPOT_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("modeldepot.agent")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its per-attempt retry lines; ours say it once
    node = node or socket.gethostname()
    # urllib3 repeats this on every request to a server whose kubeconfig skips TLS checks: once is enough.
    warnings.simplefilter("once", urllib3.exceptions.InsecureRequestWarning)
    try:
        store = Store(root, capacity=parse_size(capacity) if capacity else None)
    except Exception as exc:  # noqa: BLE001 - one line at the CLI edge
        typer.echo(f"modeldepot agent: error: {exc}", err=True)
        raise typer.Exit(2) from None
    stop, wake = threading.Event(), threading.Event()

    if specs is not None:
        from cacheagent.standalone import FileReporter, SpecDirSource

        if not specs.is_dir():
            typer.echo(f"modeldepot agent: error: {specs}: not a directory", err=True)
            raise typer.Exit(2)
        source = SpecDirSource(specs, node, _labels(label), wake, stop)
        reporter = FileReporter(source, node)
        credentials = None
    else:
        from cacheagent.kube import api_client
        from cacheagent.kube_credentials import KubeCredentials
        from cacheagent.kube_source import KubeSource
        from cacheagent.kube_status import KubeReporter, KubeStatusWriter

        api = api_client(kubeconfig)
        source = KubeSource(api, node, wake, stop)
        reporter = KubeReporter(KubeStatusWriter(api, node), source)
        credentials = KubeCredentials(api, namespace or "modeldepot-system")

    the_agent = Agent(store, source, reporter, credentials=credentials, metrics=Metrics(), listen=listen or None,
                      capacity_fixed=capacity is not None, max_downloads=max_downloads, resync=resync,
                      verify_interval=verify_interval, retry_base=retry_base, stop=stop, wake=wake)

    def on_signal(signum, frame):
        log.info("signal %d: stopping; in-flight downloads resume on the next start", signum)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent for node %s, store %s, %s", node, store.root,
             f"specs in {specs}" if specs is not None else "watching the cluster")
    the_agent.run()
    logging.shutdown()
    # Download threads cannot be interrupted mid-read, and joining them (what a normal exit does)
    # could take minutes. Exiting here is as safe as a crash, which the store and engine survive:
    # partial data lives only in ingest/staging and is resumed, never published.
    os._exit(0)
