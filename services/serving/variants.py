"""Which signed variant of a loaded version answers (`LEPTON_SERVING_VARIANT`).

Consumes a LoadedModel (full network, already warmed up and possibly with its verified NumPy
forward), the registry and the wanted variant; produces the same LoadedModel scoring with the
variant: `int8` through the NumPy int8 arithmetic of shared/models/variants.py (row-wise
dynamic activation quantization: the trainer's gate scored exactly this), checked at load
against torch's quantized kernels applied row by row where torch runs the x86/fbgemm engine;
`fp16` in float16 on CUDA, or on CPU through the verified float32 NumPy forward of the float16
weights. `auto` takes fp16 on CUDA and int8 on CPU when the card accepted it and a timed
warm-up finds it no slower than the full model here (for the small MLPs served here the NumPy
float32 path usually wins; bench/README.md). The variant's bytes are verified against the
signed card before they are parsed; a variant that fails verification refuses the version.
Explanations keep using the full network of the same version.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from services.serving.errors import Refused
from services.serving.fastpath import Forward, compile_numpy, verified

if TYPE_CHECKING:
    from services.serving.model import LoadedModel
    from shared.models.registry import Registry

log = logging.getLogger(__name__)
TIMING_RUNS = 30
EXACT_ENGINES = ("x86", "fbgemm")


def _timed(score: Forward, rows: np.ndarray[Any, np.dtype[np.float32]]) -> float:
    for _ in range(3):
        score(rows)
    times = []
    for _ in range(TIMING_RUNS):
        began = time.perf_counter()
        score(rows)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def _torch_forward(net: Any) -> Forward:
    import torch

    from shared.models.variants import logits

    def forward(rows: np.ndarray[Any, np.dtype[np.float32]]
                ) -> np.ndarray[Any, np.dtype[np.float32]]:
        return logits(net, torch.from_numpy(rows)).numpy()
    return forward


def _int8_matches_torch(architecture: dict[str, Any], tensors: dict[str, Any],
                        forward: Forward, samples: np.ndarray[Any, np.dtype[np.float32]]
                        ) -> bool:
    """Whether the NumPy int8 arithmetic equals torch's quantized kernels row by row (only
    checked where torch's engine is the one it reproduces)."""
    import torch

    from shared.models.variants import build_variant, logits

    if torch.backends.quantized.engine not in EXACT_ENGINES:
        return True
    rng = np.random.default_rng(0)
    probe = np.concatenate([samples, rng.normal(0, 3, (32, samples.shape[1]))]
                           ).astype(np.float32)
    net = build_variant("int8", architecture, tensors)
    expected = np.concatenate([logits(net, torch.from_numpy(probe[i:i + 1])).numpy()
                               for i in range(len(probe))])
    return bool(np.allclose(forward(probe), expected, rtol=1e-5, atol=1e-5))


def use_variant(registry: Registry, model: LoadedModel, wanted: str,
                samples: np.ndarray[Any, np.dtype[np.float32]]) -> None:
    """Switch `model` to the variant `wanted` names (auto: the device's), when it may."""
    import torch

    from shared.models.registry import ArtifactError
    from shared.models.variants import build_variant, int8_forward

    cuda = torch.cuda.is_available()
    choice = ("fp16" if cuda else "int8") if wanted == "auto" else wanted
    entry = model.card.variants.get(choice)
    label = f"{model.name} v{model.version}"
    if not isinstance(entry, dict) or entry.get("status") != "accepted":
        if wanted != "auto":
            log.warning("%s has no accepted %s variant; serving the full model", label, choice)
        return
    try:
        _, tensors = registry.load_variant(model.name, model.version, choice,
                                           registry.public_key())
    except ArtifactError as error:
        raise Refused(f"{label}: {error}") from None
    architecture = model.card.architecture
    fast: Forward | None = None
    runner = None
    try:
        if choice == "int8":
            fast = int8_forward(architecture, tensors)
            if not _int8_matches_torch(architecture, tensors, fast, samples):
                log.warning("%s: NumPy int8 does not match torch's kernels; serving the full "
                            "model", label)
                return
        elif cuda:
            runner = build_variant("fp16", architecture, tensors, torch.device("cuda"))
        else:
            net = build_variant("fp16", architecture, tensors)
            fast = compile_numpy(net)
            if fast is None or not verified(net, fast, samples):
                fast, runner = None, net
    except (ValueError, RuntimeError) as error:
        raise Refused(f"{label} {choice} cannot be built: {error}") from None
    if wanted == "auto" and _timed(fast or _torch_forward(runner), samples) > _timed(
            model.fast or _torch_forward(model.net), samples):
        log.info("%s: %s is slower than full here; serving the full model", label, choice)
        return
    model.fast, model.runner, model.variant = fast, runner, choice
    log.info("%s answers with its %s variant", label, choice)
