"""`lepton probe http URL [--stale-after S]` and `lepton probe grpc ADDR`: container
healthchecks that ask the running process itself (its metrics endpoint and main-loop heartbeat,
shared/liveness.py; its grpc.health.v1 status, answered by serving's request event loop), so a
dead process or a hung loop reads unhealthy and nothing on a volume can outlive it.
Exit 0 healthy, 1 not."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Healthchecks that probe a live process.", no_args_is_help=True)


@app.command()
def http(
    url: Annotated[str, typer.Argument(help="e.g. http://127.0.0.1:9464/metrics")],
    timeout: Annotated[float, typer.Option(help="Seconds.")] = 3.0,
    stale_after: Annotated[float | None, typer.Option(
        help="Also read the Prometheus text at `url` and fail unless every main-loop heartbeat "
             "(*_loop_heartbeat_seconds) turned within this many seconds: a hung loop.")] = None,
) -> None:
    """Healthy when `url` answers 200 within `timeout`.

    With --stale-after, every loop heartbeat it shows must also be fresh."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
            if reply.status == 200:
                if stale_after is None:
                    return
                problem = _stale(reply.read().decode("utf-8", "replace"), stale_after)
                if problem is None:
                    return
                typer.echo(f"unhealthy: {url}: {problem}", err=True)
            else:
                typer.echo(f"unhealthy: {url} answered {reply.status}", err=True)
    except (OSError, urllib.error.URLError) as error:
        typer.echo(f"unhealthy: {url}: {error}", err=True)
    raise typer.Exit(1)


def _stale(text: str, stale_after: float) -> str | None:
    """What is wrong with the loop heartbeats in Prometheus `text`; None when all are fresh."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from shared.liveness import HEARTBEAT_SUFFIX

    beats = {sample.name: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name.endswith(HEARTBEAT_SUFFIX)}
    if not beats:
        return f"no main-loop heartbeat (*{HEARTBEAT_SUFFIX}) yet"
    now = time.time()
    stale = [f"{name} is {now - last:.0f} s old" for name, last in sorted(beats.items())
             if now - last > stale_after]
    if stale:
        return f"main loop hung? {', '.join(stale)} (over {stale_after:g} s)"
    return None


@app.command()
def grpc(
    addr: Annotated[str, typer.Argument(help="host:port of a grpc.health.v1 server")]
    = "127.0.0.1:50051",
    service: Annotated[str, typer.Option(help="Service name ('' = the whole server).")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds.")] = 3.0,
) -> None:
    """Healthy when the server's health status is SERVING."""
    import grpc as grpclib
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpclib.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpclib.RpcError as error:
            typer.echo(f"unhealthy: {addr}: {error.code().name}", err=True)
            raise typer.Exit(1) from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        typer.echo(f"unhealthy: {addr} is {status}", err=True)
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add `lepton probe` to the command line."""
    root.add_typer(app, name="probe")
