"""nn.Modules built on nlseq ops, with torch.nn.GRU/LSTM-style signatures (STYLE.md §7)."""
from .pararnn import ParaGRU, ParaLSTM  # noqa: E402,F401
