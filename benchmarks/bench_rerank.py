"""Cost of xmr's residual re-ranker next to the paper's ranker: training step, parameters, and
the training time of one epoch over a given number of lists.

    python benchmarks/bench_rerank.py [--threads 1] [--lists 3954] [--quick]

Shape: batch 32 lists x 51 candidates, 512-d joint space (CLIP ViT-B/32's width). The paper's
Context-Aware Ranker (conf/model/ranker.yaml: FC 64, 2 layers, 4 heads, feed-forward 128) and the
re-ranker (conf/model/reranker.yaml: full 512x512 bilinear projections, hidden 128, 1 attention
layer; and its no-attention ablation, num_layers 0), both trained with ListNet and the optimizer
of their experiments (Adam for the paper, AdamW for experiment=rerank). Inputs are random unit
vectors, 16 batches in turn. ``--lists``: training lists per epoch (both directions; default:
the SYNTHETIC demo store's pool lists, 2,000 t2i + 1,954 i2t). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, runtime, timeit  # noqa: E402

from xmr.models.ranker import ContextAwareRanker  # noqa: E402
from xmr.models.reranker import ResidualReranker  # noqa: E402
from xmr.utils.instantiate import instantiate  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
B, L, D = 32, 51, 512
POOL = 16


def _batches() -> list[tuple[torch.Tensor, ...]]:
    out = []
    for i in range(POOL):
        g = torch.Generator().manual_seed(i)
        q = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
        c = torch.nn.functional.normalize(torch.randn(B, L, D, generator=g), dim=-1)
        y = torch.zeros(B, L)
        y[:, 0] = 1.0
        out.append((q, c, torch.ones(B, L, dtype=torch.bool), y))
    return out


def _model(name: str, num_layers: int | None = None) -> torch.nn.Module:
    net = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml").net)
    assert isinstance(net, dict)
    for key in ("_target_", "_partial_"):
        net.pop(key, None)
    if num_layers is not None:
        net["num_layers"] = num_layers
    cls = ContextAwareRanker if name == "ranker" else ResidualReranker
    return cls(D, D, **net)


def _step(model: torch.nn.Module, optimizer: str):
    loss = instantiate(OmegaConf.load(CONF / "loss" / "listnet.yaml"), where="loss=listnet")
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=1e-3)
    pool = _batches()
    turn = iter(range(10**9))

    def step() -> None:
        q, c, mask, y = pool[next(turn) % POOL]
        opt.zero_grad(set_to_none=True)
        loss(model.forward_split(q, c, mask), y, mask).backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--lists", type=int, default=3954, help="training lists per epoch")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args(argv)
    with runtime(args.threads):
        header(f"re-ranker vs the paper's ranker (B={B}, L={L}, {D}-d, ListNet)")
        reps = 5 if args.quick else 9
        out: dict[str, float] = {}
        rows = [
            ("paper ranker (model=ranker)", _model("ranker"), "adam"),
            ("re-ranker (model=reranker)", _model("reranker"), "adamw"),
            ("re-ranker, no attention", _model("reranker", num_layers=0), "adamw"),
        ]
        base = None
        for name, model, optimizer in rows:
            params = sum(p.numel() for p in model.parameters())
            sec = timeit(_step(model, optimizer), repeats=reps, number=5)
            epoch = sec * -(-args.lists // B)
            base = base or sec
            out[name] = sec
            print(
                f"{name:>30s}: {params / 1e6:6.2f} M parameters  {sec * 1e3:7.1f} ms/step  "
                f"{epoch:6.1f} s per epoch of {args.lists} lists (training steps only)  "
                f"x{sec / base:4.2f} the paper ranker's step"
            )
        return out


if __name__ == "__main__":
    main()
