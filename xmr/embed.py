"""``xmr embed run_dir=DIR out=DIR [ckpt=FILE]``: a trained pairwise model's store.

Writes a joint-space feature store of the run's embeddings of every image and caption of its
store (:meth:`xmr.models.baselines.PairEmbeddingModel.embed_store`), so that the model becomes a
first stage like the store's cosine: mine lists on it (``data.store=OUT
data.mining.strategy=first_stage``), evaluate the full-gallery protocol with it, and train a
re-ranker over it (``model=reranker``). The run must be a model trained on pairs (``model=infonce``,
``vsepp``, ``dcca``, ``cmpm``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from xmr.models.scorer import scorer_kind
from xmr.runs.lifecycle import restore_run
from xmr.runs.naming import run_method
from xmr.utils.console import key_value_args, run_command

log = logging.getLogger(__name__)

USAGE = "usage: xmr embed run_dir=DIR out=DIR [ckpt=FILE] [overwrite=true]"


def embed(
    run_dir: str | Path, out: str | Path, ckpt: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the store of the run's embeddings at ``out``; returns its path."""
    run = restore_run(run_dir, ckpt=ckpt)
    if scorer_kind(run.cfg.model).trains_on != "pairs" or run.module.pair_model is None:
        raise SystemExit(
            f"{Path(run_dir) / 'config.yaml'}: model={run.cfg.model.get('name')!r} is not a "
            "model trained on pairs (infonce, vsepp, dcca, cmpm): it has no embedding of its own"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise SystemExit(f"{out}: exists (pass overwrite=true to replace it)")
    store = run.dm.store
    assert store is not None
    # "method" names this first stage in the rows of runs over the store (xmr.runs.naming).
    source = {
        "method": run_method(run.cfg),
        "run_dir": Path(run_dir).resolve(),
        "checkpoint": run.checkpoint,
    }
    return run.module.pair_model.embed_store(store, out, source=source, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    opts, _ = key_value_args(
        args, USAGE, ("run_dir", "out", "ckpt", "overwrite"), required=("run_dir", "out")
    )
    logging.basicConfig(level=logging.INFO)
    path = embed(
        opts["run_dir"],
        opts["out"],
        opts.get("ckpt"),
        overwrite=opts.get("overwrite", "false").lower() == "true",
    )
    print(f"wrote {path}: the run's embeddings as a joint-space store (use data.store={path})")


if __name__ == "__main__":
    run_command("embed", main)
