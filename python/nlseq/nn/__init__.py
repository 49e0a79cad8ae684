"""nn.Modules built on nlseq ops, with the constructor arguments, input layouts and return values
of torch.nn.GRU / LSTM / Linear / MultiheadAttention-style modules (docs/design.md, docs/api.md)."""

from .analog import AnalogGRU, AnalogLinear, AnalogLSTM
from .attention import SoftplusAttention, rotary_embedding
from .pararnn import ParaGRU, ParaLSTM

__all__ = ["AnalogGRU", "AnalogLinear", "AnalogLSTM", "ParaGRU", "ParaLSTM", "SoftplusAttention", "rotary_embedding"]
