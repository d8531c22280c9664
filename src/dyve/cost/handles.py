"""Per-op cost formulas.

Convention (stated in every table dyve prints):

* **MACs**: multiply-accumulates of convolutions and matrix products; one multiply-add
  counts 1. FLOPs, where asked, are 2 x MACs. This is the number
  ``torch.utils.flop_counter.FlopCounterMode`` reports divided by 2 (a test checks it).
* **other ops**: everything else that does arithmetic (batch norm, activations, adds,
  pooling, means), counted as *output elements produced*, pooling as output elements x
  window size. They are listed separately and never added into MACs.
* Ops that only move or view data (reshape, cat, pad, slicing, copies) cost nothing.

Handles are keyed by aten overload packet, and users may add their own with
:func:`register_handle`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dyve.registry import Registry

aten = torch.ops.aten

#: A handle gets the op's positional args and its output; returns (MACs, other ops).
Handle = Callable[[Sequence[Any], Any], tuple[int, int]]

#: Handles keyed by the op's name, e.g. ``"aten.convolution"``.
HANDLES: Registry[Handle] = Registry("cost handle")
#: Ops that move or reinterpret data without arithmetic (counted as free, not unsupported).
FREE_OPS = {
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten.permute,
    aten.transpose,
    aten.t,
    aten.expand,
    aten.slice,
    aten.select,
    aten.index,
    aten.cat,
    aten.stack,
    aten.clone,
    aten.contiguous,
    aten.detach,
    aten.alias,
    aten.constant_pad_nd,
    aten.squeeze,
    aten.unsqueeze,
    aten.flatten,
    aten.split,
    aten.split_with_sizes,
    aten.copy_,
    aten.empty,
    aten.empty_like,
    aten.zeros,
    aten.zeros_like,
    aten.ones,
    aten.ones_like,
    aten.full,
    aten.new_zeros,
    aten.new_empty,
    aten._to_copy,
    aten.to,
    aten.as_strided,
    aten.lift_fresh,
    aten.unbind,
    aten.flip,
    aten.fill_,
    aten.zero_,
    aten.arange,
    aten.index_select,
    aten.gather,
    aten.scatter,
    aten.index_put_,
    aten.masked_fill,
    aten.where,
    aten.argmax,
    aten.topk,
    aten.sort,
    aten.max_pool2d_with_indices_backward,
    aten.t_,
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
    aten.is_same_size,
    aten.split_copy,
}


def register_handle(op: Any, fn: Handle, *, replace: bool = False) -> None:
    """Register the cost formula of an aten op (overload packet, e.g. ``aten.convolution``)."""
    HANDLES.add(str(op), fn, replace=replace)


def get_handle(op: Any) -> Handle | None:
    """The handle of an op overload or packet, or None."""
    name = str(getattr(op, "overloadpacket", op))
    return HANDLES.get(name) if name in HANDLES else None


def _numel(t: Any) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel()
    if isinstance(t, list | tuple):
        return sum(_numel(x) for x in t)
    return 0


def _conv(args: Sequence[Any], out: Any) -> tuple[int, int]:
    # MACs = output elements x (input channels / groups) x kernel size
    w = args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed:  # each input element is spread over the kernel
        x = args[0]
        c_out_per_group = w.shape[1]
        return x.numel() * c_out_per_group * math.prod(w.shape[2:]), 0
    return out.numel() * w.shape[1] * math.prod(w.shape[2:]), 0


def _mm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    # [M, K] @ [K, N] -> M*N*K
    a = args[0]
    return out.numel() * a.shape[-1], 0


def _addmm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    # bias + [M, K] @ [K, N]: M*N*K MACs, plus M*N bias adds (other ops)
    return out.numel() * args[1].shape[-1], out.numel()


def _bmm(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return out.numel() * args[0].shape[-1], 0


def _elementwise(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return 0, _numel(out[0] if isinstance(out, tuple) else out)


def _pool(args: Sequence[Any], out: Any) -> tuple[int, int]:
    # each output element reads a window of k*k inputs (compares or adds)
    y = out[0] if isinstance(out, tuple) else out
    k = args[1]
    return 0, y.numel() * math.prod(k if isinstance(k, list | tuple) else (k, k))


def _adaptive_pool(args: Sequence[Any], out: Any) -> tuple[int, int]:
    # global pooling: every input element is read once
    return 0, args[0].numel()


def _reduce(args: Sequence[Any], out: Any) -> tuple[int, int]:
    return 0, args[0].numel()


for _op in (aten.convolution, aten._convolution):
    register_handle(_op, _conv)
register_handle(aten.mm, _mm)
register_handle(aten.addmm, _addmm)
register_handle(aten.bmm, _bmm)
for _op in (
    aten.add,
    aten.add_,
    aten.sub,
    aten.mul,
    aten.mul_,
    aten.div,
    aten.relu,
    aten.relu_,
    aten.clamp,
    aten.clamp_,
    aten.hardtanh,
    aten.hardtanh_,
    aten.sigmoid,
    aten.tanh,
    aten.gelu,
    aten.silu,
    aten._softmax,
    aten._log_softmax,
    aten.threshold_backward,
    aten.native_batch_norm,
    aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit,
    aten.native_dropout,
    aten.neg,
    aten.exp,
    aten.log,
    aten.rsqrt,
    aten.sqrt,
    aten.pow,
    aten.abs,
    aten.maximum,
    aten.minimum,
    aten.addcmul,
    aten.lt,
    aten.gt,
    aten.le,
    aten.ge,
    aten.eq,
    aten.ne,
):
    register_handle(_op, _elementwise)
for _op in (aten.max_pool2d_with_indices, aten.max_pool2d, aten.avg_pool2d):
    register_handle(_op, _pool)
register_handle(aten._adaptive_avg_pool2d, _adaptive_pool)
register_handle(aten.adaptive_max_pool2d, _adaptive_pool)
for _op in (aten.mean, aten.sum, aten.amax, aten.var, aten.var_mean, aten.std):
    register_handle(_op, _reduce)
