"""Compressed variants: a trained transactions MLP's int8 and fp16 variants stay within the
spec's tolerance of the full model on held-out rows and are written, signed and carded; a
variant outside the tolerance is refused and never written; the card's signature covers every
variant (a changed variant byte or a changed variant hash in the card is refused on load); the
stored int8 variant rebuilds to exactly the network the gate scored."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import f1_score

from services.trainer.compress import compress_release, variant_gate
from services.trainer.evaluate import quality, tune_threshold
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.datasets.spec import CompressionSpec
from shared.models.nets import build_model
from shared.models.registry import CARD_FILE, ArtifactError, ModelCard, Registry, variant_file
from shared.models.variants import build_variant, compress, int8_forward, logits
from tests.unit.trainer.trained import trained_mlp

Data = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def _trained() -> tuple[dict[str, Any], dict[str, torch.Tensor], Data, Data]:
    arch, state, ft, train, held = trained_mlp()
    return arch, state, (ft.transform(train), ft.labels(train)), (ft.transform(held),
                                                                  ft.labels(held))


def _full(arch: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = build_model(arch)
    net.load_state_dict(state)
    return net.eval()


def _probs(net: torch.nn.Module, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return torch.sigmoid(logits(net, torch.from_numpy(x))).numpy().astype(np.float64)


def test_int8_and_fp16_stay_within_tolerance_of_the_full_model() -> None:
    arch, state, _, (x, y) = _trained()
    labels = y.astype(np.float64)
    full = _full(arch, state)
    probs = _probs(full, x)
    threshold = tune_threshold(probs, labels)
    metrics = quality(probs, labels, threshold)
    spec = load_spec("transactions").compression
    entries, accepted = compress_release(spec, arch, state, full, x, labels, threshold, metrics)
    assert set(accepted) == {"int8", "fp16"}
    for name in ("int8", "fp16"):
        entry = entries[name]
        assert entry["status"] == "accepted" and entry["reasons"] == []
        assert abs(entry["metrics"]["f1"] - metrics["f1"]) <= spec.tolerance
        assert abs(entry["metrics"]["roc_auc"] - metrics["roc_auc"]) <= spec.tolerance
        assert entry["latency"]["p50_us"] > 0 and entry["latency"]["batch"] == 32
    assert entries["full"]["latency"]["p50_us"] > 0
    # the int8 weights are int8 tensors, a quarter of the float32 bytes
    assert accepted["int8"]["layers.0.weight"].dtype == torch.int8
    int8_scores = expit(int8_forward(arch, accepted["int8"])(x).astype(np.float64))
    print(f"\nint8 vs full: F1 {entries['int8']['metrics']['f1']:.4f} vs {metrics['f1']:.4f}, "
          f"max |Δscore| {np.abs(int8_scores - probs).max():.2e}")
    assert f1_score(y, int8_scores >= threshold) == pytest.approx(entries["int8"]["metrics"]["f1"])
    assert entries["int8"]["score_diff"]["max"] == pytest.approx(
        np.abs(int8_scores - probs).max())


def test_numpy_int8_is_torch_dynamic_int8_row_by_row() -> None:
    arch, state, _, (x, _) = _trained()
    tensors = compress("int8", arch, state)
    quantized = build_variant("int8", arch, tensors)
    rows = np.concatenate([x[:100], np.random.default_rng(0).normal(0, 5, (50, x.shape[1]))
                           ]).astype(np.float32)
    expected = torch.cat([logits(quantized, torch.from_numpy(rows[i:i + 1]))
                          for i in range(len(rows))]).numpy()
    got = int8_forward(arch, tensors)(rows)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a row's score does not depend on the rows batched with it
    assert np.array_equal(int8_forward(arch, tensors)(rows[:1]), got[:1])


def test_a_variant_outside_the_tolerance_is_refused_and_not_written(
        settings: LeptonSettings) -> None:
    arch, state, _, (x, y) = _trained()
    # hidden unit 0 gets one huge input weight, which sets the first layer's per-tensor int8
    # scale so every other first-layer weight rounds to 0; the next layer ignores unit 0, so
    # the full model is unchanged
    broken = {k: v.clone() for k, v in state.items()}
    broken["layers.0.weight"][0, 0] = 1e4
    broken["layers.2.weight"][:, 0] = 0.0
    labels = y.astype(np.float64)
    full = _full(arch, broken)
    probs = _probs(full, x)
    threshold = tune_threshold(probs, labels)
    metrics = quality(probs, labels, threshold)
    entries, accepted = compress_release(CompressionSpec(variants=("int8",), tolerance=0.01),
                                         arch, broken, full, x, labels, threshold, metrics)
    assert entries["int8"]["status"] == "refused" and accepted == {}
    assert any(r.startswith(("f1", "roc_auc")) for r in entries["int8"]["reasons"])
    registry = Registry(settings)
    card = registry.save(_card(arch, entries), broken, accepted)
    assert not (registry.version_dir("m", card.version) / variant_file("int8")).exists()
    with pytest.raises(ArtifactError, match="no accepted variant"):
        registry.load_variant("m", card.version, "int8")


def test_variant_gate_reasons() -> None:
    full = {"f1": 0.80, "roc_auc": 0.95}
    assert variant_gate(full, {"f1": 0.795, "roc_auc": 0.95}, 0.01) == []
    assert variant_gate(full, {"f1": 0.78, "roc_auc": 0.95}, 0.01) == [
        "f1 0.7800 is below the full model's 0.8000 by more than 0.01"]
    assert variant_gate(full, {"f1": 0.80}, 0.01) == [
        "roc_auc undefined is below the full model's 0.9500 by more than 0.01"]


def _card(arch: dict[str, Any], variants: dict[str, object]) -> ModelCard:
    return ModelCard(model="m", dataset="transactions", spec_hash="ab" * 32, architecture=arch,
                     feature_transform={}, status="promoted", variants=variants)


def test_variants_are_signed_and_rebuild_exactly(settings: LeptonSettings) -> None:
    arch, state, _, (x, _) = _trained()
    tensors = {name: compress(name, arch, state) for name in ("int8", "fp16")}
    entries = {name: {"status": "accepted"} for name in tensors}
    registry = Registry(settings)
    card = registry.save(_card(arch, entries), state, tensors)
    folder = registry.version_dir("m", card.version)
    for name in ("int8", "fp16"):
        data = (folder / variant_file(name)).read_bytes()
        assert card.variants[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert card.variants[name]["bytes"] == len(data)
    # int8 weights are a quarter of float32 (plus a scale and zero point per layer)
    assert card.variants["int8"]["bytes"] < card.variants["full"]["bytes"] / 2
    _, loaded = registry.load_variant("m", card.version, "int8")
    rows = torch.from_numpy(x[:64])
    quantized = torch.ao.quantization.quantize_dynamic(_full(arch, state), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    assert torch.equal(logits(build_variant("int8", arch, loaded), rows),
                       logits(quantized, rows))
    # a changed variant byte: the sha256 in the signed card no longer matches
    path = folder / variant_file("int8")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        registry.load_variant("m", card.version, "int8")
    # a variant hash changed in the card: the card's signature fails
    original = (folder / CARD_FILE).read_bytes()
    stored = orjson.loads(original)
    stored["variants"]["int8"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / CARD_FILE).write_bytes(orjson.dumps(stored))
    with pytest.raises(ArtifactError, match="bad card signature"):
        registry.load_variant("m", card.version, "int8")
    # with the card restored, the fp16 variant and the full model still verify
    (folder / CARD_FILE).write_bytes(original)
    registry.load("m", card.version)
    assert registry.load_variant("m", card.version, "fp16")[1]["layers.0.weight"].dtype == \
        torch.float16


def test_stored_int8_tensors_that_do_not_fit_are_refused() -> None:
    arch, state, _, _ = _trained()
    tensors = compress("int8", arch, state)
    with pytest.raises(ValueError, match="do not fit"):
        build_variant("int8", arch, {k: v for k, v in tensors.items() if "bias" not in k})
    tensors["layers.0.weight"] = tensors["layers.0.weight"].to(torch.int16)
    with pytest.raises(ValueError, match="expected int8"):
        build_variant("int8", arch, tensors)
