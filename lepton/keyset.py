"""`lepton keys principals DIR`: the key set of a deployment whose containers each get only their
own keys (docker-compose.yml, README "Key distribution"). In DIR (0700), every private file 0600:

| file | what | given to |
|---|---|---|
| `<principal>.key` | each principal's Ed25519 signing key | that principal only |
| `governed-mac.key` | the events.governed MAC key | governance, trainer |
| `token.key` | the platform key (pseudonyms, data-key ids) | ingest, governance, operator |
| `model-signing.key` | the model-card signing key | trainer |
| `audit-signing.key` | the audit checkpoint signing key | governance |
| `dlq.key` | the DLQ private key (reads dead letters) | operator |

and in DIR/public the public halves every container may read (`<principal>.pub`,
`model-signing.pub`, `audit-signing.pub`, `dlq.pub`). The master keyring is not part of it: ingest
creates it in its own keys volume, which only ingest and the operator mount. Existing keys are
kept. Imports stay inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

KEY_FILES = ("model-signing", "audit-signing")


def make_key_set(directory: Path) -> dict[str, str]:
    """Create (or keep) every key above in `directory`; returns name → key id."""
    import shutil

    from shared.dlq import DLQ_KEY_FILE, DLQ_PUBLIC_FILE, make_dlq_key
    from shared.governed_mac import MAC_KEY_FILE, load_or_create_key
    from shared.principals import PRINCIPAL_NAMES, private_dir
    from shared.secretfiles import read_or_create
    from shared.signing import key_id, load_or_create_private_key, public_path
    from shared.tokens import TOKEN_KEY_FILE, new_platform_key

    private_dir(directory)
    public = directory / "public"
    public.mkdir(exist_ok=True)
    ids: dict[str, str] = {}
    for name in (*PRINCIPAL_NAMES, *KEY_FILES):
        key = load_or_create_private_key(directory / f"{name}.key")
        shutil.copyfile(public_path(directory / f"{name}.key"), public / f"{name}.pub")
        ids[name] = key_id(key.public_key())
    ids["dlq"] = make_dlq_key(directory / DLQ_KEY_FILE, public / DLQ_PUBLIC_FILE)
    load_or_create_key(directory / MAC_KEY_FILE)
    read_or_create(directory / TOKEN_KEY_FILE, new_platform_key)
    return ids


def principals(
    directory: Annotated[Path, typer.Argument(help="Where to write the key set (0700).")],
) -> None:
    """Create the deployment's key set; existing keys are kept.

    Each principal's signing key, the MAC, platform, model-signing,
    audit-signing and DLQ keys (0600), and public/*.pub for every container."""
    for name, kid in make_key_set(directory).items():
        typer.echo(f"{name}: key id {kid}")


def register(app: typer.Typer) -> None:
    """Add `lepton keys principals` to the `keys` group (services/ingest/cli.py)."""
    from services.ingest.cli import keys_app

    keys_app.command("principals")(principals)
