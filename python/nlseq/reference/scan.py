"""PyTorch reference of the linear recurrence (docs/spec.md §1.1): the definition of correct.

All functions take the *block* layout: A [B, T, N, K, K], b [B, T, N, K], h0 [B, N, K] or None.
The diagonal layout (A, b [B, T, N]) is the block layout with K = 1; ``ops.scan`` adds the two
trailing dims. Forward direction: h_t = A_t h_{t-1} + b_t, t = 1..T, h_0 = h0 (or 0).
``reverse=True``: h_t = A_t h_{t+1} + b_t, t = T..1, h_{T+1} = h0.

- ``linear_recurrence_loop``: the sequential loop in the input dtype; in float64 it is the test
  oracle.
- ``linear_recurrence_scan``: a log-depth Hillis–Steele scan (O(T log T) work), accumulating in
  float32 (float64 for float64 inputs); the ``reference`` backend.
- ``linear_recurrence_backward``: the implicit backward (a reverse recurrence with transposed,
  shifted A), written once in terms of any forward ``scan_fn``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _matvec(A: Tensor, h: Tensor) -> Tensor:
    # A [..., K, K] @ h [..., K] -> [..., K]
    return (A @ h.unsqueeze(-1)).squeeze(-1)


def linear_recurrence_loop(A: Tensor, b: Tensor, h0: Optional[Tensor] = None, reverse: bool = False):
    """Sequential loop, computed in the dtype of the inputs. Returns (h, h_last)."""
    B, T, N, K = b.shape
    h = b.new_zeros(B, N, K) if h0 is None else h0.clone()
    out = torch.empty_like(b)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h = _matvec(A[:, t], h) + b[:, t]
        out[:, t] = h
    return out, h


def _flip(x: Tensor, reverse: bool) -> Tensor:
    return x.flip(1) if reverse else x


def linear_recurrence_scan(A: Tensor, b: Tensor, h0: Optional[Tensor] = None, reverse: bool = False):
    """Hillis–Steele scan over time with the combine (A2, b2)∘(A1, b1) = (A2 A1, A2 b1 + b2)."""
    out_dtype = b.dtype
    acc = acc_dtype(out_dtype)
    A = _flip(A.to(acc), reverse)
    b = _flip(b.to(acc), reverse)
    if h0 is not None:  # fold h0 into the first step: b_1 <- A_1 h0 + b_1
        b = b.clone()
        b[:, 0] = _matvec(A[:, 0], h0.to(acc)) + b[:, 0]
    T = b.shape[1]
    offset = 1
    while offset < T:
        # element t combines with element t - offset (earlier in time): new = cur ∘ prev
        A_prev, b_prev = A[:, :-offset], b[:, :-offset]
        A_cur, b_cur = A[:, offset:], b[:, offset:]
        b = torch.cat([b[:, :offset], _matvec(A_cur, b_prev) + b_cur], dim=1)
        A = torch.cat([A[:, :offset], A_cur @ A_prev], dim=1)
        offset *= 2
    h = _flip(b, reverse).to(out_dtype, copy=True)  # never alias the input (T = 1)
    h_last = (h[:, 0] if reverse else h[:, -1]).clone()
    return h, h_last


ScanFn = Callable[[Tensor, Tensor, Optional[Tensor], bool], tuple]


def linear_recurrence_backward(
    A: Tensor,
    h: Tensor,
    h0: Optional[Tensor],
    grad_h: Tensor,
    grad_h_last: Tensor,
    reverse: bool,
    scan_fn: ScanFn = linear_recurrence_scan,
):
    """Gradients (dA, db, dh0) of the recurrence, in the block layout, for any forward ``scan_fn``.

    Forward direction (reverse mirrors it):
        λ_T = g_T + ḡ,  λ_t = g_t + A_{t+1}ᵀ λ_{t+1};  db_t = λ_t;  dA_t = λ_t h_{t−1}ᵀ;  dh0 = A_1ᵀ λ_1
    where g = grad_h and ḡ = grad_h_last. λ is itself a linear recurrence run the other way, with
    the transposed A shifted by one step; it is solved with ``scan_fn``. Computed in the
    accumulation dtype, returned in the input dtype. dh0 is None when h0 is None.
    """
    dtype = h.dtype
    acc = acc_dtype(dtype)
    A_acc, h_acc = A.to(acc), h.to(acc)
    B, T, N, K = h.shape
    At = A_acc.transpose(-1, -2)
    g = grad_h.to(acc).clone()
    zero_A = torch.zeros_like(At[:, :1])
    if not reverse:
        A_shift = torch.cat([At[:, 1:], zero_A], dim=1)  # A'_t = A_{t+1}ᵀ
        g[:, -1] += grad_h_last.to(acc)
    else:
        A_shift = torch.cat([zero_A, At[:, :-1]], dim=1)  # A'_t = A_{t-1}ᵀ
        g[:, 0] += grad_h_last.to(acc)
    lam, _ = scan_fn(A_shift, g, None, not reverse)
    lam = lam.to(acc)
    first = h.new_zeros(B, 1, N, K, dtype=acc) if h0 is None else h0.to(acc).unsqueeze(1)
    if not reverse:
        h_prev = torch.cat([first, h_acc[:, :-1]], dim=1)
        A_first, lam_first = A_acc[:, 0], lam[:, 0]
    else:
        h_prev = torch.cat([h_acc[:, 1:], first], dim=1)
        A_first, lam_first = A_acc[:, -1], lam[:, -1]
    dA = lam.unsqueeze(-1) * h_prev.unsqueeze(-2)  # [B, T, N, K, K]: λ_i h_j
    dh0 = None if h0 is None else _matvec(A_first.transpose(-1, -2), lam_first).to(dtype)
    return dA.to(dtype), lam.to(dtype), dh0
