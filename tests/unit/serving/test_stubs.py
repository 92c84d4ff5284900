"""The committed gRPC stubs match what the generator produces from proto/ today."""

from __future__ import annotations

from pathlib import Path

from services.serving import gen_stubs


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    written = gen_stubs.generate(tmp_path)
    names = sorted(p.name for p in written)
    committed = sorted(
        p.name for p in gen_stubs.GEN_DIR.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
    )
    assert names == committed, "stub set changed: run `python -m services.serving.gen_stubs`"
    for path in written:
        fresh = path.read_text()
        current = (gen_stubs.GEN_DIR / path.name).read_text()
        assert fresh == current, (
            f"services/serving/gen/{path.name} is stale: run `python -m services.serving.gen_stubs`"
        )


def test_generated_imports_do_not_touch_our_lepton_package(tmp_path: Path) -> None:
    for path in gen_stubs.generate(tmp_path):
        text = path.read_text()
        assert "from lepton." not in text
        assert "import lepton." not in text
