"""Generate the gRPC stubs of `proto/lepton/serving/v1/serving.proto` into
`services/serving/gen/` (grpcio-tools for code, mypy-protobuf for `.pyi`).

protoc names modules after the proto path (`lepton.serving.v1`), which would collide with our
own top-level `lepton` package, so the generated files are flattened into
`services.serving.gen` and their imports rewritten. Run `python -m services.serving.gen_stubs`.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PROTO = "lepton/serving/v1/serving.proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
GEN_PACKAGE = "services.serving.gen"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT = '"""Generated gRPC stubs of lepton.serving.v1 (see services/serving/gen_stubs.py)."""\n'


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = path if path.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return str(found)


def _fix_imports(text: str) -> str:
    # `from lepton.serving.v1 import serving_pb2` and `import lepton.serving.v1.serving_pb2`
    text = re.sub(r"\bfrom lepton\.serving\.v1 import\b", f"from {GEN_PACKAGE} import", text)
    return re.sub(r"\blepton\.serving\.v1\.(serving_pb2\w*)", rf"{GEN_PACKAGE}.\1", text)


def generate(out_dir: Path) -> list[Path]:
    """Generate the stubs into `out_dir` (flattened, imports fixed); return the files written."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((Path(tmp) / Path(PROTO).parent).iterdir()):
            if not path.name.endswith(SUFFIXES):
                continue
            target = out_dir / path.name
            target.write_text(_fix_imports(path.read_text()))
            written.append(target)
    init = out_dir / "__init__.py"
    init.write_text(INIT)
    return [init, *written]


def main() -> None:
    """Regenerate the committed stubs."""
    for path in generate(GEN_DIR):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
