"""nlseq: kernels for nonlinear sequence models (ParaRNN, softplus attention, analog crossbars).

Every op takes ``backend="auto" | "cuda" | "triton" | "cpp" | "reference"``; see
``nlseq.backends()`` for what can run here, ``python -m nlseq`` for a report of the environment,
and docs/index.md for the documentation.

Importing nlseq is cheap (about 0.05 s on top of ``import torch``): the ops register with
torch.library here, but triton, torch._dynamo, the Triton kernels and the compiled extension
are imported on first use.
"""

from . import analog, nn  # noqa: F401  (nlseq.analog.NLADC, nlseq.nn.SoftplusAttention, ...)
from ._version import __version__
from .ops.analog import analog_mvm
from .ops.pararnn import NewtonInfo, newton_solve, pararnn
from .ops.scan import linear_recurrence
from .ops.softplus_attention import softplus_attention
from .registry import backends

__all__ = [
    "__version__",
    "backends",
    "linear_recurrence",
    "analog_mvm",
    "analog",
    "NewtonInfo",
    "newton_solve",
    "pararnn",
    "softplus_attention",
    "nn",
]
