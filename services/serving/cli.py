"""`lepton serving` (run the server; `status` / `rollout` talk to a running one) and
`lepton predict` (a command-line client). Imports stay inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared.config import EXIT_UNAVAILABLE

if TYPE_CHECKING:
    import grpc

    from services.serving.client import ServingClient

# Exit codes of the client commands, by gRPC status.
EXIT_CODES = {"INVALID_ARGUMENT": 2, "UNAUTHENTICATED": 3, "PERMISSION_DENIED": 3,
              "NOT_FOUND": 4, "FAILED_PRECONDITION": 5, "UNAVAILABLE": EXIT_UNAVAILABLE,
              "DEADLINE_EXCEEDED": 75}

serving_app = typer.Typer(help="Run the serving process, or inspect/steer a running one.",
                          invoke_without_command=True, no_args_is_help=False)

Addr = Annotated[str | None, typer.Option(help="Server address (default LEPTON_SERVING_ADDR).")]
Token = Annotated[str | None, typer.Option(envvar="LEPTON_SERVING_AUTH_TOKEN",
                                           help="Bearer token.", show_default=False)]
AdminToken = Annotated[str | None, typer.Option(
    "--token", envvar="LEPTON_SERVING_ADMIN_TOKEN", help="Admin bearer token.",
    show_default=False)]
TlsCa = Annotated[Path | None, typer.Option(help="CA certificate to verify a TLS server.")]
Timeout = Annotated[float, typer.Option(min=0.001, help="Deadline in seconds.")]


@serving_app.callback()
def serving(ctx: typer.Context) -> None:
    """Run the gRPC + Kafka serving process until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is None:
        from services.serving.__main__ import main

        main()


def _client(addr: str | None, token: str | None, tls_ca: Path | None,
            timeout: float) -> ServingClient:
    from services.serving.client import ServingClient
    from services.serving.config import ServingSettings
    from shared.config import load_settings

    settings = load_settings(ServingSettings)
    return ServingClient(addr or settings.serving_addr, token=token, tls_ca=tls_ca,
                         timeout=timeout)


def _rpc_error(error: grpc.RpcError) -> typer.Exit:
    code = error.code()
    details = error.details() or ""
    name = getattr(code, "name", str(code))
    typer.echo(f"error: {name}: {details}", err=True)
    return typer.Exit(EXIT_CODES.get(name, 1))


def _print(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


@serving_app.command("status")
def status(addr: Addr = None, token: Token = None, tls_ca: TlsCa = None,
           timeout: Timeout = 10.0) -> None:
    """Print every hosted model's live/previous/candidate versions as JSON lines."""
    import grpc

    client = _client(addr, token, tls_ca, timeout)
    try:
        for model in client.list_models():
            _print(model)
    except grpc.RpcError as error:
        raise _rpc_error(error) from None
    finally:
        client.close()


@serving_app.command("rollout")
def rollout(
    action: Annotated[str, typer.Argument(help="promote, canary, shadow, rollback or clear")],
    model: Annotated[str, typer.Option(help="Model name (may be empty with one model).")] = "",
    version: Annotated[int, typer.Option(min=0, help="Version (rollback: optional).")] = 0,
    share: Annotated[float, typer.Option(min=0, max=1, help="Canary share.")] = 0.0,
    addr: Addr = None, token: AdminToken = None, tls_ca: TlsCa = None, timeout: Timeout = 60.0,
) -> None:
    """Change a model's rollout on a running server (announced to every replica).

    Needs the admin token (LEPTON_SERVING_ADMIN_TOKEN)."""
    import grpc

    from services.serving.client import ACTIONS

    if action not in ACTIONS:
        typer.echo(f"error: action must be one of {', '.join(ACTIONS)}", err=True)
        raise typer.Exit(2)
    client = _client(addr, token, tls_ca, timeout)
    try:
        _print(client.rollout(action, model, version, share))
    except grpc.RpcError as error:
        raise _rpc_error(error) from None
    finally:
        client.close()


def _records(source: str) -> list[dict[str, Any]]:
    import orjson

    text = sys.stdin.read() if source == "-" else source
    if source != "-" and not source.lstrip().startswith(("{", "[")):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{source!r} is neither a JSON record nor a file")
        text = path.read_text()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            data = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        except orjson.JSONDecodeError as error:
            raise ValueError(f"not JSON or JSON lines: {error}") from None
    records = data if isinstance(data, list) else [data]
    if not records or not all(isinstance(r, dict) for r in records):
        raise ValueError("expected a JSON object, an array of objects, or JSON lines")
    return records


def predict(
    record: Annotated[str, typer.Argument(
        help="A JSON record, a file (JSON object, array or JSON lines), or - for stdin.")],
    model: Annotated[str, typer.Option(help="Model name (may be empty with one model).")] = "",
    version: Annotated[int, typer.Option(min=0, help="Pin a model version.")] = 0,
    request_id: Annotated[str, typer.Option(help="Request id (default: server-assigned).")]
    = "",
    explain: Annotated[bool, typer.Option(
        "--explain", help="Ask for attributions; prints the top reasons after each line.")]
    = False,
    addr: Addr = None, token: Token = None, tls_ca: TlsCa = None, timeout: Timeout = 10.0,
) -> None:
    """Score records with a running serving process; prints one JSON line per prediction.

    Exit codes: 0 ok, 2 bad input, 3 unauthenticated, 4 model/version not found,
    5 version refused, 69 server unavailable, 75 deadline exceeded, 1 other errors.
    """
    import grpc

    try:
        records = _records(record)
    except (OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    client = _client(addr, token, tls_ca, timeout)
    try:
        for prediction in client.predict(records, model=model, version=version,
                                         request_id=request_id, explain=explain):
            _print(prediction)
            if explain and "explanation" in prediction:
                _print_reasons(prediction["explanation"])
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except grpc.RpcError as error:
        raise _rpc_error(error) from None
    finally:
        client.close()


def _print_reasons(explanation: dict[str, Any], top: int = 3) -> None:
    ranked = sorted(explanation["attributions"].items(), key=lambda kv: -abs(kv[1]))[:top]
    reasons = ", ".join(f"{name} {value:+.3f}" for name, value in ranked)
    typer.echo(f"top reasons (logit {explanation['logit']:+.3f} vs baseline "
               f"{explanation['baseline_logit']:+.3f}, {explanation['method']}, "
               f"v{explanation['version']}): {reasons}", err=True)


def register(app: typer.Typer) -> None:
    """Add `lepton serving` and `lepton predict`."""
    app.add_typer(serving_app, name="serving")
    app.command("predict")(predict)
