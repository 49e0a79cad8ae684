"""What a benchmark case is: inputs, an oracle, implementations to check and time, and a cost model.

A family module in ``nlseq.bench.cases`` returns a list of :class:`Case` (see
``nlseq/bench/cases/__init__.py`` for the module API). The runner, for every case:

1. builds the inputs once (``inputs()``, seeded with ``torch.manual_seed(0)``), makes the tensors
   named in ``grad_inputs`` require grad, and draws one random upstream gradient per output;
2. runs ``oracle`` on float64 copies of the inputs (same device) and, when the case has a
   backward, ``oracle_grads`` (or autograd through ``oracle`` when that is None);
3. runs every :class:`Impl` once and compares every output and every gradient with the oracle:
   PASS when ``|impl - oracle| <= atol + rtol·|oracle|`` everywhere (``grad_tol`` for gradients)
   and nothing is NaN;
4. times ``fwd`` / ``bwd`` / ``fwdbwd`` medians (with quartiles) for the impls with
   ``timed=True``, and turns them into GB/s (``bytes``), TFLOP/s (``flops``), speedups over
   ``baseline`` and peak memory, and checks the case's :class:`Goal` s.

A peer that computes a different function at the same size (nn.GRU next to ParaGRU, softmax SDPA
next to softplus attention) sits in the same case, so that the table and the figure compare it
with the nlseq rows directly; it brings its own ``inputs`` / ``oracle`` / tolerances (Impl fields)
and is checked against its own float64 oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor

Outputs = Union[Tensor, tuple]
MODES = ("fwd", "bwd", "fwdbwd")

_DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class Impl:
    """One implementation a case checks and times.

    name      row label: an nlseq backend name ("cpp", "cuda", "triton", "reference") or a peer
              ("loop", "torch", ...); the ``--backend`` filter matches it.
    fn        ``fn(**inputs) -> Tensor | tuple[Tensor, ...]``, the outputs in the oracle's order.
    backend   the nlseq backend it runs, or None for a plain PyTorch peer. The runner skips it,
              with the reason, when ``nlseq.backends()`` says it is unavailable or it cannot take
              tensors on the case's device.
    backward  False: forward only (run under ``torch.no_grad()``), no bwd/fwdbwd columns.
    timed     False: correctness check only (e.g. the Triton interpreter on the CPU).
    skip      a non-empty reason skips it (the case knows something the registry does not).
    note      shown in the JSON row.
    inputs, oracle, oracle_grads, grad_inputs, tol, grad_tol
              a peer computing another function (see the module docstring): its own inputs
              builder, float64 oracle (and gradients), differentiated inputs and (atol, rtol);
              None = the case's.
    """

    name: str
    fn: Callable[..., Outputs]
    backend: Optional[str] = None
    backward: bool = True
    timed: bool = True
    skip: str = ""
    note: str = ""
    inputs: Optional[Callable[[], dict]] = None
    oracle: Optional[Callable[..., Outputs]] = None
    oracle_grads: Optional[Callable[[dict, tuple], dict]] = None
    grad_inputs: Optional[tuple] = None
    tol: Optional[tuple] = None
    grad_tol: Optional[tuple] = None

    @property
    def own_problem(self) -> bool:
        """True when it brings its own inputs, oracle or gradients (a peer computing another function)."""
        return self.inputs is not None or self.oracle is not None or self.grad_inputs is not None


@dataclass(frozen=True)
class Goal:
    """A speed goal of a case, checked on every run (the table says met / missed).

    impls      the rows it applies to (e.g. ("cuda", "triton")); each is judged on its own.
    mode       "fwd", "bwd" or "fwdbwd".
    speedup    at least this many times faster than ``over`` (default: the case's baseline);
    max_ms     or at most this median time;
    min_tflops or at least this throughput.
    text       where the number comes from (docs/spec.md section, issue).
    """

    impls: tuple
    mode: str
    speedup: Optional[float] = None
    over: Optional[str] = None
    max_ms: Optional[float] = None
    min_tflops: Optional[float] = None
    text: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Goal: mode must be one of {MODES}, got {self.mode!r}")
        if sum(x is not None for x in (self.speedup, self.max_ms, self.min_tflops)) != 1:
            raise ValueError("Goal: give exactly one of speedup, max_ms, min_tflops")


@dataclass
class Case:
    """One problem at one shape, dtype and device, with its implementations.

    family, name   e.g. "scan", "diagonal"; ``id`` adds shape, dtype and device.
    device, dtype  where the inputs live and their dtype (the row's dtype).
    shape          named sizes, e.g. {"B": 4, "T": 4096, "N": 256} (reported and printed).
    inputs         ``() -> dict[str, Tensor | other]`` on ``device``, passed as keyword arguments
                   to every impl; called once, after ``torch.manual_seed(0)``. Non-tensor values
                   (flags, sizes) are passed through unchanged.
    oracle         ``oracle(**inputs64) -> Tensor | tuple[Tensor, ...]`` (floating inputs are
                   float64 copies; outputs are compared in float64).
    impls          the implementations (peers run in the same process, same inputs).
    grad_inputs    names of the inputs that get gradients; empty = forward-only case.
    oracle_grads   ``(inputs64: dict, grad_outputs64: tuple) -> dict[name, Tensor]``; None =
                   autograd through ``oracle``.
    output_names   labels of the outputs in error reports (default out0, out1, ...).
    atol, rtol     tolerance of the outputs against the float64 oracle; ``tolerance_note`` says why.
    grad_tol       (atol, rtol) of the gradients; None = (atol, rtol).
    baseline       impl name that speedups are relative to (None: no speedup columns).
    bytes, flops   per mode ("fwd", "bwd", "fwdbwd"): bytes that must move (a model: each tensor
                   read or written once) and floating-point operations. Missing mode = no column.
    mem_estimate   per impl name, estimated peak extra bytes of one fwd(+bwd) call; reported on the
                   CPU only (on a GPU the runner measures torch.cuda.max_memory_allocated).
    note           printed under the case's header.
    goals          :class:`Goal` s checked on every run (met / missed in the table and the JSON).
    check_grads    False: the gradients are timed but not compared (the oracle runs forward
                   only) -- for sizes whose float64 backward would not fit in memory.
    headline       part of the headline set (``--subset headline``): the cases a short GPU
                   check times first (docs/benchmarks.md).
    """

    family: str
    name: str
    device: Union[torch.device, str]
    dtype: torch.dtype
    shape: dict
    inputs: Callable[[], dict]
    oracle: Callable[..., Outputs]
    impls: list
    grad_inputs: tuple = ()
    oracle_grads: Optional[Callable[[dict, tuple], dict]] = None
    output_names: tuple = ()
    atol: float = 1e-5
    rtol: float = 1e-5
    grad_tol: Optional[tuple] = None
    tolerance_note: str = ""
    baseline: Optional[str] = None
    bytes: dict = field(default_factory=dict)
    flops: dict = field(default_factory=dict)
    mem_estimate: dict = field(default_factory=dict)
    note: str = ""
    goals: tuple = ()
    check_grads: bool = True
    headline: bool = False

    def __post_init__(self):
        self.device = torch.device(self.device)
        names = [i.name for i in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"bench case {self.family}/{self.name}: impl names must be unique, got {names}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"bench case {self.family}/{self.name}: baseline {self.baseline!r} is not one of {names}")
        for goal in self.goals:
            unknown = [n for n in (*goal.impls, goal.over) if n is not None and n not in names]
            if unknown:
                raise ValueError(f"bench case {self.family}/{self.name}: goal names {unknown}, not in {names}")
        for table in (self.bytes, self.flops):
            bad = set(table) - set(MODES)
            if bad:
                raise ValueError(f"bench case {self.family}/{self.name}: modes must be in {MODES}, got {sorted(bad)}")

    @property
    def grad_atol_rtol(self) -> tuple:
        return tuple(self.grad_tol) if self.grad_tol is not None else (self.atol, self.rtol)

    @property
    def shape_str(self) -> str:
        return "x".join(f"{k}{v}" for k, v in self.shape.items())

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}/{self.shape_str}/{dtype_name(self.dtype)}/{self.device.type}"
