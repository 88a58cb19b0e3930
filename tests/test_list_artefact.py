"""The list-construction artefact, as a regression test (SYNTHETIC random embeddings).

On a store of random unit vectors nothing can be retrieved: chance is all any honest method
gets. On the paper's ``hard`` lists a ranker still beats chance inside the lists — it learns that
the least cosine-similar candidate is the positive, because the positive was appended and not
chosen by cosine like the 10 negatives — and the leakage probe flags those lists. On
``first_stage`` and ``pool`` lists, where the positive must be retrieved like any negative, the
same ranker stays at chance and the probe flags nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _compose import make_cfg

from xmr.data.store import write_store
from xmr.train import train

L = 11  # candidates per list: 10 negatives + the positive (hard), or the top 11 (first_stage, pool)
CHANCE = 1 / L


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 train / 60 val / 60 test images, 5 captions each, 24-d random unit vectors."""
    rng = np.random.default_rng(7)
    n = 420
    split = np.repeat(np.array([0, 1, 2], dtype=np.uint8), [300, 60, 60])
    root = tmp_path_factory.mktemp("random") / "store"
    return write_store(
        root,
        image_emb=rng.standard_normal((n, 24)),
        text_emb=rng.standard_normal((5 * n, 24)),
        text_image=np.repeat(np.arange(n), 5),
        image_split=split,
        images=[f"random_{i}.jpg" for i in range(n)],
        captions=[f"random caption {j}" for j in range(5 * n)],
        encoder={"name": "random unit vectors (SYNTHETIC, no signal)"},
        joint_space=True,
    )


def _run(store: Path, tmp: Path, strategy: str) -> tuple[dict, dict]:
    mining = {
        "hard": ["data.mining.pool=60", "data.mining.hard=10"],
        "first_stage": ["data.mining.strategy=first_stage", f"data.mining.list_size={L}"],
        "pool": [
            "data.mining.strategy=pool",
            f"data.mining.list_size={L}",
            "data.mining.pool_size=60",
        ],
    }[strategy]
    cfg = make_cfg(
        tmp,
        [
            "data=synthetic_tiny",
            f"data.store={store}",
            "data.synth=null",
            f"data.lists_root={tmp / 'lists'}",
            *mining,
            "loss=listnet",
            "model.net.interaction=[cosine]",
            "trainer.max_epochs=6",
            "trainer.enable_progress_bar=false",
            "protocol=lists",
            "ks=[1,5,10]",
        ],
    )
    results = train(cfg)
    with np.load(Path(cfg.paths.output_dir) / "predictions_t2i.npz") as z:
        # Lists that may miss their positive carry each query's relevant total (report: misses).
        assert ("relevant_total" in z.files) == (strategy != "hard")
    lists_dirs = list((tmp / "lists").iterdir())
    assert len(lists_dirs) == 1
    probe = json.loads((lists_dirs[0] / "lists.json").read_text())["probe"]
    return results, probe


@pytest.mark.parametrize("strategy", ["hard", "first_stage", "pool"])
def test_only_the_hard_lists_can_be_gamed(
    random_store: Path, tmp_path: Path, strategy: str
) -> None:
    results, probe = _run(random_store, tmp_path, strategy)
    leaks = {name: entry["leak"] for name, entry in probe["files"].items()}
    # test/{dir}/recall@1 over the 60 (t2i) / 60 (i2t) test lists; a miss counts as 0.
    r1 = [results[f"test/{d}/recall@1"] for d in ("t2i", "i2t")]
    if strategy == "hard":
        assert all(leaks.values()), leaks
        # Learned "least similar = positive": far above chance 1/11 = 9 %.
        assert min(r1) > 3 * CHANCE, r1
    else:
        assert not any(leaks.values()), leaks
        # Chance or below (misses count 0): under chance + 3 binomial std of 60 lists (~11 pts).
        tolerance = 3 * np.sqrt(CHANCE * (1 - CHANCE) / 60)
        assert max(r1) < CHANCE + tolerance, r1
