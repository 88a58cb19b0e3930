"""The report's tables in every format (table.md, table.csv, table.tex, report.html): the same rows
in the same order (CLIP cosine first) under the same names, ``—`` for the std of a one-run row,
the best values bold in LaTeX and HTML (decided once: ties all bold, CLIP cosine included); the
captions' construction; the validation plot (integer epochs, train loss, CLIP cosine's line)."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from xmr.data.store import write_store
from xmr.report.cli import build_report, main
from xmr.report.construction import full_construction, list_construction
from xmr.report.curves import baseline_reference, train_loss_points
from xmr.report.plots import validation_figure
from xmr.report.render import full_gallery_table, list_table, to_latex, value_text
from xmr.report.table import BASELINE, best_flags


def test_best_flags_tie_at_the_shown_precision() -> None:
    column = [(50.004, 1.0), (49.996, 2.0), None, (49.99, 0.0), (float("nan"), 0.0)]
    assert best_flags(column) == [True, True, False, False, False]  # both read 50.00
    assert best_flags([None, None]) == [False, False]


def _md_rows(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``section``, as cell lists."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _tex_rows(table: str) -> list[list[str]]:
    body = table.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    return [[c.strip() for c in ln.removesuffix(r"\\").split("&")] for ln in body]


def _html_rows(page: str, table_id: str) -> list[list[str]]:
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(<td.*?)</tr>", table)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


def _untex(cell: str) -> str:
    return (
        cell.replace(r"\textbf{", "").rstrip("}").replace(r"$\pm$", "±").replace(r"\_", "_")
    ).replace("--", "—")


@pytest.fixture(scope="module")
def formats(probe_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("formats")
    main(
        [str(probe_sweep), "--out", str(out), "--resamples", "200", "--no-plots", "--gallery", "0"]
    )
    return out


def test_every_format_has_the_same_rows_names_and_values(formats: Path) -> None:
    md = (formats / "table.md").read_text()
    full_md = _md_rows(md[md.index("## Full-gallery") : md.index("## List protocol")])
    list_md = _md_rows(md[md.index("## List protocol") : md.index("## Significance")])
    tex_full, tex_list = (formats / "table.tex").read_text().split(r"\end{table}")[:2]
    page = (formats / "report.html").read_text()
    with open(formats / "table.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    names = ["clip_cosine", "listnet", "ranknet"]  # the baseline first
    assert [r["row"] for r in csv_rows] == names
    assert [r[0] for r in list_md] == names
    assert [r[0] for r in _tex_rows(tex_list)] == [n.replace("_", r"\_") for n in names]
    assert [html.unescape(r[0]) for r in _html_rows(page, "table2")] == names
    assert [r[0] for r in full_md][:3] == names  # then the first stage alone
    assert [_untex(r[0]) for r in _tex_rows(tex_full)][:3] == names
    assert [r[0] for r in _html_rows(page, "full_gallery")][:3] == names
    # the same cells everywhere (LaTeX and HTML only add bold)
    for md_rows, tex_rows, html_rows in (
        (list_md, _tex_rows(tex_list), _html_rows(page, "table2")),
        (full_md, _tex_rows(tex_full), _html_rows(page, "full_gallery")),
    ):
        for md_row, tex_row, html_row in zip(md_rows, tex_rows, html_rows, strict=True):
            assert [_untex(c) for c in tex_row] == md_row
            assert [html.unescape(re.sub(r"</?strong>", "", c)) for c in html_row] == md_row
    # CLIP cosine has one run: "—" in place of "± 0.00", in every format
    assert all(c.endswith(" —") for c in list_md[0][2:] + full_md[0][4:])
    assert "± 0.00" not in " ".join(list_md[0] + full_md[0])
    assert all(c.endswith(" --") or c.endswith(" --}") for c in _tex_rows(tex_list)[0][2:])
    cos = csv_rows[0]
    assert cos["i2t_R@1_std"] == "" and cos["full_t2i_R@1_std"] == ""


def test_best_values_are_bold_in_latex_and_html_ties_and_baseline_included(
    formats: Path, probe_sweep: Path
) -> None:
    with open(formats / "table.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    tex_full, tex_list = (formats / "table.tex").read_text().split(r"\end{table}")[:2]
    page = (formats / "report.html").read_text()
    columns = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    for prefix, tex, table_id, first in (
        ("", tex_list, "table2", 2),
        ("full_", tex_full, "full_gallery", 4),
    ):
        tex_rows, html_rows = _tex_rows(tex), _html_rows(page, table_id)
        for j, col in enumerate(columns):
            means = [round(float(r[f"{prefix}{col}_mean"]), 2) for r in csv_rows]
            want = [m == max(means) for m in means]  # ties all best
            assert [r[first + j].startswith(r"\textbf{") for r in tex_rows[:3]] == want
            assert ["<strong>" in r[first + j] for r in html_rows[:3]] == want
            assert not any(r[first + j].startswith(r"\textbf{") for r in tex_rows[3:])


def _row(method: str, runs: int, values: dict[str, tuple[float, float]]) -> dict:
    return {"method": method, "n": runs, "jobs": runs, "synthetic": False, "runs": [], **values}


def test_ties_are_all_bold_and_the_baseline_competes() -> None:
    nan = float("nan")
    rows = {
        BASELINE: _row(BASELINE, 1, {"t2i/R@1": (40.0, nan), "t2i/R@5": (70.004, nan)}),
        "listnet": _row("listnet", 2, {"t2i/R@1": (45.0, 1.0), "t2i/R@5": (69.996, 2.0)}),
        "ranknet": _row("ranknet", 2, {"t2i/R@1": (45.0, 3.0), "t2i/R@5": (60.0, 2.0)}),
    }
    model = list_table(rows, ks=(1, 5))
    best = [[getattr(c, "best", False) for c in row[2:]] for row in model["body"]]
    # columns: i2t R@1, i2t R@5 (no values), t2i R@1, t2i R@5
    assert best == [
        [False, False, False, True],  # the baseline's 70.00 ties listnet's 70.00
        [False, False, True, True],
        [False, False, True, False],  # 45.00 ties 45.00
    ]
    tex = to_latex(rows, ks=(1, 5))
    assert r"\textbf{70.00 --}" in tex and r"\textbf{70.00 $\pm$ 2.00}" in tex
    assert r"\textbf{45.00 $\pm$ 1.00}" in tex and r"\textbf{45.00 $\pm$ 3.00}" in tex
    assert r"60.00 $\pm$ 2.00" in tex and r"\textbf{60.00" not in tex


def test_both_table_models_lead_with_the_baseline(probe_sweep: Path) -> None:
    report = build_report(probe_sweep, n_resamples=100)
    lists = list_table(report.rows, report.ks, report.recall)
    full = full_gallery_table(report.rows, report.ks)
    assert full is not None
    assert lists["body"][0][0] == full["body"][0][0] == BASELINE
    cell = lists["body"][0][2]
    assert value_text(cell).endswith(" —") and np.isnan(cell.std)


def _fake_run(root: Path, method: str, loss: dict, store: Path | None) -> dict:
    path = root / method / "results.json"
    path.parent.mkdir(parents=True)
    run = {
        "method": method,
        "seed": 0,
        "_path": str(path),
        "store": {"path": str(store) if store else None, "encoder": {"name": "ViT-B-32"}},
        "config": {"loss": loss, "data": {"mining": {"strategy": "pool"}}},
        "test/t2i/lists": 20,
        "test_full/t2i/recall@1": 0.5,
        "full_gallery": {"top_k": 50, "split": "test", "first_stage": "cosine"},
    }
    path.write_text(json.dumps(run))
    return run


def test_captions_state_split_sizes_and_listnet_target_of_rerankers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 4))
    store = write_store(
        tmp_path / "store",
        image_emb=emb,
        text_emb=np.repeat(emb, 2, axis=0),
        text_image=np.repeat(np.arange(10), 2),
        image_split=np.array([0] * 6 + [1] * 2 + [2] * 2, np.uint8),
        images=[f"{i}.jpg" for i in range(10)],
        captions=[f"c{i}" for i in range(20)],
        encoder={"name": "ViT-B-32"},
        joint_space=True,
    )
    listnet = {"_target_": "xmr.losses.listnet.ListNetLoss", "target": "softmax"}
    rows = {
        "reranker_listnet@infonce": {
            "method": "reranker_listnet@infonce",
            "runs": [_fake_run(tmp_path / "a", "reranker_listnet@infonce", listnet, store)],
        },
        "clip_cosine": {
            "method": "clip_cosine",
            "runs": [_fake_run(tmp_path / "b", "clip_cosine", {}, store)],
        },
    }
    for caption in (list_construction(rows), full_construction(rows)):
        assert "images train/val/test 6/2/2, 20 captions" in caption
        assert f"store store ({store}), encoder ViT-B-32" in caption
        assert "ListNet target: softmax." in caption
    assert "strategy pool" in list_construction(rows)
    assert "K = 50 re-ranked" in full_construction(rows)


# ------------------------------------------------------------------ the validation plot


def test_train_loss_of_a_val_record_is_the_previous_epochs() -> None:
    val = [
        {"stage": "val", "epoch": 0, "val/rsum": 1.0},
        {"stage": "val", "epoch": 1, "val/rsum": 2.0, "train/loss": 5.0},
        {"stage": "val", "epoch": 2, "val/rsum": 3.0, "train/loss": 4.0},
        {"stage": "test", "epoch": 3},
    ]
    assert train_loss_points(val) == [(0, 5.0), (1, 4.0)]
    own = val + [{"stage": "train", "epoch": e, "train/loss": 9.0 - e} for e in range(3)]
    assert train_loss_points(own) == [(0, 9.0), (1, 8.0), (2, 7.0)]  # recorded per epoch


def test_validation_figure_has_integer_epochs_train_loss_and_cosine_line(tmp_path: Path) -> None:
    def records(seed: int) -> list[dict]:
        return [
            {
                "stage": "val",
                "epoch": e,
                "val/rsum": 100.0 + 10 * e + seed,
                "val/i2t/recall@1": 0.2 + 0.01 * e,
                "val/t2i/recall@1": 0.1 + 0.01 * e,
                **({"train/loss": 3.0 - 0.5 * e} if e else {}),
            }
            for e in range(4)
        ]

    cos_dir = tmp_path / "cos"
    cos_dir.mkdir()
    cos = {"method": BASELINE, "_path": str(cos_dir / "results.json"), "val/rsum": 120.0}
    (cos_dir / "metrics.jsonl").write_text(
        json.dumps({"stage": "val", "epoch": 0, "val/t2i/recall@1": 0.15}) + "\n"
    )
    reference = baseline_reference({BASELINE: {"method": BASELINE, "runs": [cos]}})
    assert reference == {"val/rsum": 120.0, "val/t2i/recall@1": 0.15}  # results, then history
    fig = validation_figure({"listnet": [records(0), records(1)]}, reference=reference)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" ")[0] for ax in axes] == [
        "val/rsum",
        "val/i2t/recall@1",
        "val/t2i/recall@1",
        "train/loss",
    ]
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    rsum, i2t, t2i, loss = axes
    dashed = [ln for ln in rsum.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(120.0)
    assert dashed[0].get_label() == "clip_cosine (val)"
    assert not [ln for ln in i2t.get_lines() if ln.get_linestyle() == "--"]  # none recorded
    t2i_ref = [ln for ln in t2i.get_lines() if ln.get_linestyle() == "--"]
    assert t2i_ref[0].get_ydata()[0] == pytest.approx(15.0)  # percent
    mean = [ln for ln in loss.get_lines() if ln.get_label() == "listnet"][0]
    assert list(mean.get_xdata()) == [0, 1, 2] and list(mean.get_ydata()) == [2.5, 2.0, 1.5]
    assert "not recorded for val/i2t/recall@1" in fig._suptitle.get_text()
