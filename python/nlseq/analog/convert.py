"""Model-wide analog conversion: every supported layer of a model on simulated crossbars.

    model = nlseq.analog.convert(model, CrossbarConfig(prog_noise=0.03, drift_nu=0.05), adc_bits=5)
    nlseq.analog.program(model, seed=1)      # program every crossbar and ADC ramp (one draw of devices)
    nlseq.analog.drift(model, 3600.0)        # the same devices, one hour after programming
    nlseq.analog.reset_noise(model)          # replay the read-noise streams from the start
    digital = nlseq.analog.to_digital(model) # back to torch.nn layers with the same weights

What is converted: torch.nn.Linear → AnalogLinear (a linear ADC over ±linear_range, the
activation that follows stays digital), torch.nn.LSTM → AnalogLSTM and torch.nn.GRU → AnalogGRU
(gates through NL-ADCs, docs/spec.md §3.2). Not converted, by design: nlseq's ParaGRU/ParaLSTM,
whose recurrence is diagonal (no matrix product for a crossbar) and whose gate activations take
a⊙h₋ after the input projection, so an ADC at the projection cannot output the activation; and
layers that are not matrix products (norms, embeddings, attention's score product). Modules
already analog are left as they are.

Every converted layer gets its own seed (``seed + index`` in ``named_modules`` order), so the
noise of different layers is independent and a whole-model simulation replays exactly.
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
import torch.nn as tnn

from .config import CrossbarConfig

_PROGRAM_SEED = "_nlseq_program_seed"


def _analog_types():
    from ..nn.analog import AnalogGRU, AnalogLinear, AnalogLSTM

    return AnalogLinear, AnalogLSTM, AnalogGRU


def analog_modules(model: tnn.Module) -> list[tuple[str, tnn.Module]]:
    """``[(name, module)]`` of every analog layer of ``model`` (itself included), in module order."""
    types = _analog_types()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def _check_model(model, op: str) -> None:
    if not isinstance(model, tnn.Module):
        raise TypeError(f"nlseq.analog.{op}: model must be a torch.nn.Module, got {type(model).__name__}")


def _check_int(name: str, v, op: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"nlseq.analog.{op}: {name} must be an int >= {minimum}, got {v!r}")
    return v


def convert(
    model: tnn.Module,
    config: Optional[CrossbarConfig] = None,
    *,
    adc_bits: int = 5,
    linear_adc_bits: int = 8,
    linear_range: float = 8.0,
    seed: int = 0,
    exclude: Iterable[str] = (),
    inplace: bool = False,
    backend: str = "auto",
) -> tnn.Module:
    """Replace every torch.nn.Linear, LSTM and GRU of ``model`` by its analog counterpart.

    Args:
        config: the crossbar model of every layer (default ``CrossbarConfig()``).
        adc_bits: NL-ADC bits of the LSTM/GRU gates; linear_adc_bits / linear_range: the linear ADC
            of converted Linear layers (their codes cover ±linear_range).
        seed: layer i (in ``named_modules`` order) gets seed ``seed + i``.
        exclude: qualified names of modules to keep digital (e.g. ``["lm_head"]``), and all below them.
        inplace: convert ``model`` itself instead of a deep copy.
    Returns the converted model (weights copied, crossbars programmed lazily on first use or by
    :func:`program`). A model that is itself a Linear/LSTM/GRU is returned converted.
    """
    _check_model(model, "convert")
    if config is not None and not isinstance(config, CrossbarConfig):
        raise TypeError(f"nlseq.analog.convert: config must be a CrossbarConfig or None, got {type(config).__name__}")
    _check_int("adc_bits", adc_bits, "convert", 1)
    _check_int("linear_adc_bits", linear_adc_bits, "convert", 1)
    _check_int("seed", seed, "convert")
    if isinstance(exclude, str):
        raise TypeError("nlseq.analog.convert: exclude must be a list of module names, got a single string")
    skip = tuple(exclude)
    from ..nn.analog import AnalogGRU, AnalogLinear, AnalogLSTM

    if not inplace:
        model = copy.deepcopy(model)
    counter = [0]

    def make(m: tnn.Module) -> Optional[tnn.Module]:
        kw = dict(config=config, seed=seed + counter[0], backend=backend)
        if isinstance(m, (AnalogLinear, AnalogLSTM, AnalogGRU)):
            return None
        if isinstance(m, tnn.LSTM):
            out = AnalogLSTM.from_digital(m, adc_bits=adc_bits, **kw)
        elif isinstance(m, tnn.GRU):
            out = AnalogGRU.from_digital(m, adc_bits=adc_bits, **kw)
        elif isinstance(m, tnn.Linear):
            out = AnalogLinear.from_digital(m, adc_bits=linear_adc_bits, linear_range=linear_range, **kw)
        else:
            return None
        counter[0] += 1
        return out

    def excluded(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skip)

    root = make(model) if not excluded("") else None
    if root is not None:
        return root
    for name, parent in list(model.named_modules()):
        if excluded(name):
            continue
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if excluded(full):
                continue
            new = make(child)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def program(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """Program every analog layer now: layer i draws its devices from ``torch.Generator().manual_seed(seed + i)``.

    The seed is remembered, so :func:`drift` can age the same devices.
    """
    _check_model(model, "program")
    _check_int("seed", seed, "program")
    for i, (_, m) in enumerate(analog_modules(model)):
        with torch.no_grad():
            m.program(torch.Generator().manual_seed(seed + i))
        setattr(m, _PROGRAM_SEED, seed + i)
    return model


def drift(model: tnn.Module, t_eval: float) -> tnn.Module:
    """Evaluate every analog layer ``t_eval`` seconds after programming (conductance drift, docs/spec.md §3.1).

    The devices are the ones :func:`program` drew (programmed with seed 0 first if it was never
    called); only the drift factor (t_eval/t0)^(−ν) of each layer's ``config.drift_nu`` changes.
    """
    _check_model(model, "drift")
    if isinstance(t_eval, bool) or not isinstance(t_eval, (int, float)) or not t_eval > 0 or t_eval == float("inf"):
        raise ValueError(f"nlseq.analog.drift: t_eval must be a finite number of seconds > 0, got {t_eval!r}")
    mods = analog_modules(model)
    for i, (_, m) in enumerate(mods):
        m.config = m.config.replace(t_eval=float(t_eval))
        s = getattr(m, _PROGRAM_SEED, i)
        with torch.no_grad():
            m.program(torch.Generator().manual_seed(s))  # same draws, new drift factor
        setattr(m, _PROGRAM_SEED, s)
    return model


def reset_noise(model: tnn.Module, offset: int = 0) -> tnn.Module:
    """Rewind the read-noise stream of every analog layer to ``offset``."""
    _check_model(model, "reset_noise")
    _check_int("offset", offset, "reset_noise")
    for _, m in analog_modules(model):
        m.reset_noise(offset)
    return model


def to_digital(model: tnn.Module, *, inplace: bool = False) -> tnn.Module:
    """Replace every analog layer by the torch.nn layer with the same weights (Linear, LSTM, GRU)."""
    _check_model(model, "to_digital")
    AnalogLinear, AnalogLSTM, AnalogGRU = _analog_types()
    if not inplace:
        model = copy.deepcopy(model)

    def digital(m: tnn.Module) -> Optional[tnn.Module]:
        if isinstance(m, AnalogLinear):
            ref = m.weight
            out = tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=ref.device, dtype=ref.dtype)
        elif isinstance(m, (AnalogLSTM, AnalogGRU)):
            ref = m.weight_ih_l0
            cls = tnn.LSTM if isinstance(m, AnalogLSTM) else tnn.GRU
            out = cls(
                m.input_size,
                m.hidden_size,
                m.num_layers,
                bias=m.bias,
                batch_first=m.batch_first,
                device=ref.device,
                dtype=ref.dtype,
            )
        else:
            return None
        out.load_state_dict({k: v for k, v in m.state_dict().items()})
        out.train(m.training)
        return out

    root = digital(model)
    if root is not None:
        return root
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = digital(child)
            if new is not None:
                setattr(parent, child_name, new)
    return model
