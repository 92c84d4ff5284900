"""`lepton probe http URL` and `lepton probe grpc ADDR`: container healthchecks that ask the
running process itself (its metrics endpoint, its grpc.health.v1 status), so a hung or dead
process reads unhealthy and nothing on a volume can outlive it. Exit 0 healthy, 1 not."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Healthchecks that probe a live process.", no_args_is_help=True)


@app.command()
def http(
    url: Annotated[str, typer.Argument(help="e.g. http://127.0.0.1:9464/metrics")],
    timeout: Annotated[float, typer.Option(help="Seconds.")] = 3.0,
) -> None:
    """Healthy when `url` answers 200 within `timeout`."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
            if reply.status == 200:
                return
            typer.echo(f"unhealthy: {url} answered {reply.status}", err=True)
    except (OSError, urllib.error.URLError) as error:
        typer.echo(f"unhealthy: {url}: {error}", err=True)
    raise typer.Exit(1)


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
