"""A byte-level ParaGRU language model trained with data parallel x sequence parallel (docs/distributed.md).

    torchrun --nproc_per_node 2 examples/pararnn_lm_sp.py                 # sp 2 x dp 1 (CPU: gloo)
    torchrun --nproc_per_node 2 examples/pararnn_lm_sp.py --sp 1          # sp 1 x dp 2
    torchrun --nproc_per_node 8 examples/pararnn_lm_sp.py --sp 4 --seq-len 8192   # GPUs: nccl

The world is a 2-D DeviceMesh ("dp", "sp"): the ranks of one "sp" row hold consecutive pieces of
the same sequences (ParaGRU(sequence_parallel_group=mesh["sp"])), the "dp" rows hold different
sequences (DistributedDataParallel over mesh["dp"] when dp > 1). Every parameter's gradient is
made complete over the sp row (ParaGRU does it itself; the embedding, norms and head get one
all_reduce over sp here), so DDP then averages over dp as usual.

Prints, every --log-every steps: the loss (mean over every token of the step), tokens/s (all
ranks), and the bytes each rank sent that step (nlseq.distributed.CommCounter: every c10d
collective of the step, ours, the sp all_reduce below and DDP's gradient buckets). The device is CUDA (nccl) when available,
else the CPU (gloo). Data: --data PATH, else this repository's own text (README.md, docs/*.md,
python/**/*.py); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

from nlseq.distributed import CommCounter  # noqa: E402
from nlseq.nn import ParaGRU  # noqa: E402


class ByteLM(nn.Module):
    """Embedding → L × (x + ParaGRU(RMSNorm(x))) → RMSNorm → Linear(256)."""

    def __init__(self, width: int, layers: int, heads: int, sp_group, strategy: str, dtype):
        super().__init__()
        self.embed = nn.Embedding(256, width, dtype=dtype)
        self.norms = nn.ModuleList([nn.RMSNorm(width, dtype=dtype) for _ in range(layers)])
        self.rnns = nn.ModuleList(
            [
                ParaGRU(width, width, heads=heads, sequence_parallel_group=sp_group, sp_strategy=strategy, dtype=dtype)
                for _ in range(layers)
            ]
        )
        self.norm = nn.RMSNorm(width, dtype=dtype)
        self.head = nn.Linear(width, 256, dtype=dtype)

    def forward(self, tokens):  # tokens [B, T_local] int64 → logits [B, T_local, 256]
        x = self.embed(tokens)
        for norm, rnn in zip(self.norms, self.rnns):
            x = x + rnn(norm(x))[0]
        return self.head(self.norm(x))

    def local_parameters(self):
        """Parameters used on this rank's piece only: their gradients are summed over sp here."""
        return [p for n, p in self.named_parameters() if ".rnns." not in f".{n}"]


def load_bytes(path: str | None) -> torch.Tensor:
    if path:
        data = Path(path).read_bytes()
    else:
        files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "python").rglob("*.py"))]
        data = b"\n".join(f.read_bytes() for f in files if f.is_file())
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sp", type=int, default=0, help="sequence-parallel size (default: the whole world)")
    p.add_argument("--strategy", default="all_to_all", choices=("all_to_all", "state"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="sequences per data-parallel replica")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--data", default=None, help="a file of text (default: this repository's own text)")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
    device = torch.device("cuda") if cuda else torch.device("cpu")
    sp = args.sp or world
    if world % sp:
        raise SystemExit(f"pararnn_lm_sp: --sp {sp} must divide the world size {world}")
    dp = world // sp
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dp, sp), mesh_dim_names=("dp", "sp"))
    sp_group, dp_group = mesh["sp"].get_group(), mesh["dp"].get_group()
    sp_rank, dp_rank = mesh["sp"].get_local_rank(), mesh["dp"].get_local_rank()

    torch.manual_seed(args.seed)  # the same initial parameters on every rank
    model = ByteLM(args.width, args.layers, args.heads, sp_group if sp > 1 else None, args.strategy, torch.float32).to(
        device
    )
    local_params = model.local_parameters()
    if dp > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, process_group=dp_group)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    data = load_bytes(args.data)
    T = args.seq_len
    if data.numel() < T + 2:
        raise SystemExit(f"pararnn_lm_sp: the data has {data.numel()} bytes, fewer than --seq-len + 2 = {T + 2}")
    lo, hi = sp_rank * T // sp, (sp_rank + 1) * T // sp  # this rank's piece of every sequence
    tokens_per_step = dp * args.batch * T
    history = []
    t_prev = None
    for step in range(args.steps):
        g = torch.Generator().manual_seed(args.seed * 100003 + step * 1009 + dp_rank)  # same batch on an sp row
        starts = torch.randint(0, data.numel() - T - 1, (args.batch,), generator=g)
        seq = torch.stack([data[s : s + T + 1] for s in starts.tolist()]).to(device)
        x, y = seq[:, lo:hi], seq[:, lo + 1 : hi + 1]
        if t_prev is None:
            t_prev = time.perf_counter()
        with CommCounter() as cc:
            logits = model(x)
            # sum over this rank's tokens / tokens of the replica: the sp ranks' losses add up to the mean
            loss = F.cross_entropy(logits.reshape(-1, 256).float(), y.reshape(-1), reduction="sum") / (args.batch * T)
            loss.backward()
            if sp > 1:  # complete the embedding / norms / head gradients over sp (one all_reduce)
                flat = torch.cat([p.grad.reshape(-1) for p in local_params])
                dist.all_reduce(flat, group=sp_group)
                off = 0
                for p in local_params:
                    p.grad.copy_(flat[off : off + p.numel()].view_as(p))
                    off += p.numel()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        # reporting (not counted above): the step's mean loss and every rank's bytes
        stats = torch.tensor([loss.item(), float(cc.bytes_sent)], dtype=torch.float64, device=device)
        every = [torch.zeros_like(stats) for _ in range(world)]
        dist.all_gather(every, stats)
        mean_loss = sum(float(e[0]) for e in every) / dp  # sp pieces add up, dp replicas average
        sent = [int(e[1]) for e in every]
        row = {
            "step": step,
            "loss": mean_loss,
            "tokens_per_s": tokens_per_step / dt,
            "bytes_sent": sent,
            "collectives": cc.total_calls,
        }
        history.append(row)
        if rank == 0 and (step % args.log_every == 0 or step == args.steps - 1):
            print(
                f"step {step:4d}  loss {mean_loss:.4f}  tokens/s {row['tokens_per_s']:9.0f}  "
                f"bytes sent per rank {sent}  collectives/rank {cc.total_calls}  (dp {dp} x sp {sp}, "
                f"{args.strategy}, {device.type})",
                flush=True,
            )
    return {"history": history, "dp": dp, "sp": sp}


if __name__ == "__main__":
    main()
    dist.destroy_process_group()
