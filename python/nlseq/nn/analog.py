"""Analog modules: crossbar layers whose NL-ADCs output the activations (docs/spec.md §3).

``AnalogLinear``, ``AnalogLSTM`` and ``AnalogGRU`` keep their digital weights as parameters in
torch.nn.Linear / LSTM / GRU layouts (so ``load_state_dict`` of a digital module works) and run
every product on a simulated crossbar through the fused op ``nlseq.analog_mvm``:

- programming (``program(generator=None)``): weights → differential conductance pairs with
  programming noise, stuck devices and drift, NL-ADC ramps programmed from step conductances,
  comparator offsets drawn and calibrated. Done lazily on first use in eval mode, and kept until
  ``program()`` is called again; in training mode every forward programs afresh (noise injection
  for hardware-aware training) and gradients reach the digital weights straight through.
- reading: fresh read, output and comparator noise on every forward, from Philox keyed by the
  module's seed and a draw counter (``reset_noise()`` rewinds it, so a run replays exactly).

Under ``torch.compile`` (fullgraph): every random draw happens inside a registered op keyed by
(seed, counter), the counters are 0-dim int64 CPU tensors (no host read, no recompilation as they
move), the training-mode programming is the op ``nlseq::analog_program`` and the whole-layer
kernel is ``nlseq::analog_rnn``, both with fake kernels. An eval-mode forward reads the crossbars
programmed before: call ``program()`` (or ``nlseq.analog.program(model)``) before compiling it.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import torch
import torch.nn as tnn
from torch import Tensor

from .. import registry as _registry
from .._checks import FLOAT_DTYPES, check_backend, check_bool, check_float, check_int, check_tensor, check_tuple
from ..analog.adc import NLADC
from ..analog.config import CrossbarConfig, program_weights
from ..ops.analog import analog_mvm, analog_normals_op, analog_rnn_op

_PHILOX_SEED_SALT = 0x5EED_A11A  # keeps the read-noise stream apart from the programming generator
_CMP_SEED_SALT = 0xC0_4A1A_7035  # the cell ADCs' comparator-noise stream, apart from the crossbar reads
_LIVE: "weakref.WeakValueDictionary[str, _AnalogBase]" = weakref.WeakValueDictionary()


def _live_module(key: str) -> "_AnalogBase":
    try:
        return _LIVE[key]
    except KeyError:
        raise RuntimeError(f"nlseq::analog_program: no live analog module {key!r} (it was deleted)") from None


@torch.library.custom_op("nlseq::analog_program", mutates_args=())
def _analog_program_op(Ws: list[Tensor], key: str, offset: Tensor) -> list[Tensor]:
    """One training-mode programming of a module's crossbars (and cell ADC ramps), drawn from a
    generator seeded by (module seed, ``offset``): [weight, col_scale, thresholds, levels] per
    crossbar, then the cell ADC thresholds of each layer (RNNs)."""
    m = _live_module(key)
    g = torch.Generator().manual_seed((m.seed * 0x9E3779B1 + int(offset) + 1) % (2**63))
    out = []
    for W, banks in zip(Ws, m._bank_specs()):
        p = _program_crossbar(W, banks, m.config, g)
        out += [p.weight.detach().clone(), p.col_scale.clone(), p.thresholds, p.levels]
    return out + list(m._program_cell_adcs(g))


@_analog_program_op.register_fake
def _(Ws, key, offset):
    m = _live_module(key)
    out = []
    for W, banks in zip(Ws, m._bank_specs()):
        N, K = W.shape
        L = banks[0][0].levels.numel()
        out += [
            W.new_empty(N, K, dtype=torch.float32),
            W.new_empty(N, dtype=torch.float32),
            W.new_empty(N, L - 1, dtype=torch.float32),
            W.new_empty(N, L, dtype=torch.float32),
        ]
    return out + [Ws[0].new_empty(shape, dtype=torch.float32) for shape in m._cell_adc_shapes()]


class _Programmed:
    """What one programming of a crossbar and its ADC banks leaves behind (tensors on one device)."""

    def __init__(self, weight, col_scale, thresholds, levels, noise_a, noise_b):
        self.weight, self.col_scale = weight, col_scale  # [N, K] digital units, [N] µA/unit
        self.thresholds, self.levels = thresholds, levels  # [N, L−1] µA, [N, L]
        self.noise_a, self.noise_b = noise_a, noise_b
        self._fused_weight = None  # weight detached and contiguous, made by the first whole-layer call


def _program_crossbar(
    W: Tensor, banks: Sequence[tuple[NLADC, int]], config: CrossbarConfig, generator: torch.Generator
) -> _Programmed:
    """Program W [N, K] (may require grad) and the ADC banks (adc, columns) covering its N columns.

    The returned weight equals the programmed weights in value and W in gradient (straight
    through the programming noise)."""
    prog = program_weights(W.detach(), config, generator=generator)
    weight = W + (prog.weight - W).detach()
    thresholds, levels, cmp_noise = [], [], None
    col_scale = prog.col_scale.double().cpu()
    start = 0
    for adc, cols in banks:
        p = adc.program(cols, config, generator)
        scale = col_scale[start : start + cols]  # µA per input unit of each column: ramp in µA
        start += cols
        thresholds.append(p.thresholds[None, :] * scale[:, None] + p.offsets[:, None])
        levels.append(adc.levels[None, :].expand(cols, -1))
        if cmp_noise is not None and adc.cmp_noise != cmp_noise:
            raise ValueError("analog modules: every NL-ADC of one crossbar must have the same cmp_noise")
        cmp_noise = adc.cmp_noise
    dev = W.device
    thr = torch.cat(thresholds).to(dev, torch.float32).contiguous()
    lev = torch.cat(levels).to(dev, torch.float32).contiguous()
    noise_a, noise_b = config.noise_coefficients(W.shape[1], cmp_noise or 0.0)
    return _Programmed(weight, prog.col_scale, thr, lev, noise_a, noise_b)


def _act_string(banks: Sequence[tuple[NLADC, int]]) -> str:
    """The straight-through activation spec of the fused op ("sigmoid:256,tanh:128,..."); a user
    function (f, f_inverse) has no derivative to offer and passes gradients through unchanged."""
    names = [(adc.name if adc.name is not None else "identity", cols) for adc, cols in banks]
    if len(names) == 1:
        return names[0][0]
    return ",".join(f"{n}:{c}" for n, c in names)


class _AnalogBase(tnn.Module):
    def __init__(self, config: Optional[CrossbarConfig], seed: int, backend: str):
        super().__init__()
        op = f"nn.{type(self).__name__}"
        if config is not None and not isinstance(config, CrossbarConfig):
            raise TypeError(f"nlseq.{op}: config must be a CrossbarConfig or None, got {type(config).__name__}")
        check_int(op, "seed", seed, lo=0, hi=2**63 - 1)
        check_backend(op, backend)
        self.config = CrossbarConfig() if config is None else config
        self.seed = seed
        self.backend = backend
        self._generator = torch.Generator().manual_seed(self.seed)
        self._programmed: Optional[list[_Programmed]] = None
        self._cell_adc_state: list[Tensor] = []
        # draw counters: 0-dim int64 CPU tensors, not buffers (they stay on the host when the module moves)
        self._noise_offset = torch.zeros((), dtype=torch.int64)
        self._program_offset = torch.zeros((), dtype=torch.int64)
        self._register_live()

    def _register_live(self) -> None:
        self._key = f"{type(self).__name__}:{id(self)}"
        _LIVE[self._key] = self

    def __setstate__(self, state):  # deepcopy / unpickle: a new object, a new key
        super().__setstate__(state)
        self._noise_offset = self._noise_offset.clone()
        self._program_offset = self._program_offset.clone()
        self._register_live()

    @property
    def _draws(self) -> int:
        """Read-noise draws so far (the Philox offset of the next read)."""
        return int(self._noise_offset)

    def reset_noise(self, offset: int = 0) -> None:
        """Rewind the read-noise stream (the Philox offset) to ``offset``."""
        self._noise_offset.fill_(
            check_int(f"nn.{type(self).__name__}.reset_noise", "offset", offset, lo=0, hi=2**63 - 1)
        )

    def program(self, generator: Optional[torch.Generator] = None) -> "_AnalogBase":
        """Program the weights and ADC ramps now (programming noise, stuck devices, drift,
        comparator offsets), drawing from ``generator`` or the module's own generator."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"nlseq.nn.{type(self).__name__}.program: generator must be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        g = self._generator if generator is None else generator
        with torch.no_grad():  # the stored programming is a snapshot: no autograd graph back to the weights
            self._programmed = [_program_crossbar(W, banks, self.config, g) for W, banks in self._crossbars()]
        return self

    def _state(self) -> tuple[list[_Programmed], list[Tensor]]:
        """(programmed crossbars, cell ADC thresholds per layer): afresh in training, else the stored ones."""
        if self.training and torch.is_grad_enabled():
            return self._program_for_training()
        if self._programmed is None:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    f"{type(self).__name__}: program the crossbars before compiling an eval-mode forward "
                    "(call .program() or nlseq.analog.program(model) first)"
                )
            with torch.no_grad():
                self.program()
        return self._programmed, self._cell_adc_state

    def _program_for_training(self) -> tuple[list[_Programmed], list[Tensor]]:
        """Noise injection for hardware-aware training: a fresh programming through the registered op,
        weights straight through to the digital parameters."""
        crossbars = self._crossbars()
        flat = _analog_program_op([W.detach() for W, _ in crossbars], self._key, self._program_offset.clone())
        self._program_offset.add_(1)
        out = []
        for i, (W, banks) in enumerate(crossbars):
            pw, cs, thr, lev = flat[4 * i : 4 * i + 4]
            na, nb = self.config.noise_coefficients(W.shape[1], banks[0][0].cmp_noise)
            out.append(_Programmed(W + (pw - W).detach(), cs, thr, lev, na, nb))
        return out, list(flat[4 * len(crossbars) :])

    def _bank_specs(self) -> list[list[tuple[NLADC, int]]]:
        """The ADC banks (adc, columns) of every crossbar, in ``_crossbars`` order."""
        raise NotImplementedError

    def _program_cell_adcs(self, g: torch.Generator) -> list[Tensor]:
        return []

    def _cell_adc_shapes(self) -> list[tuple[int, int]]:
        return []

    def _mvm(self, x: Tensor, p: _Programmed, act: str) -> Tensor:
        offset = self._noise_offset.clone()
        self._noise_offset.add_(1)
        return analog_mvm(
            x,
            p.weight,
            p.col_scale,
            p.thresholds,
            p.levels,
            in_bits=self.config.in_bits,
            x_max=self.config.x_max,
            noise_a=p.noise_a,
            noise_b=p.noise_b,
            seed=(self.seed ^ _PHILOX_SEED_SALT) & (2**63 - 1),
            offset=offset,
            act=act,
            backend=self.backend,
        )

    def _crossbars(self):  # [(W_full [N, K], banks)]
        raise NotImplementedError


def _ones_column(x: Tensor) -> Tensor:
    return x.new_ones(x.shape[:-1] + (1,))


class AnalogLinear(_AnalogBase):
    """y = adc(x @ Wᵀ + b) on a crossbar (bias as one more input row driven at 1).

    ``adc``: an NLADC applied to every output column, or None for a linear 8-bit ADC ("identity")
    over ±``linear_range``. Parameters ``weight`` [out, in] and ``bias`` [out] as torch.nn.Linear.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: Optional[CrossbarConfig] = None,
        adc: Optional[NLADC] = None,
        seed: int = 0,
        *,
        linear_range: float = 8.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(config, seed, backend)
        op = "nn.AnalogLinear"
        check_int(op, "in_features", in_features, lo=1)
        check_int(op, "out_features", out_features, lo=1)
        check_bool(op, "bias", bias)
        check_float(op, "linear_range", linear_range, lo=0.0, lo_open=True)
        if adc is not None and not isinstance(adc, NLADC):
            raise TypeError(f"nlseq.{op}: adc must be an NLADC or None, got {type(adc).__name__}")
        ref = tnn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = ref.weight
        self.bias = ref.bias
        self.adc = adc if adc is not None else NLADC("identity", 8, (-linear_range, linear_range))

    def _bank_specs(self):
        return [[(self.adc, self.out_features)]]

    def _crossbars(self):
        W = self.weight if self.bias is None else torch.cat([self.weight, self.bias[:, None]], dim=1)
        return [(W, self._bank_specs()[0])]

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(
            "x",
            x,
            op="nn.AnalogLinear",
            layout=f"([..., in_features = {self.in_features}])",
            device=self.weight.device,
            device_of="the module's parameters",
        )
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"nlseq.nn.AnalogLinear: x must have in_features = {self.in_features} in its last dim, "
                f"got shape {tuple(x.shape)}"
            )
        (p,), _ = self._state()
        if self.bias is not None:
            x = torch.cat([x, _ones_column(x)], dim=-1)
        return self._mvm(x, p, _act_string([(self.adc, self.out_features)]))

    @classmethod
    def from_digital(
        cls,
        module: tnn.Linear,
        config: Optional[CrossbarConfig] = None,
        adc_bits: int = 8,
        adc: Optional[NLADC] = None,
        **kwargs,
    ) -> "AnalogLinear":
        out = cls(
            module.in_features, module.out_features, bias=module.bias is not None, config=config, adc=adc, **kwargs
        )
        if adc is None:
            rng = kwargs.get("linear_range", 8.0)
            out.adc = NLADC("identity", adc_bits, (-rng, rng))
        out.load_state_dict(module.state_dict())
        return out.to(module.weight.device)


class _AnalogRNNBase(_AnalogBase):
    _MODE = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        config: Optional[CrossbarConfig] = None,
        adc_bits: int = 5,
        seed: int = 0,
        *,
        cmp_offset: float = 0.0,
        cmp_noise: float = 0.0,
        linear_range: float = 4.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(config, seed, backend)
        op = f"nn.Analog{self._MODE}"
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(op, name, v, lo=1)
        for name, v in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            check_bool(op, name, v)
        check_float(op, "dropout", dropout, lo=0.0, hi=1.0)
        check_int(op, "adc_bits", adc_bits, lo=1, hi=16)
        check_float(op, "linear_range", linear_range, lo=0.0, lo_open=True)
        if bidirectional:
            raise NotImplementedError(f"Analog{self._MODE}: bidirectional=True is not supported")
        if dropout:
            raise NotImplementedError(f"Analog{self._MODE}: dropout between layers is not supported")
        ref = (tnn.LSTM if self._MODE == "LSTM" else tnn.GRU)(
            input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first, device=device, dtype=dtype
        )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.adc_bits = bias, batch_first, adc_bits
        for name, p in ref.named_parameters():
            setattr(self, name, p)
        kw = dict(cmp_offset=cmp_offset, cmp_noise=cmp_noise)
        self.sigmoid_adc = NLADC("sigmoid", adc_bits, **kw)
        self.tanh_adc = NLADC("tanh", adc_bits, **kw)
        self.linear_adc = NLADC("identity", adc_bits, (-linear_range, linear_range), **kw)
        # per layer: the cell ADC's thresholds [H, L−1] in c units (comparator offsets folded in)

    def _layer_params(self, k: int):
        w_ih, w_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
        if self.bias:
            b_ih, b_hh = getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")
        else:
            b_ih = b_hh = w_ih.new_zeros(w_ih.shape[0])
        return w_ih, w_hh, b_ih, b_hh

    def program(self, generator: Optional[torch.Generator] = None):
        super().program(generator)
        self._cell_adc_state = self._program_cell_adcs(self._generator if generator is None else generator)
        return self

    def _cell_adc_shapes(self):
        return [(self.hidden_size, self.tanh_adc.levels.numel() - 1)] * self.num_layers

    def _program_cell_adcs(self, g: torch.Generator):
        """The NL-ADCs that read the digital cell value (tanh(c) in the LSTM, the n gate in the
        GRU): ramp programmed, comparator offsets per hidden unit, in c units."""
        out = []
        scale = self.config.v_read * self.config.g_max / self.config.x_max  # µA per unit of c
        for _ in range(self.num_layers):
            p = self.tanh_adc.program(self.hidden_size, self.config, g)
            thr = (p.thresholds[None, :] + p.offsets[:, None] / scale).to(torch.float32)
            out.append(thr.to(self.weight_hh_l0.device).contiguous())
        return out

    def _cell_adc(self, u: Tensor, thresholds: Tensor) -> Tensor:
        """tanh through an NL-ADC on a digital value u [B, H], straight-through gradient of tanh."""
        adc = self.tanh_adc
        v = u.detach()
        if adc.cmp_noise > 0:
            scale = self.config.v_read * self.config.g_max / self.config.x_max
            offset = self._noise_offset.clone()
            self._noise_offset.add_(1)
            z = analog_normals_op(v.float().contiguous(), (self.seed ^ _CMP_SEED_SALT) & (2**63 - 1), offset)
            v = v + z.to(v.dtype) * (adc.cmp_noise / scale)
        codes = torch.searchsorted(thresholds, v.t().contiguous().float()).t()
        y = adc.levels.to(u.device, torch.float32)[codes].to(u.dtype)
        y = torch.where(torch.isnan(v), v.to(y.dtype), y)  # NaN in, NaN out, as every NL-ADC (nlseq/analog.h adc_level)
        ideal = torch.tanh(u)
        return ideal + (y - ideal).detach()

    def forward(self, input: Tensor, hx=None):
        op = f"nn.Analog{self._MODE}"
        layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
        check_tensor(
            "input",
            input,
            op=op,
            ndim=(2, 3),
            layout=f"({layout}, or [T, I] unbatched)",
            device=self.weight_ih_l0.device,
            device_of="the module's parameters",
        )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"nlseq.{op}: input must have input_size = {self.input_size} features in its last dim, "
                f"got shape {tuple(input.shape)}"
            )
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1 if not self.batch_first else 0)
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        H = self.hidden_size
        states, cell_thr = self._state()
        h0, c0 = self._initial_state(hx, B, x, batched)
        outs = x
        h_n, c_n = [], []
        fused = self._fused_sequence(x)
        for k in range(self.num_layers):
            h = h0[k]
            c = None if c0 is None else c0[k]
            if fused and T > 0:
                outs, h, c = self._layer_fused(outs, h, c, states[k], cell_thr[k])
                h_n.append(h)
                c_n.append(c)
                continue
            ys = []
            for t in range(T):
                xh1 = torch.cat([outs[t], h, h.new_ones(B, 1)], dim=1)
                h, c = self._cell(xh1, h, c, states[k], cell_thr[k], H)
                ys.append(h)
            outs = torch.stack(ys) if T > 0 else outs.new_zeros(0, B, H)
            h_n.append(h)
            c_n.append(c)
        out = outs.transpose(0, 1) if self.batch_first else outs
        h_n = torch.stack(h_n)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
            h_n = h_n.squeeze(1)
        if self._MODE == "LSTM":
            c_n = torch.stack(c_n)
            return out, (h_n, c_n if batched else c_n.squeeze(1))
        return out, h_n

    def _fused_sequence(self, x: Tensor) -> bool:
        """Whether the whole-layer C++ kernel runs (inference on the CPU with the cpp backend and a
        noiseless cell ADC comparator); otherwise the layer steps through ``analog_mvm`` in Python."""
        if (self.training and torch.is_grad_enabled()) or x.device.type != "cpu":
            return False
        if x.dtype != torch.float32 or self.tanh_adc.cmp_noise > 0:
            return False
        from .. import registry
        from ..ops.analog import IMPLEMENTED

        # whichever backend analog_mvm would run: the whole-layer kernel serves only "cpp" (a
        # "triton" module must step through analog_mvm, not fail in the resolver: issue 12)
        return registry.resolve(self.backend, x.device, "analog_mvm", IMPLEMENTED) == "cpp"

    def _layer_fused(self, x, h, c, p, cell_thr):
        """One layer by the whole-layer kernel: step t draws its noise at offset (draws + t), as
        the step path's t-th crossbar read does, so both paths replay the same stream.

        Outside torch.compile the kernel is called directly: the registered op's Python wrapper
        (dispatch, autograd and fake-tensor plumbing) costs ~0.1 ms a call, a tenth of the whole
        layer at T = 64, B = 8, H = 128 (docs/cpu_rnn.md); the counter is read as a host number
        there, where no graph can break, and the detached weight is kept with the programming."""
        if torch.compiler.is_compiling():
            op, weight, offset = analog_rnn_op, p.weight.detach().contiguous(), self._noise_offset.clone()
        else:
            _registry._extension()
            op, offset = torch.ops.nlseq_ext.analog_rnn_fwd, int(self._noise_offset)
            weight = p._fused_weight
            if weight is None:  # the stored programming's weight, detached and contiguous once
                weight = p._fused_weight = p.weight.detach().contiguous()
        self._noise_offset.add_(x.shape[0])
        with torch.no_grad():
            out, h_n, c_n = op(
                self._MODE.lower(),
                x.contiguous(),
                weight,
                p.col_scale,
                p.thresholds,
                p.levels,
                cell_thr,
                self.tanh_adc.levels.to(torch.float32),
                h.contiguous(),
                None if c is None else c.contiguous(),
                self.config.in_bits,
                self.config.x_max,
                p.noise_a,
                p.noise_b,
                (self.seed ^ _PHILOX_SEED_SALT) & (2**63 - 1),
                offset,
            )
        return out, h_n, (c_n if c is not None else None)

    def _check_hx(self, name: str, h, B: int, x: Tensor, batched: bool) -> Tensor:
        """One initial state: [num_layers, B, H] ([num_layers, H] unbatched), x's dtype and device
        (a state sized for another number of layers is an error, not a slice)."""
        op = f"nn.Analog{self._MODE}"
        L, H = self.num_layers, self.hidden_size
        shape = (L, B, H) if batched else (L, H)
        check_tensor(
            name,
            h,
            op=op,
            ndim=len(shape),
            dtypes=FLOAT_DTYPES,
            device=x.device,
            device_of="input",
            layout=f"([num_layers, B, hidden_size] = {shape}{'' if batched else ' unbatched'})",
        )
        if tuple(h.shape) != shape:
            raise ValueError(
                f"nlseq.{op}: {name} must have shape [num_layers, {'B, ' if batched else ''}hidden_size] = "
                f"{shape}, got {tuple(h.shape)}"
            )
        if h.dtype != x.dtype:
            raise TypeError(f"nlseq.{op}: {name} must have the dtype of input ({x.dtype}), got {h.dtype}")
        return h if batched else h.unsqueeze(1)

    def _initial_state(self, hx, B, x, batched):
        zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
        if self._MODE == "LSTM":
            if hx is None:
                return zeros, zeros
            h0, c0 = check_tuple("nn.AnalogLSTM", "hx", hx, 2, "(h0, c0)")
            return self._check_hx("hx[0] (h0)", h0, B, x, batched), self._check_hx("hx[1] (c0)", c0, B, x, batched)
        if hx is None:
            return zeros, None
        return self._check_hx("hx", hx, B, x, batched), None

    @classmethod
    def from_digital(cls, module, config: Optional[CrossbarConfig] = None, adc_bits: int = 5, **kwargs):
        if module.bidirectional or getattr(module, "proj_size", 0):
            raise NotImplementedError(f"Analog{cls._MODE}.from_digital: bidirectional and proj_size are not supported")
        out = cls(
            module.input_size,
            module.hidden_size,
            module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            config=config,
            adc_bits=adc_bits,
            **kwargs,
        )
        out.load_state_dict(module.state_dict(), strict=False)
        return out.to(next(module.parameters()).device)


class AnalogLSTM(_AnalogRNNBase):
    """torch.nn.LSTM on simulated crossbars (docs/spec.md §3.2): per layer ONE crossbar on [x; h; 1]
    (W_full = [W_ih | W_hh | b_ih + b_hh], 4H columns in torch's gate order i, f, g, o) whose
    columns end in sigmoid NL-ADCs (i, f, o) and tanh NL-ADCs (g); c = f⊙c + i⊙g digitally and
    h = o⊙tanh(c) with tanh(c) from an NL-ADC too. Parameters as torch.nn.LSTM
    (``weight_ih_l0`` ...), so ``from_digital`` copies a trained LSTM's state dict.
    Returns ``(output, (h_n, c_n))`` like torch.nn.LSTM; unidirectional, no projections.
    ``batch_first`` defaults to True, as in every nlseq module (x [B, T, I]); ``from_digital`` and
    ``nlseq.analog.convert`` copy the digital module's setting, so a converted nn.LSTM keeps its layout.
    """

    _MODE = "LSTM"

    def _bank_specs(self):
        H = self.hidden_size
        return [[(self.sigmoid_adc, 2 * H), (self.tanh_adc, H), (self.sigmoid_adc, H)]] * self.num_layers

    def _crossbars(self):
        out = []
        for k, banks in enumerate(self._bank_specs()):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            out.append((torch.cat([w_ih, w_hh, (b_ih + b_hh)[:, None]], dim=1), banks))
        return out

    def _cell(self, xh1, h, c, p, cell_thr, H):
        gates = self._mvm(xh1, p, f"sigmoid:{2 * H},tanh:{H},sigmoid:{H}")
        i, f, g, o = gates.split(H, dim=1)
        c = f * c + i * g
        return o * self._cell_adc(c, cell_thr), c


class AnalogGRU(_AnalogRNNBase):
    """torch.nn.GRU on simulated crossbars: per layer ONE crossbar on [x; h; 1] with 4H columns,
    r and z (sigmoid NL-ADCs) on [W_ir | W_hr | b_ir + b_hr] and [W_iz | W_hz | b_iz + b_hz], and
    the two halves of the candidate, W_in x + b_in and W_hn h + b_hn, read by linear ("identity")
    ADCs over ±linear_range; n = tanh(xn + r⊙hn) through a tanh NL-ADC and h = (1 − z)⊙n + z⊙h.
    Parameters as torch.nn.GRU; returns ``(output, h_n)``.
    """

    _MODE = "GRU"

    def _bank_specs(self):
        H = self.hidden_size
        return [[(self.sigmoid_adc, 2 * H), (self.linear_adc, 2 * H)]] * self.num_layers

    def _crossbars(self):
        H = self.hidden_size
        out = []
        for k, banks in enumerate(self._bank_specs()):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            I = w_ih.shape[1]
            rz = torch.cat([w_ih[: 2 * H], w_hh[: 2 * H], (b_ih[: 2 * H] + b_hh[: 2 * H])[:, None]], dim=1)
            xn = torch.cat([w_ih[2 * H :], w_ih.new_zeros(H, H), b_ih[2 * H :, None]], dim=1)
            hn = torch.cat([w_ih.new_zeros(H, I), w_hh[2 * H :], b_hh[2 * H :, None]], dim=1)
            out.append((torch.cat([rz, xn, hn], dim=0), banks))
        return out

    def _cell(self, xh1, h, c, p, cell_thr, H):
        gates = self._mvm(xh1, p, f"sigmoid:{2 * H},identity:{2 * H}")
        r, z, xn, hn = gates.split(H, dim=1)
        n = self._cell_adc(xn + r * hn, cell_thr)
        return (1 - z) * n + z * h, None


__all__ = ["AnalogLinear", "AnalogLSTM", "AnalogGRU"]
