"""Triton kernels of nlseq, one module per op family (scan, pararnn, softplus_attention, analog).

Installed as ``nlseq.kernels`` (python/nlseq/kernels is a link to this folder). Modules here
import triton at import time; the package imports them lazily, only when the triton backend runs.
Under ``TRITON_INTERPRET=1`` they run on CPU tensors, one config, no libdevice.
"""
