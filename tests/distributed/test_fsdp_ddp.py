"""Every nlseq module trains under FSDP2 (fully_shard on a CPU DeviceMesh, gloo) and under DDP with the
gradients and parameters of single-process training on the whole batch.

Each rank builds the same model from one seed, trains a single-process copy on the global batch
(loss = sum over the batch / global batch size), and the wrapped copy on its half (local loss /
local batch size; DDP and FSDP2 average over ranks); after each of two SGD steps it compares every
gradient (FSDP2: the full tensor of each sharded gradient) and every parameter. float64 modules at
1e-12 relative; the analog modules run float32 only (nlseq.analog_mvm), so theirs are compared at
float32 rounding (2e-6 relative). Analog modules train with programming noise on (every rank and
the reference draw the same programming noise from the module's own generator) and read / output
noise off (it is drawn per row of the local batch, so a rank's rows get other draws than the same
rows in one process; see docs/distributed.md).
"""

from __future__ import annotations

import copy

import torch
from _harness import run_ranks

F64 = torch.float64


def _builders():
    from nlseq.analog.config import CrossbarConfig
    from nlseq.nn import AnalogGRU, AnalogLinear, AnalogLSTM, ParaGRU, ParaLSTM, SoftplusAttention

    cfg = CrossbarConfig(read_noise=0.0, out_noise=0.0)  # programming noise stays on (default 0.02)
    B, T, I = 4, 6, 4
    seq = lambda dt: (B, T, I)  # noqa: E731
    return {
        # name: (constructor, input shape, dtype, output -> tensor)
        "ParaGRU": (lambda: ParaGRU(I, 6, heads=2, dtype=F64, backend="cpp"), seq(F64), F64, lambda o: o[0]),
        "ParaLSTM": (lambda: ParaLSTM(I, 4, heads=1, dtype=F64, backend="cpp"), seq(F64), F64, lambda o: o[0]),
        "SoftplusAttention": (lambda: SoftplusAttention(8, 2, dtype=F64), (B, T, 8), F64, lambda o: o[0]),
        "AnalogLinear": (lambda: AnalogLinear(I, 5, config=cfg), (B, I), torch.float32, lambda o: o),
        "AnalogLSTM": (
            lambda: AnalogLSTM(I, 3, batch_first=True, config=cfg),
            seq(None),
            torch.float32,
            lambda o: o[0],
        ),
        "AnalogGRU": (
            lambda: AnalogGRU(I, 3, num_layers=2, batch_first=True, config=cfg),
            seq(None),
            torch.float32,
            lambda o: o[0],
        ),
    }


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _rel_err(got, want):
    got, want = _full(got).detach(), want.detach()
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)


def _train_and_compare(rank, P):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.nn.parallel import DistributedDataParallel as DDP

    mesh = init_device_mesh("cpu", (P,))
    report = {}
    for name, (make, shape, dtype, pick) in _builders().items():
        for wrap in ("ddp", "fsdp2"):
            torch.manual_seed(3)
            ref = make()
            model = copy.deepcopy(ref)  # same parameters and the same (copied) noise generator state
            model = DDP(model) if wrap == "ddp" else fully_shard(model, mesh=mesh)
            opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            tol = 1e-12 if dtype == F64 else 2e-6
            worst = 0.0
            for step in range(2):
                g = torch.Generator().manual_seed(50 + step)
                x = torch.randn(*shape, generator=g, dtype=dtype)
                out_ref = pick(ref(x))
                w = torch.randn(out_ref.shape, generator=g, dtype=dtype)
                ((out_ref * w).sum() / x.shape[0]).backward()
                Bl = x.shape[0] // P
                lo = rank * Bl
                out = pick(model(x[lo : lo + Bl]))
                ((out * w[lo : lo + Bl]).sum() / Bl).backward()
                for (pn, p_ref), p in zip(ref.named_parameters(), model.parameters()):
                    e = _rel_err(p.grad, p_ref.grad)
                    worst = max(worst, e)
                    if not e <= tol:
                        raise AssertionError(f"{name} {wrap} step {step}: grad of {pn} off by {e:.2e} (tol {tol})")
                opt_ref.step()
                opt.step()
                opt_ref.zero_grad()
                opt.zero_grad()
                for (pn, p_ref), p in zip(ref.named_parameters(), model.parameters()):
                    e = _rel_err(p, p_ref)
                    if not e <= tol:
                        raise AssertionError(f"{name} {wrap} step {step}: parameter {pn} off by {e:.2e} after SGD")
            if name.startswith("Analog"):
                # eval: program() is a method other than forward; under FSDP2 it must be registered
                # so that it runs on the unsharded parameters (docs/distributed.md, pitfalls)
                if wrap == "fsdp2":
                    register_fsdp_forward_method(model, "program")
                model.eval()
                ref.eval()
                (model.module if wrap == "ddp" else model).program()
                ref.program()
                with torch.no_grad():
                    e = _rel_err(pick(model(x)), pick(ref(x)))
                if not e <= tol:
                    raise AssertionError(f"{name} {wrap}: eval output off by {e:.2e} after program()")
            report[(name, wrap)] = worst
    report["mixed_precision"] = _mixed_precision(rank, P, mesh)
    dist.barrier()
    return report


def _mixed_precision(rank, P, mesh):
    """FSDP2 with param_dtype=bfloat16: ParaGRU and AnalogLinear train, with float32 gradients within
    bf16 rounding of single-process float32 training."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from nlseq.analog.config import CrossbarConfig
    from nlseq.nn import AnalogLinear, ParaGRU

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    torch.manual_seed(5)
    ref = ParaGRU(4, 8, heads=2, backend="cpp")
    model = fully_shard(copy.deepcopy(ref), mesh=mesh, mp_policy=policy)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 16, 4, generator=g)
    w = torch.randn(4, 16, 8, generator=g)
    (ref(x)[0] * w).sum().div(4).backward()
    lo = rank * 2
    y = model(x[lo : lo + 2])[0]
    assert y.dtype == torch.bfloat16, y.dtype
    (y.float() * w[lo : lo + 2]).sum().div(2).backward()
    worst = 0.0
    for (name, p_ref), p in zip(ref.named_parameters(), model.parameters()):
        assert p.grad.dtype == torch.float32, (name, p.grad.dtype)
        e = _rel_err(p.grad, p_ref.grad)
        worst = max(worst, e)
        if not e <= 5e-2:  # bf16 parameters and inputs: 2^-8 per rounding, through a 16-step recurrence
            raise AssertionError(f"ParaGRU fsdp2 bf16: grad of {name} off by {e:.2e}")
    # the analog modules program their crossbar in float32 from the bf16 parameters and take bf16 inputs
    torch.manual_seed(6)
    ref = AnalogLinear(4, 4, config=CrossbarConfig(read_noise=0.0, out_noise=0.0, prog_noise=0.0))
    model = fully_shard(copy.deepcopy(ref), mesh=mesh, mp_policy=policy)
    xa = torch.randn(4, 4, generator=g)
    wa = torch.randn(4, 4, generator=g)
    (ref(xa) * wa).sum().div(4).backward()
    ya = model(xa[lo : lo + 2])
    assert ya.dtype == torch.bfloat16, ya.dtype
    (ya.float() * wa[lo : lo + 2]).sum().div(2).backward()
    for (name, p_ref), p in zip(ref.named_parameters(), model.parameters()):
        assert p.grad.dtype == torch.float32, (name, p.grad.dtype)
        e = _rel_err(p.grad, p_ref.grad)
        worst = max(worst, e)
        if not e <= 5e-2:
            raise AssertionError(f"AnalogLinear fsdp2 bf16: grad of {name} off by {e:.2e}")
    return worst


def test_every_module_trains_under_ddp_and_fsdp2_like_one_process():
    res = run_ranks(_train_and_compare, 2)
    names = set(_builders())
    for rank_report in res:
        assert rank_report.pop("mixed_precision") <= 5e-2
        assert {n for n, _ in rank_report} == names
        assert {w for _, w in rank_report} == {"ddp", "fsdp2"}
