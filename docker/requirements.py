"""Print requirements one a line, for the image build to install in layers:
`python requirements.py dist torch` - what the installed distribution `torch` requires;
`python requirements.py project pyproject.toml torch` - the project's runtime dependencies
except the named ones (installed in an earlier layer)."""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib


def main(argv: list[str]) -> None:
    """Print the requirements `argv` asks for."""
    if argv[0] == "dist":
        reqs = [r.split(";")[0].strip() for r in importlib.metadata.requires(argv[1]) or []
                if "extra ==" not in r]
    else:
        with open(argv[1], "rb") as handle:
            deps = tomllib.load(handle)["project"]["dependencies"]
        skip = set(argv[2:])
        reqs = [d for d in deps if d.split(">")[0].split("=")[0].split("<")[0] not in skip]
    print("\n".join(reqs))


if __name__ == "__main__":
    main(sys.argv[1:])
