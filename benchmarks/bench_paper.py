"""Paper-scale figures: Lightning epoch vs a bare PyTorch loop, mining time, 1K test evaluation
time, and peak RSS of a training run on the SYNTHETIC paper-scale store.

    python benchmarks/bench_paper.py [--lists 2000] [--rss-batches 100] [--threads 1]

The store (29,000 / 1,014 / 1,000 images, 5 captions each, 512-d float16; SYNTHETIC) is
generated under ./data/synthetic-paper when missing (as `xmr synth data=synthetic_paper`), and
its lists mined (pool 200, 50 hard). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, make_optimizer, runtime  # noqa: E402

from xmr.data.datamodule import XMRDataModule, mining_tag, prepare_store_and_lists  # noqa: E402
from xmr.data.mining import MINING_DEFAULTS, mine_lists  # noqa: E402
from xmr.data.store import FeatureStore  # noqa: E402
from xmr.losses.listnet import ListNetLoss  # noqa: E402
from xmr.models.module import RankingModule  # noqa: E402
from xmr.models.ranker import ContextAwareRanker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "data" / "synthetic-paper"
MINING = MINING_DEFAULTS  # the paper's lists: 50 hard negatives of a random pool of 200


def datamodule(max_lists: int | None) -> XMRDataModule:
    lists = STORE / "lists" / mining_tag(MINING)
    prepare_store_and_lists(STORE, lists, {"preset": "paper", "seed": 0}, MINING)
    dm = XMRDataModule(
        str(STORE),
        lists_dir=str(lists),
        direction="both",
        batch_size=32,
        eval_batch_size=256,
        max_lists=max_lists,
    )
    dm.setup()
    return dm


def module(dm: XMRDataModule) -> RankingModule:
    torch.manual_seed(0)
    nets = {d: ContextAwareRanker(*dm.dims(d)) for d in dm.directions}
    return RankingModule(nets, ListNetLoss(), make_optimizer)


def bare_epoch(dm: XMRDataModule) -> float:
    """The same model, loss, optimizer and data as the Lightning epoch, in a plain loop."""
    m = module(dm)
    m.train()
    opt = make_optimizer(m.parameters())
    t0 = time.perf_counter()
    for batch, _, _ in iter(dm.train_dataloader()):
        opt.zero_grad(set_to_none=True)
        total = sum(m.loss_fn(m.score(sub), sub["labels"], sub["mask"]) for sub in batch.values())
        total.backward()
        opt.step()
    return time.perf_counter() - t0


def lightning_epoch(dm: XMRDataModule, progress: bool) -> float:
    m = module(dm)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    t0 = time.perf_counter()
    trainer.fit(m, datamodule=dm)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--lists",
        type=int,
        default=2000,
        help="train lists per direction for the Lightning-vs-bare epoch (all 29,000 take minutes)",
    )
    ap.add_argument(
        "--rss-batches",
        type=int,
        default=100,
        help="training batches of the RSS run (0 = the full epoch)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args(argv)
    with runtime(args.threads):  # threads and denormal flushing as `xmr train` sets them
        return _main(args)


def _main(args: argparse.Namespace) -> dict[str, float]:
    header("paper scale (SYNTHETIC store 29,000/1,014/1,000 images x 5 captions, 512-d fp16)")
    out: dict[str, float] = {}

    dm = datamodule(args.lists)
    bare = min(bare_epoch(dm) for _ in range(2))
    lit = min(lightning_epoch(dm, progress=False) for _ in range(2))
    lit_bar = lightning_epoch(dm, progress=True)
    n = 2 * args.lists
    print(
        f"epoch over {n} lists (both directions): bare loop {bare:.1f} s ({n / bare:.0f} lists/s),"
        f" Lightning {lit:.1f} s -> ratio {lit / bare:.3f}; with progress bar {lit_bar:.1f} s "
        f"({lit_bar / bare:.3f})"
    )
    out.update(bare_s=bare, lightning_s=lit, lightning_ratio=lit / bare)

    store = FeatureStore.open(STORE)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mine_lists(store, Path(tmp) / "lists", splits=("train",), **MINING)
        mine = time.perf_counter() - t0
    print(f"mining the train split (29,000 + 29,000 lists of 51, both directions): {mine:.1f} s")
    out["mine_train_s"] = mine

    full = datamodule(None)
    m = module(full)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    t0 = time.perf_counter()
    trainer.test(m, datamodule=full, verbose=False)
    ev = time.perf_counter() - t0
    print(
        f"evaluating the 1K test lists, both directions: {ev:.1f} s "
        f"({full.num_lists('t2i', 'test')} t2i + {full.num_lists('i2t', 'test')} i2t lists)"
    )
    out["eval_test_s"] = ev

    if not args.skip_rss:
        limit = f"+trainer.limit_train_batches={args.rss_batches}" if args.rss_batches else ""
        code = (
            "import sys, resource; sys.argv=['xmr.train','experiment=paper','trainer.max_epochs=1',"
            "'trainer.enable_progress_bar=false','logger=csv','protocol=lists',"
            f"'hydra.run.dir={tempfile.mkdtemp()}'"
            + (f",'{limit}'" if limit else "")
            + (f",'threads={args.threads}'" if args.threads else "")
            + "]; from xmr.train import main; main()\n"
            # VmHWM is the peak RSS of this process's own address space. ru_maxrss of a child is
            # not: Linux carries the parent's high-water mark over fork + exec, so a benchmark
            # process holding big arrays would inflate it.
            "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
            "print('XMR_VMHWM_KB', hwm)"
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        hwm = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("XMR_VMHWM_KB")]
        rss = int(hwm[0]) / 1024 if hwm else float("nan")  # KiB -> MiB
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.stderr[-400:]})"
        what = f"{args.rss_batches} batches" if args.rss_batches else "the full epoch"
        print(
            f"peak RSS of `xmr train experiment=paper` (1 epoch, {what}, + val + test): "
            f"{rss:.0f} MiB; wall {wall:.0f} s; {status}"
        )
        out["peak_rss_mib"] = rss
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
