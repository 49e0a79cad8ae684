"""Analog crossbar simulation with nonlinear ramp ADCs (docs/spec.md §3).

- ``CrossbarConfig``: the device and periphery model (programming noise, stuck devices, drift,
  read and output noise, DAC, tiles, read voltage); ``CrossbarConfig.ideal()`` turns it all off.
- ``NLADC``: a ramp ADC whose pre-distorted ramp outputs the activation (sigmoid, tanh, ...).
- ``program_weights``: map a weight matrix to programmed differential conductance pairs.
- ``from_digital``: convert torch.nn.Linear / LSTM / GRU modules to their analog counterparts.
- ``convert``, ``program``, ``drift``, ``reset_noise``, ``to_digital``: the same for a whole model
  (every supported layer), programmed, aged and replayed together (``nlseq/analog/convert.py``).

The fused kernel is ``nlseq.analog_mvm`` (python/nlseq/ops/analog.py); the modules are
``nlseq.nn.AnalogLinear``, ``AnalogLSTM`` and ``AnalogGRU``.
"""

from .adc import NLADC, ProgrammedADC
from .config import CrossbarConfig, ProgrammedWeights, program_conductances, program_weights
from .convert import analog_modules, convert, drift, program, reset_noise, to_digital


def from_digital(module, config=None, adc_bits: int = 5, **kwargs):
    """Analog copy of a trained torch.nn.Linear, LSTM or GRU (weights programmed lazily)."""
    import torch.nn as tnn

    from ..nn.analog import AnalogGRU, AnalogLinear, AnalogLSTM

    for digital, analog in ((tnn.LSTM, AnalogLSTM), (tnn.GRU, AnalogGRU), (tnn.Linear, AnalogLinear)):
        if isinstance(module, digital):
            return analog.from_digital(module, config=config, adc_bits=adc_bits, **kwargs)
    raise TypeError(f"nlseq.analog.from_digital: expected torch.nn.Linear, LSTM or GRU, got {type(module).__name__}")


__all__ = [
    "CrossbarConfig",
    "NLADC",
    "ProgrammedADC",
    "ProgrammedWeights",
    "program_weights",
    "program_conductances",
    "from_digital",
    "convert",
    "program",
    "drift",
    "reset_noise",
    "to_digital",
    "analog_modules",
]
