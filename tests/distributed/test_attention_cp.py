"""nlseq.distributed.softplus_attention over real gloo ranks against the single-process op.

Every rank builds the full float64 inputs from one seed, runs the context-parallel op on its shard
and compares its rows of o and its shards of dq, dk, dv with the single-process op on the full
tensors (relative error <= 1e-12; torch.equal where the strategy is exact). Many cases run in one
spawn per world size (starting ranks costs seconds); each rank returns a list of failures.
"""

from __future__ import annotations

import itertools
import os
import time

import pytest
import torch
import torch.distributed as dist
from _harness import run_ranks

import nlseq
from nlseq import registry
from nlseq.distributed import shard
from nlseq.distributed import softplus_attention as cp_attention

RTOL = 1e-12
# float32 / bfloat16 inputs: both sides accumulate in float32 in another order, then round o and the
# gradients to the input dtype (bfloat16: 8 bits of mantissa, one rounding step is 2^-8 ≈ 4e-3)
RTOL_LOW = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}
CPP = bool(registry.backend_status("cpp"))
BACKEND = "cpp" if CPP else "reference"


# ------------------------------------------------------------------------------ helpers (run on ranks)
def _inputs(T, H, Hkv, D, seed, same_keys=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, T, D, generator=g, dtype=torch.float64)
    w = torch.randn(1, H, T, D, generator=g, dtype=torch.float64)  # loss = Σ w·o
    if same_keys:  # LSSAR rows whose re-weighted weights are all zero (identical keys: base = 0)
        k = k[:, :, :1].expand_as(k).contiguous()
    return q, k, v, w


def _local(x, rank, P, layout, split):
    if split is None:
        return shard(x, dim=2, layout=layout, rank=rank, world_size=P)[0]
    cuts = [0] + list(itertools.accumulate(split))
    return x[:, :, cuts[rank] : cuts[rank + 1]]


def _rel(a, b):
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / max(scale, 1e-300) if b.numel() else 0.0


class _Counter:
    """Counts the collectives the op issues (patched into torch.distributed on this rank)."""

    NAMES = (
        "all_gather",
        "all_to_all_single",
        "reduce_scatter_single",
        "reduce_scatter_tensor",
        "batch_isend_irecv",
        "all_reduce",
        "broadcast",
        "all_gather_object",
    )

    def __init__(self):
        self.counts = dict.fromkeys(self.NAMES, 0)
        self.orig = {n: getattr(dist, n) for n in self.NAMES if hasattr(dist, n)}
        for n in self.orig:
            setattr(dist, n, self._wrap(n))

    def _wrap(self, name):
        def f(*a, **kw):
            self.counts[name] += 1
            return self.orig[name](*a, **kw)

        return f

    def take(self):
        c = {k: v for k, v in self.counts.items() if v}
        self.counts = dict.fromkeys(self.NAMES, 0)
        return c

    def restore(self):
        for n, f in self.orig.items():
            setattr(dist, n, f)


def _expected_counts(strategy, P, reweight):
    if strategy == "all_gather":
        rs = "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
        return {"all_gather": 2}, {rs: 1}
    if strategy == "all_to_all":
        return {"all_gather": 1, "all_to_all_single": 2}, {"all_to_all_single": 2}
    fwd = {"all_gather": 1}
    hops = (P - 1) * (2 if reweight else 1)
    if hops:
        fwd["batch_isend_irecv"] = hops
    bwd = {"batch_isend_irecv": (P - 1) * (2 if reweight else 1) + P} if P > 1 else {}
    return fwd, bwd


def _run_case(rank, P, c, counter):
    T, H, Hkv, D = c["T"], c.get("H", 8), c.get("Hkv", 2), c.get("D", 8)
    q, k, v, w = _inputs(T, H, Hkv, D, c.get("seed", 0), c.get("same_keys", False))
    dtype = c.get("dtype", torch.float64)
    q, k, v, w = (t.to(dtype) for t in (q, k, v, w))
    rtol = RTOL_LOW.get(dtype, RTOL)
    if c.get("rows") is not None:  # a loss on a few rows only
        mask = torch.zeros(T, dtype=dtype)
        mask[c["rows"]] = 1.0
        w = w * mask[:, None]
    cu = None if c.get("cu") is None else torch.tensor(c["cu"])
    layout, split = c.get("layout", "contiguous"), c.get("split")
    p, causal, backend = c.get("p"), c.get("causal", True), c.get("backend", BACKEND)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o_full = nlseq.softplus_attention(
        *leaves, causal=causal, reweight_p=p, cu_seqlens_q=cu, cu_seqlens_k=cu, backend=backend
    )
    (o_full * w).sum().backward()
    expect = [
        _local(t, rank, P, layout, split) for t in (o_full.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad)
    ]
    runs = []
    for _ in range(2 if c.get("twice") else 1):
        loc = [_local(t, rank, P, layout, split).clone().requires_grad_() for t in (q, k, v)]
        counter.take()
        o = cp_attention(
            *loc, strategy=c["strategy"], layout=layout, causal=causal, reweight_p=p, cu_seqlens=cu, backend=backend
        )
        fwd_counts = counter.take()
        (o * _local(w, rank, P, layout, split)).sum().backward()
        bwd_counts = counter.take()
        runs.append([o.detach(), loc[0].grad, loc[1].grad, loc[2].grad])
    failures = []
    name = c["name"]
    for what, got, exp in zip(("o", "dq", "dk", "dv"), runs[0], expect):
        if what == "dq" and c.get("same_keys"):
            # identical keys: the exact dq is 0 (moving q moves every score alike and the weights
            # stay uniform); both sides are rounding noise, so bound them by the other gradients
            scale = max(expect[2].abs().max().item(), expect[3].abs().max().item())
            if max(got.abs().max().item(), exp.abs().max().item()) > RTOL * scale:
                failures.append(f"{name}: dq is not ~0 (max {got.abs().max().item():.2e}, scale {scale:.2e})")
            continue
        if got.shape != exp.shape:
            failures.append(f"{name}: {what} shape {tuple(got.shape)} != {tuple(exp.shape)}")
        elif c.get("exact") and not torch.equal(got, exp):
            failures.append(f"{name}: {what} not bitwise equal (rel err {_rel(got, exp):.2e})")
        elif got.dtype != exp.dtype:
            failures.append(f"{name}: {what} dtype {got.dtype} != {exp.dtype}")
        elif _rel(got.double(), exp.double()) > rtol:
            failures.append(f"{name}: {what} rel err {_rel(got.double(), exp.double()):.2e} > {rtol}")
    if c.get("nonzero_grads") and not all(bool(g.abs().max() > 0) for g in runs[0][2:]):
        failures.append(f"{name}: dk/dv are zero on rank {rank}, which owns no loss row")
    if len(runs) == 2 and not all(torch.equal(a, b) for a, b in zip(runs[0], runs[1])):
        failures.append(f"{name}: two runs differ")
    want_f, want_b = _expected_counts(c["strategy"], P, p is not None)
    if c.get("count", True) and (fwd_counts, bwd_counts) != (want_f, want_b):
        failures.append(f"{name}: collectives fwd {fwd_counts} bwd {bwd_counts}, expected {want_f} {want_b}")
    return failures


def _run_error(rank, P, c):
    T, H, Hkv, D = c["T"], c.get("H", 8), c.get("Hkv", 2), c.get("D", 8)
    q, k, v, _ = _inputs(T, H, Hkv, D, 0)
    loc = [_local(t, rank, P, c.get("layout", "contiguous"), c.get("split")) for t in (q, k, v)]
    if c.get("mutate"):
        loc = MUTATORS[c["mutate"]](rank, P, loc)
    try:
        cp_attention(*loc, strategy=c["strategy"], layout=c.get("layout", "contiguous"), backend=BACKEND)
    except (ValueError, TypeError, NotImplementedError) as e:
        want = c["match"][rank] if isinstance(c["match"], dict) else c["match"]
        if want not in str(e):
            return [f"{c['name']}: rank {rank} raised {type(e).__name__}({e}), expected a message with {want!r}"]
        return []
    return [f"{c['name']}: rank {rank} did not raise"]


def _rank_main(rank, P, cases, errors, extras=()):
    counter = _Counter()
    failures = []
    try:
        for name in extras:  # checks of their own (module, transformers, missing kernels)
            failures += EXTRA_CHECKS[name](rank, P)
        for c in errors:  # bad input first: every rank must raise, and the group must stay usable
            failures += _run_error(rank, P, c)
        for c in cases:
            t0 = time.perf_counter()
            failures += _run_case(rank, P, c, counter)
            c["seconds"] = time.perf_counter() - t0
            if os.environ.get("NLSEQ_CP_TEST_TIMES") and rank == 0:
                print(f"{c['name']}: {c['seconds']:.2f} s", flush=True)
    finally:
        counter.restore()
    return failures


# ------------------------------------------------------------------------------ case lists
def _matrix(P, T, strategies, ps=(None, 1.0, 2.0, 15.0)):
    cases = []
    for strategy, causal, layout, p in itertools.product(strategies, (True, False), ("contiguous", "zigzag"), ps):
        cases.append(
            dict(
                name=f"{strategy}/{'causal' if causal else 'full'}/{layout}/p={p}",
                strategy=strategy,
                causal=causal,
                layout=layout,
                p=p,
                T=T,
                exact=(strategy == "all_to_all"),
            )
        )
    return cases


def _extra(P, T):
    """Cases beyond the matrix: MQA, varlen, loss on a few rows, uneven shards, all-zero rows, reference."""
    out = []
    for s in ("all_gather", "ring"):
        out.append(dict(name=f"{s}/MQA/p=2", strategy=s, T=T, Hkv=1, p=2.0, layout="zigzag"))
        out.append(dict(name=f"{s}/uneven", strategy=s, T=T + 3, split=[1] * (P - 1) + [T + 3 - (P - 1)], p=15.0))
        out.append(dict(name=f"{s}/one token per rank", strategy=s, T=P, p=1.0, twice=True))
        out.append(dict(name=f"{s}/same keys (all-zero LSSAR rows)", strategy=s, T=T, p=15.0, same_keys=True))
        out.append(dict(name=f"{s}/reference backend", strategy=s, T=T, p=15.0, layout="zigzag", backend="reference"))
        for dt in (torch.float32, torch.bfloat16):
            out.append(dict(name=f"{s}/{dt}", strategy=s, T=T, p=15.0, layout="zigzag", dtype=dt))
            out.append(dict(name=f"{s}/{dt}/LSSA", strategy=s, T=T, layout="zigzag", dtype=dt))
    for s in ("all_gather", "all_to_all", "ring"):
        heads = dict(H=2 * P, Hkv=P) if s == "all_to_all" else {}  # all_to_all: P | Hkv
        for causal, p in ((True, None), (True, 15.0), (False, 2.0)):
            out.append(
                dict(
                    name=f"{s}/varlen/{causal}/p={p}",
                    strategy=s,
                    T=4 * P,
                    causal=causal,
                    p=p,
                    cu=[0, 1, 3, 3 * P - 1, 4 * P],
                    layout="zigzag" if s != "ring" else "contiguous",
                    **heads,
                )
            )
        out.append(
            dict(
                name=f"{s}/loss on the last rows",
                strategy=s,
                T=4 * P,
                rows=[4 * P - 2, 4 * P - 1],
                p=15.0,
                nonzero_grads=True,
                twice=True,
                **heads,
            )
        )
    return out


def _bad_rank0(r, P, xs):
    return [xs[0][0]] + xs[1:] if r == 0 else xs  # 3-D q on rank 0 only


def _other_D(r, P, xs):
    return [x[..., :4] for x in xs] if r == P - 1 else xs  # the last rank has another head dim


MUTATORS = {"bad_rank0": _bad_rank0, "other_D": _other_D}


def _errors(P, T):
    errs = [
        dict(
            name="a bad tensor on one rank",
            strategy="all_gather",
            T=T,
            mutate="bad_rank0",
            match={0: "must be 4-D", **{r: "rank(s) [0] rejected their inputs" for r in range(1, P)}},
        ),
        dict(name="mismatched head dims", strategy="ring", T=T, mutate="other_D", match="same D"),
        dict(
            name="uneven shards for all_to_all",
            strategy="all_to_all",
            T=T + 1,
            split=[1] * (P - 1) + [T + 1 - (P - 1)],
            H=2 * P,
            Hkv=P,
            match="equal length",
        ),
        dict(
            name="zigzag shards of the wrong lengths",
            strategy="all_gather",
            layout="zigzag",
            T=T + 1,
            split=[1] * (P - 1) + [T + 1 - (P - 1)],
            match="layout='zigzag'",
        ),
    ]
    if 2 % P != 0:  # Hkv = 2 heads cannot be split over P ranks
        errs.append(dict(name="P does not divide Hkv", strategy="all_to_all", T=T, match="divide the number"))
    return errs


# ------------------------------------------------------------------------------ tests
def _check(P, cases, errors, extras=()):
    results = run_ranks(_rank_main, P, cases, errors, extras, timeout=300.0)
    failures = [f for r in results for f in r]
    assert not failures, "\n".join(failures)


def test_two_ranks_every_strategy_and_case_module_and_transformers():
    P, T = 2, 12
    cases = _matrix(P, T, ("all_gather", "all_to_all", "ring")) + _extra(P, T)
    if registry.backend_status("triton"):  # the single-device op on Triton (interpreted on CPU: tests/conftest.py)
        cases += [
            dict(
                name=f"{s}/triton/p={p}",
                strategy=s,
                T=8,
                H=4,
                Hkv=2,
                p=p,
                layout="zigzag",
                dtype=torch.float32,
                backend="triton",
            )
            for s in ("all_gather", "all_to_all")
            for p in (None, 15.0)
        ]
    _check(P, cases, _errors(P, T), extras=("ring_backend_missing", "module_and_hf"))


def test_three_ranks_a_middle_rank():
    P, T = 3, 13
    cases = _matrix(P, T, ("all_gather", "ring"), ps=(None, 15.0))
    cases += [
        dict(
            name="all_to_all/H=6,Hkv=3", strategy="all_to_all", T=12, H=6, Hkv=3, p=p, causal=c, layout=lay, exact=True
        )
        for p, c, lay in ((None, True, "zigzag"), (15.0, False, "contiguous"), (2.0, True, "contiguous"))
    ]
    _check(P, cases + _extra(P, T), _errors(P, T))


def test_four_ranks():
    P, T = 4, 16
    cases = _matrix(P, T, ("all_gather", "ring"), ps=(None, 15.0))
    cases += [
        dict(name="all_to_all/H=8,Hkv=4", strategy="all_to_all", T=16, H=8, Hkv=4, p=15.0, layout="zigzag", exact=True)
    ]
    cases += [c for c in _extra(P, T) if "varlen" in c["name"] or "one token" in c["name"]]
    _check(P, cases, _errors(P, T))


def _ring_backend_missing(rank, P):
    from nlseq.ops import softplus_attention as ops

    saved, ops.PARTIAL_FWD = ops.PARTIAL_FWD, {}  # a backend without the partial kernels (Triton today)
    try:
        q = torch.zeros(1, 2, 3, 4)
        cp_attention(q, q, q, strategy="ring")
    except NotImplementedError as e:
        return [] if "strategy='ring' runs on the backends" in str(e) else [f"ring without kernels: {e}"]
    finally:
        ops.PARTIAL_FWD = saved
    return ["ring without partial kernels did not raise"]


def test_without_a_process_group_it_says_so():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="not initialised"):
        cp_attention(q, q, q)


# ------------------------------------------------------------------------------ module and transformers
def _module_and_hf(rank, P):
    from nlseq.nn import SoftplusAttention

    out = []
    torch.manual_seed(0)
    full = SoftplusAttention(16, 4, 2, reweight_p=15.0, backend=BACKEND, dtype=torch.float64)
    cp = SoftplusAttention(
        16,
        4,
        2,
        reweight_p=15.0,
        backend=BACKEND,
        dtype=torch.float64,
        context_parallel_group=dist.group.WORLD,
        cp_strategy="ring",
        cp_layout="zigzag",
    )
    cp.load_state_dict(full.state_dict())
    x = torch.randn(1, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_full, _ = full(x)
    x_loc, sh = shard(x, dim=1, layout="zigzag")
    y, cache = cp(x_loc)
    out.append(_rel(y, y_full[:, sh.positions()]) <= RTOL)
    # decoding after a context-parallel prefill: the gathered cache on every rank, single-device op
    _, (k_full, v_full) = full(x)
    k_all, v_all = cp.gather_kv_cache(cache)
    out.append(torch.equal(k_all, k_full) and torch.equal(v_all, v_full))
    x_new = torch.randn(1, 1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out.append(_rel(cp(x_new, (k_all, v_all))[0], full(x_new, (k_full, v_full))[0]) <= RTOL)

    try:
        import transformers  # noqa: F401
    except ImportError:
        return out + ["no transformers"]
    from transformers import AutoModelForCausalLM, LlamaConfig

    import nlseq.distributed.hf as cp_hf
    import nlseq.integrations.transformers as nlseq_hf

    nlseq_hf.register(backend=BACKEND)
    cp_hf.register(strategy="ring", layout="zigzag", backend=BACKEND)
    cfg = dict(
        vocab_size=37,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        lssar_p=15.0,
    )
    torch.manual_seed(0)
    ref_model = AutoModelForCausalLM.from_config(
        LlamaConfig(**cfg), attn_implementation="lssar", torch_dtype=torch.float64
    )
    torch.manual_seed(0)
    cp_model = AutoModelForCausalLM.from_config(
        LlamaConfig(**cfg), attn_implementation="lssar_cp", torch_dtype=torch.float64
    )
    ids = torch.randint(0, 37, (1, 14), generator=torch.Generator().manual_seed(3))
    logits = ref_model(ids).logits
    ids_loc, sh = shard(ids, dim=1, layout="zigzag")
    logits_loc = cp_model(input_ids=ids_loc, position_ids=sh.positions()[None]).logits
    out.append(_rel(logits_loc, logits[:, sh.positions()]) <= RTOL)
    # parameter gradients: each rank's share, all-reduced, equals the single-process gradient
    logits.sum().backward()
    logits_loc.sum().backward()
    wq_ref = ref_model.model.layers[0].self_attn.q_proj.weight.grad
    wq = cp_model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    dist.all_reduce(wq)
    out.append(_rel(wq, wq_ref) <= RTOL)
    return out


def _module_and_hf_check(rank, P):
    res = _module_and_hf(rank, P)
    names = ["module output", "gathered cache", "decoding with the gathered cache", "HF logits", "HF gradient"]
    return [f"{n}: mismatch on rank {rank}" for n, ok in zip(names, res) if ok is not True and ok != "no transformers"]


EXTRA_CHECKS = {"ring_backend_missing": _ring_backend_missing, "module_and_hf": _module_and_hf_check}
