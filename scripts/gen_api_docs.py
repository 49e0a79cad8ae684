"""Write docs/api.md from the docstrings and signatures of nlseq's public API.

    PYTHONPATH=python python scripts/gen_api_docs.py            # rewrite docs/api.md
    PYTHONPATH=python python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is stale

The public API is what the packages below export in ``__all__`` (plus the few names listed in
EXTRA); a docstring change shows up in docs/api.md after running this script, and
tests/test_package.py fails while the two disagree. Importing the optional integrations never
imports transformers, so this runs without it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

# (module, title, names or None for the module's __all__)
SECTIONS = [
    (
        "nlseq",
        "Ops and backends (`nlseq`)",
        ["linear_recurrence", "pararnn", "newton_solve", "NewtonInfo", "softplus_attention", "analog_mvm", "backends"],
    ),
    (
        "nlseq.nn",
        "Modules (`nlseq.nn`)",
        ["ParaGRU", "ParaLSTM", "SoftplusAttention", "AnalogLinear", "AnalogLSTM", "AnalogGRU"],
    ),
    ("nlseq.analog", "Analog crossbars and NL-ADCs (`nlseq.analog`)", None),
    (
        "nlseq.registry",
        "Backend registry (`nlseq.registry`)",
        ["BackendStatus", "backend_status", "resolve", "triton_interpret", "build_info", "AUTO_ORDER"],
    ),
    ("nlseq.distributed", "Distributed helpers (`nlseq.distributed`)", None),
    ("nlseq.integrations.transformers", "Hugging Face integration (`nlseq.integrations.transformers`)", ["register"]),
]

HEADER = """# API reference

Generated from the docstrings by `scripts/gen_api_docs.py`; do not edit by hand (run
`PYTHONPATH=python python scripts/gen_api_docs.py` after changing a docstring). The equations
behind each op are in [spec.md](spec.md), the backends and dtypes each op accepts in
[support.md](support.md).

Every op takes `backend="auto" | "cuda" | "triton" | "cpp" | "reference"`; `nlseq.backends()`
reports which can run here and why not.
"""


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "(no docstring)"


def _fence(text: str) -> str:
    return "```text\n" + text + "\n```"


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties defined by the class itself (not inherited from torch)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, value))
    return out


def _entry(module: str, name: str, obj) -> list[str]:
    lines = []
    if inspect.isclass(obj):
        lines += [
            f"### `{module}.{name}`",
            "",
            f"```python\nclass {name}{_signature(obj)}\n```",
            "",
            _fence(_doc(obj)),
            "",
        ]
        for mname, member in _members(obj):
            if not inspect.getdoc(member):
                continue  # undocumented helpers and dataclass-style properties stay out
            if isinstance(member, property):
                lines += [f"#### `{name}.{mname}` (property)", "", _fence(_doc(member)), ""]
            else:
                lines += [
                    f"#### `{name}.{mname}`",
                    "",
                    f"```python\n{mname}{_signature(member)}\n```",
                    "",
                    _fence(_doc(member)),
                    "",
                ]
    elif callable(obj):
        lines += [f"### `{module}.{name}`", "", f"```python\n{name}{_signature(obj)}\n```", "", _fence(_doc(obj)), ""]
    else:
        lines += [f"### `{module}.{name}`", "", f"```python\n{name} = {obj!r}\n```", ""]
    return lines


def render() -> str:
    lines = [HEADER]
    lines.append("## Contents\n")
    for _module, title, _ in SECTIONS:
        anchor = title.lower()
        for ch in "`().,":
            anchor = anchor.replace(ch, "")
        lines.append(f"- [{title}](#{anchor.replace(' ', '-')})")
    lines.append("")
    for module, title, names in SECTIONS:
        mod = importlib.import_module(module)
        lines += [f"## {title}", ""]
        mod_doc = inspect.getdoc(mod)
        if mod_doc and module != "nlseq":
            lines += [_fence(mod_doc), ""]
        for name in names if names is not None else mod.__all__:
            lines += _entry(module, name, getattr(mod, name))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs from the docstrings")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(
                f"{OUT.relative_to(ROOT)} is stale: run PYTHONPATH=python python scripts/gen_api_docs.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
