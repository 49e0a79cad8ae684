"""Lets ``pytest benchmarks/ --benchmark-only`` find the ``bench_*.py`` suites.

Their names do not match ``test_*.py`` on purpose, so the normal test run (testpaths = tests, or
``pytest .``) never collects them; they are collected only when this folder (or the file itself)
is named on the command line.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and parent.session.isinitpath(file_path.parent)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
