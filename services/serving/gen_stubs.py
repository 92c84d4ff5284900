"""Generate the gRPC stubs of `proto/lepton/serving/v1/serving.proto` and of the Open
Inference Protocol's `proto/inference/grpc_service.proto` into `services/serving/gen/`
(grpcio-tools for code, mypy-protobuf for `.pyi`).

protoc names modules after the proto path (`lepton.serving.v1`), which would collide with our
own top-level `lepton` package, so the generated files are flattened into
`services.serving.gen` and their imports rewritten. The `inference` descriptors go into a
private descriptor pool: v2 clients (tritonclient) register their own `inference.*` messages in
the default pool, and both must load in one process. Run `python -m services.serving.gen_stubs`.
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
PROTOS = ("lepton/serving/v1/serving.proto", "inference/grpc_service.proto")
PRIVATE_POOL = "_descriptor_pool.Default()"
GEN_DIR = Path(__file__).resolve().parent / "gen"
GEN_PACKAGE = "services.serving.gen"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT = ('"""Generated gRPC stubs of lepton.serving.v1 and inference (OIP v2); see '
        'services/serving/gen_stubs.py."""\n')


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = path if path.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return str(found)


def _fix_imports(text: str) -> str:
    # `from lepton.serving.v1 import serving_pb2` and `import lepton.serving.v1.serving_pb2`
    text = re.sub(r"\bfrom (lepton\.serving\.v1|inference) import\b", f"from {GEN_PACKAGE} import",
                  text)
    return re.sub(r"\b(?:lepton\.serving\.v1|inference)\.(\w+_pb2\w*)\b", rf"{GEN_PACKAGE}.\1",
                  text)


def _private_pool(text: str) -> str:
    """Register the file's descriptors in a pool of its own instead of the default one."""
    if PRIVATE_POOL not in text:
        raise SystemExit("unexpected protoc output: no default descriptor pool to replace")
    return text.replace(PRIVATE_POOL, "_descriptor_pool.DescriptorPool()", 1)


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
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {', '.join(PROTOS)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for proto in PROTOS:
            for path in sorted((Path(tmp) / Path(proto).parent).iterdir()):
                if not path.name.endswith(SUFFIXES):
                    continue
                text = _fix_imports(path.read_text())
                if proto.startswith("inference/") and path.name.endswith("_pb2.py"):
                    text = _private_pool(text)
                target = out_dir / path.name
                target.write_text(text)
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
