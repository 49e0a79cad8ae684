"""One way for the experiments to write what they found: results.json, results.md and a figure."""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable


def write_results(
    out_dir: str, here: str, results: dict, md: str, figure: str, draw: Callable[[str], None], publish: bool
) -> None:
    """Write ``results`` (JSON), ``md`` and the figure ``draw(path)`` makes into ``out_dir``; with
    ``publish``, copy the three over the committed ones in the experiment's folder ``here``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
    draw(os.path.join(out_dir, figure))
    if publish:
        for name in ("results.json", "results.md", figure):
            shutil.copy(os.path.join(out_dir, name), os.path.join(here, name))
    print(md)
