"""nlseq: kernels for nonlinear sequence models (ParaRNN, softplus attention, analog crossbars).

Every op takes ``backend="auto" | "cuda" | "triton" | "cpp" | "reference"``; see
``nlseq.backends()`` for what can run here and README.md for the environment variables.
"""
from .registry import backends
from .ops.scan import linear_recurrence

__version__ = "0.1.0"

__all__ = ["backends", "linear_recurrence", "__version__"]
from .ops.analog import analog_mvm  # noqa: E402
from . import analog  # noqa: E402

__all__ += ["analog_mvm", "analog"]
from .ops.pararnn import NewtonInfo, newton_solve, pararnn

__all__ += ["NewtonInfo", "newton_solve", "pararnn"]
