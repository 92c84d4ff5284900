"""Compressed variants of a model version, shared by the trainer (which writes them at release)
and serving (which loads the one that fits its device).

Consumes a float network's state dict and architecture; produces a variant's tensors (saved as
safetensors beside the full weights, never pickled) and rebuilds the variant's network from them:

- `int8`: weights quantized by `torch.ao.quantization.quantize_dynamic` (int8, per-tensor
  symmetric), stored per Linear as `<layer>.weight` (int8), `<layer>.weight_scale` (float32),
  `<layer>.weight_zero_point` (int64) and `<layer>.bias` (float32). Activations are quantized
  at run time as torch's dynamic quantized Linear does on x86 (uint8, 7-bit range, affine), but
  each row on its own, so a row's score never depends on the rows batched with it (torch
  quantizes the whole batch with one range). `int8_forward` is that arithmetic in NumPy: the
  trainer's gate scores the variant with it, serving answers with it, and on x86 it equals
  torch's quantized kernels applied row by row (checked at load in serving and in tests).
- `fp16`: every tensor in float16 (for CUDA; on CPU it is computed in float32).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shared.models.nets import build_model

Variant = Literal["int8", "fp16"]
VARIANTS: tuple[Variant, ...] = ("int8", "fp16")
Matrix = npt.NDArray[np.float32]
ACTIVATION_QMAX = 127  # x86/fbgemm dynamic quantization: uint8 with reduce_range (7 bits)


def _quantize_dynamic(net: nn.Module) -> nn.Module:
    with _quiet():
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            net, {nn.Linear}, dtype=torch.qint8)
    return quantized


@contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao.quantization and quantized tensors warn that they move to torchao; they are the
    installed torch's documented eager-mode dynamic quantization (torchao is not installed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*deprecated")
        yield


def _dynamic_linears(net: nn.Module) -> dict[str, Any]:
    kind = torch.ao.nn.quantized.dynamic.Linear
    return {name: module for name, module in net.named_modules() if isinstance(module, kind)}


def compress(variant: str, architecture: Mapping[str, Any],
             state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `variant` for a float model (`architecture` + `state`)."""
    if variant == "fp16":
        return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}
    if variant != "int8":
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    net = build_model(architecture)
    net.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state.items()},
                        strict=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in _dynamic_linears(_quantize_dynamic(net.eval())).items():
        weight = module.weight()
        tensors[f"{name}.weight"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float32)
        tensors[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()],
                                                            dtype=torch.int64)
        tensors[f"{name}.bias"] = module.bias().detach().to(torch.float32).contiguous()
    return tensors


def build_variant(variant: str, architecture: Mapping[str, Any],
                  tensors: Mapping[str, torch.Tensor],
                  device: torch.device | None = None) -> nn.Module:
    """The network of a stored variant in eval mode; ValueError when the tensors do not fit
    the architecture. int8 runs on the CPU (torch's quantized kernels); fp16 runs in float16 on
    a CUDA `device`, and elsewhere in float32 from the float16-rounded weights (CPU half
    kernels are slower than float32)."""
    net = build_model(architecture)
    if variant == "fp16":
        if any(t.dtype != torch.float16 for t in tensors.values()):
            raise ValueError("an fp16 variant holds only float16 tensors")
        if device is not None and device.type == "cuda":
            net.load_state_dict(dict(tensors), strict=True)
            return net.half().to(device).eval()
        net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        return net.eval()
    if variant != "int8":
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    quantized = _quantize_dynamic(net.eval())
    linears = _dynamic_linears(quantized)
    expected = {f"{n}.{part}" for n in linears
                for part in ("weight", "weight_scale", "weight_zero_point", "bias")}
    if set(tensors) != expected:
        raise ValueError(f"int8 tensors {sorted(set(tensors) ^ expected)} do not fit the "
                         "architecture")
    for name, module in linears.items():
        raw = tensors[f"{name}.weight"]
        if raw.dtype != torch.int8 or tuple(raw.shape) != (module.out_features,
                                                           module.in_features):
            raise ValueError(f"{name}.weight: expected int8 {module.out_features}x"
                             f"{module.in_features}")
        scale = float(tensors[f"{name}.weight_scale"].reshape(-1)[0])
        zero = int(tensors[f"{name}.weight_zero_point"].reshape(-1)[0])
        if not scale > 0 or not -128 <= zero <= 127:
            raise ValueError(f"{name}: bad quantization parameters")
        with _quiet():
            weight = torch.quantize_per_tensor((raw.to(torch.float32) - zero) * scale, scale,
                                               zero, torch.qint8)
            module.set_weight_bias(weight, tensors[f"{name}.bias"].to(torch.float32))
    return quantized.eval()


def logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A (variant) network's logits for float32 CPU rows `x`, as float32 on the CPU."""
    first = next(iter(net.parameters()), None)
    with torch.inference_mode():
        out: torch.Tensor = net(x) if first is None else net(  # None: int8's packed weights
            x.to(first.device, first.dtype))
        return out.float().cpu()


def _row_qparams(x: Matrix, nonnegative: bool) -> tuple[Matrix, Matrix | None]:
    """Per-row activation scale and zero point (None: 0), as torch's ChooseQuantizationParams
    picks them for uint8 with reduce_range (qmin 0, qmax 127; the range always holds 0)."""
    high = np.maximum(x.max(axis=1, keepdims=True), np.float32(0.0))
    if nonnegative:  # after a ReLU: the range is [0, max], the zero point 0
        scale = high / np.float32(ACTIVATION_QMAX)
        scale[scale == 0] = np.float32(0.1)
        return scale, None
    low = np.minimum(x.min(axis=1, keepdims=True), np.float32(0.0))
    scale = ((high.astype(np.float64) - low) / ACTIVATION_QMAX).astype(np.float32)
    scale[scale == 0] = np.float32(0.1)
    from_min = -low / scale
    from_max = ACTIVATION_QMAX - high / scale
    use_min = -np.abs(low / scale) < ACTIVATION_QMAX - np.abs(high / scale)
    zero = np.clip(np.rint(np.where(use_min, from_min, from_max)), 0, ACTIVATION_QMAX)
    return scale, zero.astype(np.float32)


def int8_forward(architecture: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                 ) -> Callable[[Matrix], Matrix]:
    """The int8 variant's logits in NumPy (row-wise dynamic activation quantization, int8
    weights); ValueError when the tensors do not fit the architecture."""
    build_variant("int8", architecture, tensors)  # the same checks as the torch network
    steps: list[tuple[Matrix, np.float32, Matrix] | None] = []
    for name, module in build_model(architecture).named_modules():
        if isinstance(module, nn.Linear):
            weight = tensors[f"{name}.weight"].numpy().astype(np.float32)
            zero_w = np.float32(tensors[f"{name}.weight_zero_point"].reshape(-1)[0].item())
            steps.append(((weight - zero_w).T.copy(),
                          np.float32(tensors[f"{name}.weight_scale"].reshape(-1)[0].item()),
                          tensors[f"{name}.bias"].numpy().astype(np.float32)))
        elif isinstance(module, nn.ReLU):
            steps.append(None)

    def forward(x: Matrix) -> Matrix:
        out = np.asarray(x, dtype=np.float32)
        nonnegative = False
        for step in steps:
            if step is None:
                out = np.maximum(out, np.float32(0.0))
                nonnegative = True
                continue
            weight, scale_w, bias = step
            scale, zero = _row_qparams(out, nonnegative)
            quantized = np.rint(out / scale)
            if zero is not None:
                quantized += zero
                np.clip(quantized, 0, ACTIVATION_QMAX, out=quantized)
                quantized -= zero
            out = quantized @ weight
            out *= scale * scale_w
            out += bias
            nonnegative = False
        return out[:, 0]

    return forward
