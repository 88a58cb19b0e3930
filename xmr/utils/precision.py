"""Mixed precision: the ``trainer.precision`` choices and what stays in float32 under autocast.

``trainer.precision`` (conf/trainer/default.yaml) is Lightning's: ``32-true`` (the default,
float32 throughout), ``bf16-mixed`` (autocast to bfloat16: CPUs and GPUs that have it, Ampere
and later) or ``16-mixed`` (autocast to float16 with a gradient scaler, which Lightning adds;
CUDA only). :data:`PRECISIONS` lists them and :func:`precision_problem` says why a choice cannot
run on a device (the start-up check of :func:`xmr.utils.config.validate_config`).

Under autocast, matrix products (``linear``, ``bmm``, ``einsum``, ...) run in the lower
precision even on float32 inputs, and what follows them computes on their 16-bit outputs (the
GPU's autocast takes ``softmax``, ``exp``, ``log`` and sums back to float32, the CPU's does
not). What must not:

* the ranking losses (:mod:`xmr.losses`): they exponentiate, normalise and sort scores, and
  NeuralNDCG iterates Sinkhorn scaling 50 times. Their ``forward`` is wrapped in
  :func:`full_precision`: floating inputs become float32 and autocast is off inside;
* the score head of a ranker (:func:`float32_linear`): bfloat16 keeps 8 bits of mantissa, so
  scores rounded to it tie where the float32 ones do not, and ties rank pessimistically;
* evaluation: validation and test steps run with autocast off
  (:class:`xmr.models.module.RankingModule`), so metrics, predictions files and a later
  ``xmr eval`` of the checkpoint agree whatever precision the run trained in.

Backward passes run outside autocast (Lightning's steps do; PyTorch advises it), so the
gradients of what ran in float32 are float32 too. Outside autocast every helper here is the
identity (no cast, no context), so float32 runs stay bit for bit what they were.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The ``trainer.precision`` values a run accepts, with what each means.
PRECISIONS: dict[str, str] = {
    "32-true": "float32 throughout (the default)",
    "bf16-mixed": "autocast to bfloat16 (CPUs, GPUs from Ampere on)",
    "16-mixed": "autocast to float16 with a gradient scaler (CUDA GPUs only)",
}

FnT = TypeVar("FnT", bound=Callable[..., Any])


def precision_problem(precision: Any, device_type: str, bf16_supported: bool = True) -> str | None:
    """Why ``precision`` cannot train on ``device_type`` (``cpu``, ``cuda``, ...), or None.

    ``bf16_supported``: the CUDA device computes in bfloat16 natively (not emulated)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        choices = "; ".join(f"{k} = {v}" for k, v in PRECISIONS.items())
        return f"not a precision xmr trains in; one of: {choices}"
    if precision == "16-mixed" and device_type == "cpu":
        return (
            "float16 mixed precision needs a CUDA GPU (autocast to float16 and its gradient "
            "scaler), but this run is on the CPU; use bf16-mixed (bfloat16 autocast, works on "
            "the CPU) or 32-true"
        )
    if precision == "bf16-mixed" and device_type == "cuda" and not bf16_supported:
        return (
            "this GPU has no native bfloat16 (compute capability < 8.0); use 16-mixed (float16 "
            "with a gradient scaler) or 32-true"
        )
    return None


def accelerator_device_type(accelerator: Any) -> str:
    """The device type a ``trainer.accelerator`` value trains on here: ``cuda`` for ``gpu`` /
    ``cuda`` (and ``auto`` when a CUDA device is visible), ``cpu`` for ``cpu`` (and ``auto``
    without one), any other value as given (``mps``, ...)."""
    acc = str(accelerator or "auto").lower()
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return acc


def check_precision(precision: Any, accelerator: Any) -> str | None:
    """:func:`precision_problem` of ``trainer.precision`` on the device ``trainer.accelerator``
    resolves to here (the GPU asked whether it has native bfloat16 when it matters)."""
    device_type = accelerator_device_type(accelerator)
    bf16 = True
    if precision == "bf16-mixed" and device_type == "cuda" and torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return precision_problem(precision, device_type, bf16)


def _autocast_on(device_type: str) -> bool:
    # ("meta" and a few other device types have no autocast at all)
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


@contextlib.contextmanager
def autocast_off(device: torch.device | str) -> Iterator[None]:
    """Autocast disabled on ``device``'s type for the block (nothing at all when it is off)."""
    device_type = torch.device(device).type
    if not _autocast_on(device_type):
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


def _float32(x: Any) -> Any:
    if isinstance(x, Tensor) and x.is_floating_point() and x.dtype.itemsize < 4:
        return x.float()
    return x


def full_precision(fn: FnT) -> FnT:
    """Decorate a function (a loss's ``forward``) so that under autocast it runs with autocast
    off and its float16 / bfloat16 tensor arguments cast to float32. Without autocast (on the
    device of its first tensor argument) it is called as is."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is None or not _autocast_on(first.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(first.device.type, enabled=False):
            return fn(*map(_float32, args), **{k: _float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def float32_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 (a score head): under autocast ``x`` is cast up and the product
    taken in float32; otherwise exactly ``layer(x)``."""
    if not _autocast_on(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), _maybe_float(layer.bias))


def _maybe_float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()
