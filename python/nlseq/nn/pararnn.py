"""ParaGRU and ParaLSTM: the paper's diagonal multi-head cells (docs/spec.md §1.3) as nn.Modules.

Signatures follow torch.nn.GRU / torch.nn.LSTM (single layer, unidirectional):

    ParaGRU:  y, h_n = gru(x, h0=None)             h0, h_n [1, B, N] (h0 may also be [B, N])
    ParaLSTM: y, (h_n, c_n) = lstm(x, state=None)  state = (h0, c0), each [1, B, N] or [B, N]

The LSTM state pairs are (h, c), as torch.nn.LSTM's (the kernels store the paper's [c | h] state
internally; the module swaps at its boundary).
x is [B, T, I] with batch_first=True (the default) or [T, B, I]; y is [B, T, N] / [T, B, N].

Parameters (documented layouts; names in the reference code in brackets):
    weight_ih  [heads, I/heads, 3, N/heads]  block-diagonal input projection W       [B]
    bias       [3, N]                         b                                       [b]
    weight_hh  [3, N]                         diagonal recurrent weights A            [A]
    peephole   [2, N]                         LSTM only: (p_f, p_o)                   [C]
Gate orders: GRU (z, r, c); LSTM (f, o, c̃). ``load_reference_state_dict`` / ``reference_state_dict``
convert from / to the reference names. Initialisation (docs/spec.md §1.3): A (and the peepholes)
~ N(0, (2/√(5N))²); W Xavier-uniform with fan_in = I/heads, fan_out = N; b row 0 = −linspace(0, 1, N),
other rows 0.

The input projection U = Wx + b runs outside the recurrence (``nlseq.ops.pararnn_projection``:
on the CPU GEMMs written straight into U's layout, rows split over the threads); the
recurrence runs in ``nlseq.pararnn`` (Newton or sequential, see ``mode``). After each forward,
``last_info`` holds a ``NewtonInfo`` (iterations and residual as Python numbers).

Non-convergence (docs/numerics.md): the modules default to ``on_nonconvergence="sequential"``,
unlike the functional ``nlseq.pararnn`` ("raise"). A training run takes millions of steps, and a
single Newton miss (an unlucky batch, weights briefly outside the contracting regime) should cost
one exact sequential pass, not the run: the step still gets the exact answer and gradient. The
miss is not silent: it is logged as a warning on the ``nlseq`` logger and counted in
``last_info.fallbacks`` (and ``fallback_count``), so a run whose Newton solves keep failing (and
whose speed therefore drops to the sequential pass) shows it. Pass "raise" to fail fast instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import FLOAT_DTYPES, check_backend, check_bool, check_choice, check_float, check_int, check_tensor
from ..ops.pararnn import MODES, ON_NONCONVERGENCE, NewtonInfo, pararnn
from ..ops.pararnn_projection import input_projection


class _ParaRNN(nn.Module):
    cell = ""
    _REF_NAMES = {"weight_hh": "A", "weight_ih": "B", "bias": "b"}

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        heads: int = 2,
        batch_first: bool = True,
        backend: str = "auto",
        mode: str = "auto",
        max_iters: Optional[int] = None,
        tol: Optional[float] = None,
        on_nonconvergence: str = "sequential",
        device=None,
        dtype=None,
        sequence_parallel_group=None,
        sp_strategy: str = "all_to_all",
    ):
        super().__init__()
        name = type(self).__name__
        op = f"nn.{name}"
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size), ("heads", heads)):
            check_int(op, what, v, lo=1)
        check_bool(op, "batch_first", batch_first)
        check_backend(op, backend)
        if max_iters is not None:
            check_int(op, "max_iters", max_iters, lo=0)
        if tol is not None:
            tol = check_float(op, "tol", tol, lo=0.0)
        if input_size % heads or hidden_size % heads:
            raise ValueError(
                f"{name}: input_size ({input_size}) and hidden_size ({hidden_size}) must both be divisible by "
                f"heads ({heads}): the input projection is block-diagonal over heads (docs/spec.md §1.3)"
            )
        check_choice(op, "mode", mode, MODES)
        check_choice(op, "on_nonconvergence", on_nonconvergence, ON_NONCONVERGENCE)
        self.input_size, self.hidden_size, self.heads = input_size, hidden_size, heads
        self.batch_first, self.backend, self.mode = batch_first, backend, mode
        self.max_iters, self.tol, self.on_nonconvergence = max_iters, tol, on_nonconvergence
        fk = dict(device=device, dtype=dtype)
        N = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(heads, input_size // heads, 3, N // heads, **fk))
        self.bias = nn.Parameter(torch.empty(3, N, **fk))
        self.weight_hh = nn.Parameter(torch.empty(3, N, **fk))
        self.last_info: Optional[NewtonInfo] = None
        self.fallback_count = 0  # forwards that finished with the sequential fallback (see module doc)
        self._sp_init(sequence_parallel_group, sp_strategy)

    def reset_parameters(self) -> None:
        N = self.hidden_size
        with torch.no_grad():
            std = 2.0 / math.sqrt(5 * N)
            self.weight_hh.normal_(0.0, std)
            bound = math.sqrt(6.0 / (self.input_size // self.heads + N))
            self.weight_ih.uniform_(-bound, bound)
            self.bias.zero_()
            self.bias[0] = -torch.linspace(0, 1, N, dtype=self.bias.dtype, device=self.bias.device)
            if getattr(self, "peephole", None) is not None:
                self.peephole.normal_(0.0, std)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, heads={self.heads}, batch_first={self.batch_first}, "
            f"backend={self.backend!r}, mode={self.mode!r}"
        )

    # -- reference layout
    def reference_state_dict(self) -> dict[str, Tensor]:
        """Parameters under the reference code's names A, B, b (and C: the LSTM peepholes)."""
        return {ref: getattr(self, ours).detach().clone() for ours, ref in self._REF_NAMES.items()}

    def load_reference_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load parameters from the reference code's names and layouts (docs/spec.md §1.3)."""
        name = type(self).__name__
        missing = [ref for ref in self._REF_NAMES.values() if ref not in sd]
        extra = [k for k in sd if k not in self._REF_NAMES.values()]
        if missing or extra:
            raise KeyError(
                f"{name}.load_reference_state_dict: expected keys {sorted(self._REF_NAMES.values())}; "
                f"missing {missing}, unexpected {extra}"
            )
        for ours, ref in self._REF_NAMES.items():
            p = getattr(self, ours)
            v = sd[ref]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(
                    f"{name}.load_reference_state_dict: {ref} must have shape {tuple(p.shape)}, got {tuple(v.shape)}"
                )
        with torch.no_grad():
            for ours, ref in self._REF_NAMES.items():
                getattr(self, ours).copy_(sd[ref])

    # -- forward pieces
    def _check_x(self, x: Tensor) -> tuple[Tensor, int, int]:
        name = type(self).__name__
        layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
        check_tensor(
            "x",
            x,
            op=f"nn.{name}",
            ndim=3,
            layout=layout,
            device=self.weight_hh.device,
            device_of="the module's parameters",
        )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"nlseq.nn.{name}: x's last dim must be input_size = {self.input_size} {layout}, "
                f"got shape {tuple(x.shape)}"
            )
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, x.shape[0], x.shape[1]

    def _state(self, h: Optional[Tensor], what: str, B: int, like: Tensor) -> Optional[Tensor]:
        if h is None:
            return None
        name = type(self).__name__
        N = self.hidden_size
        # float states of another precision are converted to x's; complex, bool and integer ones
        # are rejected (a cast would drop the imaginary part or turn values into 0/1)
        check_tensor(
            what,
            h,
            op=f"nn.{name}",
            ndim=(2, 3),
            dtypes=FLOAT_DTYPES,
            device=like.device,
            device_of="x",
            layout=f"([1, B, N] or [B, N] = {(1, B, N)})",
        )
        if h.dim() == 3 and h.shape[0] == 1:
            h = h[0]
        if tuple(h.shape) != (B, N):
            raise ValueError(
                f"nlseq.nn.{name}: {what} must have shape [1, B, N] or [B, N] = {(1, B, N)} "
                f"(one layer), got {tuple(h.shape)}"
            )
        return h.to(like.dtype)

    def _run(self, x: Tensor, s0: Optional[Tensor]) -> Tensor:
        # [B, T, 3, N]; on the CPU the row-split C++ GEMMs written straight into U (ops/pararnn_projection.py)
        U = input_projection(x, self.weight_ih.to(x.dtype), self.bias.to(x.dtype), backend=self.backend)
        S_all, info = pararnn(
            self.cell,
            U,
            self.weight_hh,
            getattr(self, "peephole", None),
            s0,
            mode=self.mode,
            max_iters=self.max_iters,
            tol=self.tol,
            on_nonconvergence=self.on_nonconvergence,
            backend=self.backend,
            return_info=True,
        )
        if (
            not torch.compiler.is_compiling() and info.fallback
        ):  # the op logged the warning; count it so a long run can see the trend
            self.fallback_count += 1
        self.last_info = dataclasses.replace(info, fallbacks=self.fallback_count)
        return S_all

    def _out(self, y: Tensor) -> Tensor:
        return y if self.batch_first else y.transpose(0, 1)

    # -- sequence parallel (nlseq.distributed.pararnn, docs/distributed.md) ---------------------
    # With sequence_parallel_group set, x is this rank's contiguous piece of the sequence (rank
    # order = time order), y is its piece of the output, and h_n (c_n) the final state of the
    # whole sequence on every rank. h0 / c0 are the state before the whole sequence, the same on
    # every rank. After backward every parameter holds the single-process gradient of the sum of
    # the ranks' losses (the projection's gradient is summed over the group, A's and P's gathered),
    # so nothing more is reduced over the sequence-parallel group.
    def _sp_init(self, group, strategy: str) -> None:
        from ..distributed.pararnn import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"{type(self).__name__}: sp_strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.sequence_parallel_group, self.sp_strategy = group, strategy

    def _sp_forward(self, x: Tensor, s0: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(y piece [B, T_r, N], final state [B, S, N]) of the sequence split over the group."""
        from ..distributed.pararnn import final_state, grad_sum
        from ..distributed.pararnn import pararnn as sp_pararnn

        g = self.sequence_parallel_group
        W, b = grad_sum(self.weight_ih, self.bias, group=g)  # used on this rank's steps only
        U = input_projection(x, W.to(x.dtype), b.to(x.dtype), backend=self.backend)
        S_all, info = sp_pararnn(
            self.cell,
            U,
            self.weight_hh,
            getattr(self, "peephole", None),
            s0,
            group=g,
            strategy=self.sp_strategy,
            mode=self.mode,
            max_iters=self.max_iters,
            tol=self.tol,
            on_nonconvergence=self.on_nonconvergence,
            backend=self.backend,
            return_info=True,
        )
        self.last_info = info
        S_all, last = final_state(S_all, group=g)
        if last is None:  # no rank has a step
            last = s0 if s0 is not None else x.new_zeros(x.shape[0], S_all.shape[2], self.hidden_size)
        return S_all[:, :, -1], last


class ParaGRU(_ParaRNN):
    """ParaGRU (docs/spec.md §1.3): z = σ(a_z h₋ + W_z x + b_z), r = σ(a_r h₋ + W_r x + b_r),
    c = tanh(a_c (h₋ r) + W_c x + b_c), h = z c + (1 − z) h₋ (z gates the candidate).

    Args: input_size, hidden_size, heads (default 2; both sizes divisible by it), batch_first,
    backend ("auto", "cuda", "triton", "cpp", "reference"), mode ("auto": sequential on the cpp
    backend, Newton elsewhere; "newton"; "sequential"), max_iters, tol, on_nonconvergence
    (see ``nlseq.pararnn``), device, dtype; sequence_parallel_group (a ProcessGroup or 1-D
    DeviceMesh: x and y are this rank's piece of the sequence, h_n the whole sequence's final state)
    and sp_strategy ("all_to_all" or "state"), see ``nlseq.distributed.pararnn``.
    ``forward(x, h0=None) -> (y, h_n)``: y [B, T, N] (batch_first) and h_n [1, B, N].
    """

    cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, heads: int = 2, batch_first: bool = True, **kwargs):
        super().__init__(input_size, hidden_size, heads, batch_first, **kwargs)
        self.reset_parameters()

    def forward(self, x: Tensor, h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x, B, T = self._check_x(x)
        h0 = self._state(h0, "h0", B, x)
        s0 = None if h0 is None else h0.unsqueeze(1)  # [B, 1, N]
        if self.sequence_parallel_group is not None:
            y, last = self._sp_forward(x, s0)
            return self._out(y), last[:, 0].unsqueeze(0)
        S_all = self._run(x, s0)
        y = S_all[:, :, 0]
        if T > 0:
            h_n = S_all[:, -1, 0]
        else:
            h_n = x.new_zeros(B, self.hidden_size) if h0 is None else h0
        return self._out(y), h_n.unsqueeze(0)


class ParaLSTM(_ParaRNN):
    """ParaLSTM, CIFG with peepholes (docs/spec.md §1.3): f = σ(a_f h₋ + p_f c₋ + W_f x + b_f),
    c̃ = tanh(a_c h₋ + W_c x + b_c), c = f c₋ + (1 − f) c̃, o = σ(a_o h₋ + p_o c + W_o x + b_o),
    h = o tanh(c).

    Args as ``ParaGRU``. ``forward(x, state=None) -> (y, (h_n, c_n))`` with state = (h0, c0), the
    order of torch.nn.LSTM; h_n, c_n are [1, B, N].
    """

    cell = "lstm"
    _REF_NAMES = {"weight_hh": "A", "weight_ih": "B", "bias": "b", "peephole": "C"}

    def __init__(self, input_size: int, hidden_size: int, heads: int = 2, batch_first: bool = True, **kwargs):
        super().__init__(input_size, hidden_size, heads, batch_first, **kwargs)
        self.peephole = nn.Parameter(
            torch.empty(2, hidden_size, device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        )
        self.reset_parameters()

    def forward(self, x: Tensor, state: Optional[tuple[Tensor, Tensor]] = None):
        x, B, T = self._check_x(x)
        s0 = None
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(
                    f"nlseq.nn.ParaLSTM: state must be a pair (h0, c0), each [1, B, N] or [B, N], got "
                    f"{type(state).__name__}{' of ' + str(len(state)) if isinstance(state, (tuple, list)) else ''}"
                )
            h0, c0 = self._state(state[0], "h0", B, x), self._state(state[1], "c0", B, x)
            s0 = torch.stack([c0, h0], dim=1)  # [B, 2, N]
        if self.sequence_parallel_group is not None:
            y, last = self._sp_forward(x, s0)
            return self._out(y), (last[:, 1].unsqueeze(0), last[:, 0].unsqueeze(0))  # (h_n, c_n), as torch
        S_all = self._run(x, s0)
        y = S_all[:, :, 1]
        if T > 0:
            c_n, h_n = S_all[:, -1, 0], S_all[:, -1, 1]
        elif s0 is not None:
            c_n, h_n = s0[:, 0], s0[:, 1]
        else:
            c_n = h_n = x.new_zeros(B, self.hidden_size)
        return self._out(y), (h_n.unsqueeze(0), c_n.unsqueeze(0))
