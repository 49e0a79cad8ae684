"""nn.Modules built on nlseq ops, with torch.nn.GRU/LSTM-style signatures (STYLE.md §7)."""
from .analog import AnalogGRU, AnalogLinear, AnalogLSTM  # noqa: E402,F401
from .pararnn import ParaGRU, ParaLSTM  # noqa: E402,F401
from .attention import SoftplusAttention, rotary_embedding  # noqa: E402,F401
