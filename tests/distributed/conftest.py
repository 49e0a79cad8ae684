"""tests/distributed: multi-process tests over gloo (see _harness.py). Skipped where gloo is absent."""

from __future__ import annotations

import os
import sys

import pytest
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))  # `import _harness` in the test files and in spawned ranks

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)
