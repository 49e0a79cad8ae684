"""Run a function on P gloo ranks in fresh processes and return what each rank returned.

    results = run_ranks(fn, world_size, *args)      # fn(rank, world_size, *args) -> picklable

- spawn start method, gloo, a ``file://`` rendezvous in a fresh temporary folder (no ports);
- every rank runs with ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``;
- an exception on any rank fails the call with every failing rank's traceback;
- a rank still running after ``timeout`` seconds (a hang in a collective) is killed and the call
  fails saying which ranks hung, so a test never hangs CI.

Starting P processes costs a few seconds (each imports torch and nlseq): run many cases in one
call (``fn`` loops over them) rather than one call per case. ``fn`` must be a module-level function
of an importable module (the children get the parent's ``sys.path``).
"""

from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import time
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, fn: Callable, args: tuple, kwargs: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=90),
        )
        try:
            result = {"ok": True, "value": fn(rank, world_size, *args, **kwargs)}
        finally:
            dist.destroy_process_group()
    except BaseException:  # reported to the parent, which fails the test with it
        result = {"ok": False, "error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_ranks(fn: Callable, world_size: int, *args: Any, timeout: float = 150.0, **kwargs: Any) -> list[Any]:
    """``[fn(r, world_size, *args, **kwargs) for r in range(world_size)]``, each on its own gloo rank."""
    with tempfile.TemporaryDirectory(prefix="nlseq-dist-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        ctx = mp.start_processes(
            _worker,
            args=(world_size, init_file, tmp, fn, args, kwargs),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        while not all(not p.is_alive() for p in ctx.processes):
            if time.monotonic() > deadline:
                hung = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                for p in ctx.processes:
                    p.join(5)
                raise AssertionError(f"ranks {hung} of {world_size} did not finish within {timeout:.0f} s (a hang?)")
            time.sleep(0.05)
        for p in ctx.processes:
            p.join()
        results, errors = [], []
        for r in range(world_size):
            path = os.path.join(tmp, f"rank{r}.pkl")
            if not os.path.exists(path):
                errors.append(f"rank {r}: exited with code {ctx.processes[r].exitcode} and no result")
                results.append(None)
                continue
            with open(path, "rb") as f:
                res = pickle.load(f)
            if res["ok"]:
                results.append(res["value"])
            else:
                errors.append(f"rank {r}:\n{res['error']}")
                results.append(None)
        if errors:
            raise AssertionError("distributed run failed:\n" + "\n".join(errors))
        return results
