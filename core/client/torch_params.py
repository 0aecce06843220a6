"""Torch tensors at the edge of the Client API: numpy arrays inside, tensors outside.

A model is a mapping of names to numpy arrays everywhere in fl-core; a
training script that works in PyTorch hands over tensors and wants tensors
back. `to_numpy` turns a script's tensors into arrays before they are sent,
`to_torch` turns received arrays into tensors. Both avoid copies where it is
safe: a contiguous CPU tensor and its array share memory, and so do a
writable array and its tensor.

Importing this module never imports torch, so a script that does not use
torch never pays for it: `to_numpy` only looks for tensors when the script
has already imported torch itself, and `to_torch` imports it when called.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from fl_core.errors import FlCoreError

if TYPE_CHECKING:
    import torch

__all__ = ["to_numpy", "to_torch"]

_V = TypeVar("_V")

INSTALL_HINT = 'pip install "fl-core[torch]" (or pip install torch==2.13.0)'


def to_numpy(params: Mapping[str, _V]) -> tuple[dict[str, np.ndarray | _V], bool]:
    """Turn the torch tensors among `params` into numpy arrays.

    Returns the converted mapping and whether any value was a torch tensor.
    A tensor is detached (a tensor that requires grad is fine), moved to the
    CPU, and has any lazy conjugate or negative bit resolved; a contiguous
    CPU tensor then shares its memory with the array (no copy), so the rule
    for sent arrays holds for it too: after `send()`, the runtime owns it.
    Numpy arrays pass through untouched, and so does anything else (a list,
    a scalar), for the caller's own type check to reject.

    Raises TypeError naming the parameter when a tensor cannot be an array:
    a dtype numpy lacks (bfloat16, complex32, float8, quantized) or a sparse
    layout. The message says which conversion fixes it (`.float()`,
    `.dequantize()`, `.to_dense()`).
    """
    out: dict[str, np.ndarray | _V] = dict(params)
    if sys.modules.get("torch") is None:
        # No script can hold a tensor before torch is imported: nothing to do,
        # and nothing to import.
        return out, False
    import torch  # already imported by the script: a lookup in sys.modules

    found = False
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            out[name] = _tensor_to_numpy(name, value)
            found = True
    return out, found


def _tensor_to_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    value = tensor.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    # numpy has no lazy conjugate or negation; .numpy() refuses a tensor with either bit set.
    if value.is_conj():
        value = value.resolve_conj()
    if value.is_neg():
        value = value.resolve_neg()
    try:
        return value.numpy()
    except (TypeError, RuntimeError) as exc:
        raise TypeError(
            f"FLModel.params[{name!r}] is a torch tensor of dtype {tensor.dtype}"
            f"{_layout_note(tensor)}, which has no numpy equivalent ({exc}); "
            f"convert it before sending, e.g. {_fix_for(tensor)}"
        ) from exc


def _layout_note(tensor: torch.Tensor) -> str:
    import torch

    return "" if tensor.layout == torch.strided else f" and layout {tensor.layout}"


def _fix_for(tensor: torch.Tensor) -> str:
    """The conversion that gives `tensor` a form numpy can hold."""
    import torch

    if tensor.layout != torch.strided:
        return "`tensor.to_dense()`"
    if tensor.is_quantized:
        return "`tensor.dequantize()` (float32)"
    if tensor.is_complex():
        return "`tensor.to(torch.complex64)`"
    if tensor.is_floating_point():
        return "`tensor.float()` (float32)"
    return "`tensor.to(torch.float32)` or another dtype numpy has"


def to_torch(params: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Turn numpy arrays into torch tensors, sharing memory where that is safe.

    A writable array becomes a tensor over the same memory
    (`torch.from_numpy`, no copy). A read-only array is copied first: in the
    simulator the received arrays are read-only views of the server's model,
    so a script's in-place update (`optimizer.step()`, `add_()`) changes its
    own copy and never the server's arrays. Arrays torch cannot view as they
    are (another byte order, negative strides) are copied into a form it can.

    Raises FlCoreError when torch is not installed, saying which
    `pip install` fixes it, and TypeError naming the parameter when an
    array's dtype has no torch equivalent (strings, objects, datetimes).
    """
    try:
        import torch
    except ImportError as exc:
        raise FlCoreError(
            f"converting a model to torch tensors needs PyTorch, which could not be "
            f"imported ({exc}); install it: {INSTALL_HINT}"
        ) from exc

    out: dict[str, torch.Tensor] = {}
    for name, array in params.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy array, got {type(array).__name__}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))  # a writable copy
        elif not array.flags.writeable or any(stride < 0 for stride in array.strides):
            array = array.copy()
        try:
            out[name] = torch.from_numpy(array)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"params[{name!r}] is a numpy array of dtype {array.dtype}, "
                f"which torch cannot hold: {exc}"
            ) from exc
    return out
