"""Training-step throughput at the paper's shape, FLOPs per step, efficiency vs matmul peak,
and the vectorised ensemble's speed-up over sequential runs.

    python benchmarks/bench_step.py [--threads 1] [--members 20] [--quick]

Paper shape: batch 32 lists x 51 candidates, 512-d query + 512-d candidate, Context-Aware Ranker
FC 64, 2 layers, 4 heads, feed-forward 128 (dropout 0.1 as configured). Inputs are random unit
vectors with one positive per list, 16 different batches in turn (one repeated batch would be
memorised within a few steps, its gradients would underflow, and it would sit in cache). The
optimizer and process settings are those of `xmr train` (conf/optimizer/adam.yaml: fused Adam;
conf/train.yaml: denormals flushed). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, make_optimizer, matmul_gflops, runtime, timeit  # noqa: E402

from xmr.models.ensemble import EnsembleRanker, ensemble_losses  # noqa: E402
from xmr.models.ranker import ContextAwareRanker  # noqa: E402
from xmr.utils.instantiate import instantiate  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
LOSSES = ("lambdarank", "neural_ndcg", "listnet", "ranknet")
B, L, D = 32, 51, 512
POOL = 16  # distinct batches the timed steps cycle through


def make_loss(name: str) -> torch.nn.Module:
    return instantiate(OmegaConf.load(CONF / "loss" / f"{name}.yaml"), where=f"loss={name}")


def batch(e: int | None = None, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Random unit-vector lists at the paper's shape (on ``device``), one positive each."""
    g = torch.Generator().manual_seed(seed)
    lead = () if e is None else (e,)
    q = torch.nn.functional.normalize(torch.randn(*lead, B, D, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(*lead, B, L, D, generator=g), dim=-1)
    y = torch.zeros(*lead, B, L)
    y[..., 0] = 1.0
    mask = torch.ones(*lead, B, L, dtype=torch.bool)
    return tuple(t.to(device) for t in (q, c, mask, y))


def net(dropout: float = 0.1, device: str = "cpu") -> ContextAwareRanker:
    return ContextAwareRanker(
        D, D, fc_sizes=[64], num_layers=2, num_heads=4, ff_dim=128, dropout=dropout
    ).to(device)


def single_step(loss_name: str, dropout: float = 0.1, device: str = "cpu", bf16: bool = False):
    """One training step of a single run (model, loss, fused Adam) on ``device``, as a callable;
    ``bf16``: the forward under bfloat16 autocast, as ``trainer.precision=bf16-mixed`` runs it
    (the backward outside, as Lightning does)."""
    model, loss = net(dropout, device), make_loss(loss_name).to(device)
    opt = make_optimizer(model.parameters())
    pool = [batch(seed=i, device=device) for i in range(POOL)]
    turn = iter(range(10**9))

    def step() -> None:
        q, c, mask, y = pool[next(turn) % POOL]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            value = loss(model.forward_split(q, c, mask), y, mask)
        value.backward()
        opt.step()

    return step


def flops_per_step(loss_name: str) -> int:
    model, loss = net(), make_loss(loss_name)
    q, c, mask, y = batch()
    with FlopCounterMode(display=False) as counter:
        loss(model.forward_split(q, c, mask), y, mask).backward()
    return int(counter.get_total_flops())


def ensemble_step(members: int, losses: tuple[str, ...], device: str = "cpu"):
    """One step of the vectorised ensemble (``members`` / len(losses) seeds per loss) on
    ``device``, as a callable."""
    nets = []
    for s in range(members):
        torch.manual_seed(s)
        nets.append(net())
    ens = EnsembleRanker(nets).to(device)
    opt = make_optimizer(ens.parameters())
    per = members // len(losses)
    groups = [
        (make_loss(n).to(device), list(range(i * per, (i + 1) * per))) for i, n in enumerate(losses)
    ]
    pool = [batch(members, seed=i, device=device) for i in range(4)]  # E x one batch each
    turn = iter(range(10**9))

    def step() -> None:
        q, c, mask, y = pool[next(turn) % len(pool)]
        opt.zero_grad(set_to_none=True)
        ensemble_losses(ens.forward_split(q, c, mask), y, mask, groups).sum().backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--members", type=int, default=20, help="ensemble size (multiple of 4)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument(
        "--keep-denormals", action="store_true", help="IEEE denormals (flush_denormal=false)"
    )
    args = ap.parse_args(argv)
    with runtime(args.threads, flush_denormal=not args.keep_denormals):
        return _main(args)


def _main(args: argparse.Namespace) -> dict[str, float]:
    reps = 5 if args.quick else 9
    header(f"training step at the paper's shape (B={B}, L={L}, {D}+{D}-d, FC 64, 2x4 heads)")
    opt = make_optimizer([torch.zeros(1, requires_grad=True)])
    fused = opt.defaults.get("fused")
    print(f"denormals flushed: {not args.keep_denormals}; {type(opt).__name__}, fused={fused}")
    peak = matmul_gflops()
    print(f"fp32 matmul 1024^3: {peak:.1f} GFLOP/s")
    out: dict[str, float] = {"matmul_gflops": peak}
    seq = []
    for name in LOSSES:
        # The matmul rate drifts between runs on a shared VM (174-201 GFLOP/s seen): each loss
        # is also compared with a matmul measured right before it.
        near = matmul_gflops()
        sec = timeit(single_step(name), repeats=reps, number=5)
        fl = flops_per_step(name)
        rate = fl / sec / 1e9
        seq.append(sec)
        out[f"{name}/lists_per_s"] = B / sec
        out[f"{name}/of_matmul"] = rate / near
        print(
            f"{name:>12s}: {sec * 1e3:7.1f} ms/step  {B / sec:7.0f} lists/s  "
            f"{fl / 1e9:.3f} GFLOP/step (fwd+bwd)  {rate:5.1f} GFLOP/s = {rate / peak:5.1%} of "
            f"matmul ({rate / near:5.1%} of the {near:.0f} GFLOP/s measured just before)"
        )
    sec = timeit(single_step("listnet", dropout=0.0), repeats=reps, number=5)
    fl = flops_per_step("listnet")
    print(
        f"{'listnet, dropout 0':>12s}: {sec * 1e3:7.1f} ms/step  {B / sec:7.0f} lists/s  "
        f"{fl / 1e9 / sec / peak:5.1%} of matmul (what dropout costs; not the paper's setting)"
    )
    out["listnet_no_dropout/lists_per_s"] = B / sec
    for name in ("listnet", "neural_ndcg"):  # trainer.precision=bf16-mixed on this CPU
        sec = timeit(single_step(name, bf16=True), repeats=reps, number=5)
        print(
            f"{name + ', bf16':>12s}: {sec * 1e3:7.1f} ms/step  {B / sec:7.0f} lists/s  "
            "(bf16-mixed autocast; losses and score head in float32)"
        )
        out[f"{name}_bf16/lists_per_s"] = B / sec
    e = args.members
    sec = timeit(ensemble_step(e, LOSSES), repeats=reps, number=2, warmup=1)
    seq_mean = sum(seq) / len(seq)
    per_member = B / sec
    print(
        f"ensemble E={e} ({e // 4} seeds x 4 losses): {sec * 1e3:.0f} ms/step, "
        f"{per_member:.0f} lists/s per member ({e * B / sec:.0f} member-lists/s) vs "
        f"{B / seq_mean:.0f} lists/s sequential (mean of the 4 losses): "
        f"speed-up x{seq_mean * e / sec:.2f}"
    )
    out["ensemble/members"] = e
    out["ensemble/lists_per_s_per_member"] = per_member
    out["sequential/lists_per_s"] = B / seq_mean
    out["ensemble/speedup"] = seq_mean * e / sec
    return out


if __name__ == "__main__":
    main()
