"""Discovery of the case modules in ``nlseq.bench.cases`` (one module per op family).

A module that fails to import, or whose ``cases()`` raises, does not stop the run: it becomes an
ERROR row carrying the exception, so one broken family cannot hide the others' results.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch

from . import cases as _cases_pkg
from .case import Case


@dataclass
class Family:
    name: str
    module: Optional[ModuleType]
    error: str = ""  # import error, when module is None


def _short_error(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def family_names() -> list[str]:
    """Names of the modules in nlseq.bench.cases (without importing them), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(_cases_pkg.__path__) if not m.name.startswith("_"))


def discover(families: Optional[list[str]] = None) -> list[Family]:
    """Import the case modules (all, or those named in ``families``)."""
    names = family_names()
    if families:
        unknown = sorted(set(families) - set(names))
        if unknown:
            raise ValueError(f"unknown family {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in families]
    found = []
    for name in names:
        try:
            module = importlib.import_module(f"{_cases_pkg.__name__}.{name}")
        except Exception as e:  # reported as an ERROR row by the runner
            found.append(Family(name, None, _short_error(e)))
            continue
        if not callable(getattr(module, "cases", None)):
            found.append(Family(name, None, f"module {module.__name__} has no cases(device, quick) function"))
            continue
        found.append(Family(getattr(module, "FAMILY", name), module))
    return found


def collect(family: Family, device: torch.device, quick: bool) -> tuple[list[Case], str]:
    """The family's cases for ``device``, or ([], error) when the module or its cases() failed."""
    if family.module is None:
        return [], family.error
    try:
        cases = list(family.module.cases(device, quick))
    except Exception as e:
        return [], _short_error(e)
    bad = [c for c in cases if not isinstance(c, Case)]
    if bad:
        return [], f"{family.name}.cases() returned {type(bad[0]).__name__}, expected nlseq.bench.Case"
    return cases, ""
