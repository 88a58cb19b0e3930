"""report.html: self-contained, the table, plots and gallery; rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from _sweep import tiny_sweep_root
from PIL import Image

from xmr.data.store import FeatureStore, write_store
from xmr.report.cli import build_report, main
from xmr.report.collect import run_predictions
from xmr.report.html import StoreView, gallery_sections, render_html

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of small JPEGs named as the tiny sweep store's images.txt (made here, not real)."""
    root = tiny_sweep_root(tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp("photos")
    names = FeatureStore.open(root / "store").images()
    for i, name in enumerate(names):
        colour = (37 * i % 256, 91 * i % 256, 173 * i % 256)
        Image.new("RGB", (200, 150), colour).save(folder / Path(name).name, "JPEG")
    return folder


@pytest.fixture(scope="module")
def html_report(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    root = tiny_sweep_root(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("html")
    main(
        [str(root / "runs"), "--out", str(out), "--images", str(photos), "--resamples", "500"]
        + ["--gallery", "3"]
    )
    return out / "report.html"


@pytest.mark.slow  # uses the tiny sweep
def test_page_is_self_contained_with_table_plots_and_gallery(html_report: Path) -> None:
    page = html_report.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)  # nothing external
    assert "href=" not in page and "<link" not in page
    assert 'id="table2"' in page and 'id="significance"' in page and 'id="unfinished"' in page
    assert page.index('id="full_gallery"') < page.index('id="table2"')  # full gallery first
    assert 'id="synthetic"' in page and "SYNTHETIC DATA" in page
    assert page.count("data:image/png") == 2  # the two plots
    gallery = page.split('id="gallery"', 1)[1]
    assert gallery.count('class="query"') == 2 * 3  # 3 queries per direction
    assert gallery.count("data:image/jpeg") >= 3 * 5  # t2i candidates are photo thumbnails
    assert "CLIP cosine" in gallery and ("listnet" in gallery or "ranknet" in gallery)


@pytest.mark.slow
def test_gallery_falls_back_to_captions_without_photos(tmp_path_factory, tmp_path) -> None:
    root = tiny_sweep_root(tmp_path_factory.getbasetemp())
    main([str(root / "runs"), "--out", str(tmp_path), "--no-plots", "--resamples", "100"])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg" not in page and "No photo folder given" in page
    assert "synthetic caption" in page  # caption text of the store instead of photos


@pytest.mark.slow
def test_chromium_renders_the_page(html_report: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run installs it)")
    flags = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = html_report.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(1))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(1))
    assert total and loaded, "the page's load script did not run"
    assert int(total.group(1)) >= 2 + 15 and loaded.group(1) == total.group(1)  # all decoded
    assert 'id="table2"' in dom.stdout and "listnet" in dom.stdout

    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [*flags, "--window-size=1280,2400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 20  # not a blank page
    banner = pixels[:300][np.all(np.abs(pixels[:300] - [176, 0, 32]) < 30, axis=-1)]
    assert len(banner) > 5000  # the red SYNTHETIC banner is on screen


def test_thumbnails_from_the_shared_real_photos(tmp_path: Path) -> None:
    folder = SHARED / "data" / "flickr8k-1k" / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent: the real shared photos are not beside this checkout")
    names = sorted(p.name for p in folder.glob("*.jpg"))[:6]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8))
    write_store(
        tmp_path / "store",
        image_emb=emb,
        text_emb=emb,
        text_image=np.arange(6),
        image_split=np.array([0, 0, 1, 1, 2, 2], np.uint8),
        images=names,
        captions=[f"caption {i}" for i in range(6)],
        encoder={"name": "test"},
        joint_space=True,
    )
    view = StoreView(str(tmp_path / "store"), folder)
    uri = view.thumbnail(3)
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    with Image.open(folder / names[3]) as original:
        assert max(thumb.size) <= 160 and thumb.size[0] / thumb.size[1] == pytest.approx(
            original.size[0] / original.size[1], rel=0.05
        )
    item = view.item(3, "image")
    assert item["thumb"] == uri and item["name"] == names[3] and item["text"] == "caption 3"
    assert StoreView(str(tmp_path / "store"), None).thumbnail(3) is None


def test_page_leads_with_the_full_gallery_and_shows_probe_and_warnings(probe_sweep: Path) -> None:
    report = build_report(probe_sweep, n_resamples=500)
    page = render_html(report, gallery=0)
    full, table2 = page.index('id="full_gallery"'), page.index('id="table2"')
    probe, sig = page.index('id="probe"'), page.index('id="significance"')
    assert full < table2 < probe < sig
    assert "first stage cosine, K = 50 re-ranked" in page[full:table2]
    assert "strategy hard, pool 200, L = 11 candidates per list" in page[table2:probe]
    assert "LEAK (p = 1e-09)" in page[probe:sig]
    warnings = re.findall(r'<div class="warning">(.*?)</div>', page)
    assert len(warnings) == 3  # the probe's t2i leak, listnet's two unmatched in-list gains
    assert "leakage probe flags the t2i test lists" in warnings[0]
    assert all("listnet" in w for w in warnings[1:])
    assert "<th>p (Holm)</th>" in page and "full gallery" in page[sig:]


# ------------------------------------------------- the gallery's grid, escaping, the template


@pytest.mark.slow  # uses the tiny sweep
def test_gallery_is_a_grid_with_scores_and_the_true_item(tmp_path_factory, photos: Path) -> None:
    root = tiny_sweep_root(tmp_path_factory.getbasetemp())
    report = build_report(root / "runs", n_resamples=100)
    sections = gallery_sections(report, photos, n=8, seed=0)
    assert [s["direction"] for s in sections] == ["i2t", "t2i"]
    outside = 0
    for sec in sections:
        run = next(r for r in report.rows[sec["ranker"]]["runs"] if r["seed"] == sec["seed"])
        pred = run_predictions(run, sec["direction"])
        assert len(sec["queries"]) == 8
        for q in sec["queries"]:
            cosine, ranker = q["methods"]
            assert cosine["label"] == "CLIP cosine" and ranker["label"] == sec["ranker"]
            row = int(np.flatnonzero(pred["query"] == q["item"]["id"])[0])
            assert [c["score"] for c in ranker["top"]] == [
                f"{v:.3f}" for v in pred["scores"][row, :5]
            ]
            assert [c["rel"] for c in ranker["top"]] == [bool(v) for v in pred["labels"][row, :5]]
            first = int(np.flatnonzero(pred["labels"][row])[0]) + 1  # hard lists hold it
            assert ranker["true"]["rank"] == first and ranker["true"]["in_top"] == (first <= 5)
            if first > 5:
                outside += 1
                assert ranker["true"]["score"] == f"{pred['scores'][row, first - 1]:.3f}"
                assert ranker["true"]["item"]["id"] == int(pred["candidates"][row, first - 1])
    assert outside  # some true item lies outside the top 5 here
    page = render_html(report, images=photos, gallery=8)
    for d in ("i2t", "t2i"):
        table = page.split(f'id="gallery-{d}"', 1)[1].split("</table>", 1)[0]
        groups = re.findall(r'<tbody class="query">(.*?)</tbody>', table, re.S)
        assert len(groups) == 8
        for group in groups:
            assert group.count("<tr>") == 2 and group.count('class="sc"') >= 10  # 2 x top 5
        assert "<th>true item</th>" in table and "#5</th>" in table
    assert re.search(r"✓ rank \d+ of 11", page)  # a true item appended with its rank


def _fake_store_run(root: Path, method: str, store: Path, labels: np.ndarray) -> None:
    out = root / method.replace("<", "_").replace(">", "_")
    out.mkdir(parents=True)
    q = len(labels)
    for d in ("t2i", "i2t"):
        np.savez(
            out / f"predictions_{d}.npz",
            query=np.arange(q),
            candidates=np.tile(np.arange(labels.shape[1]), (q, 1)),
            scores=np.tile(np.linspace(1, 0, labels.shape[1], dtype=np.float32), (q, 1)),
            labels=labels,
        )
    res = {
        "method": method,
        "seed": 0,
        "store": {"path": str(store), "encoder": {"name": "test"}},
        "predictions": {d: f"predictions_{d}.npz" for d in ("t2i", "i2t")},
        "config": {"model": {"name": method}, "data": {}, "seed": 0},
        **{f"test/{d}/recall@{k}": 0.5 for d in ("t2i", "i2t") for k in (1, 5, 10)},
    }
    (out / "results.json").write_text(json.dumps(res))


def test_page_escapes_captions_and_names_and_shows_a_missed_true_item(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script> & <b>bold</b>'
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(8, 4))
    store = write_store(
        tmp_path / "store",
        image_emb=emb,
        text_emb=emb,
        text_image=np.arange(8),
        image_split=np.array([0, 1] + [2] * 6, np.uint8),
        images=[f"{i}.jpg" for i in range(8)],
        captions=[f"{hostile} {i}" for i in range(8)],
        encoder={"name": "test"},
        joint_space=True,
    )
    labels = np.zeros((6, 6), np.uint8)
    labels[:3, 0] = 1  # the last three lists miss their positive (a first-stage list)
    _fake_store_run(tmp_path / "runs", "clip_cosine", store, labels)
    _fake_store_run(tmp_path / "runs", "list<i>net</i>", store, labels)
    page = render_html(build_report(tmp_path / "runs", n_resamples=10), gallery=6)
    assert "<script>alert" not in page and "<b>bold" not in page and "<i>net" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold" in page
    assert "list&lt;i&gt;net&lt;/i&gt;" in page
    assert page.count("<script>") == 1  # the page's own load script only
    assert "not in the list (6 candidates)" in page  # the missed positive, named from the store


def test_the_template_ships_with_the_package() -> None:
    template = resources.files("xmr.report").joinpath("templates", "report.html.j2")
    assert template.is_file()
    project = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    package_data = project.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"xmr.report" = ["templates/*.j2"]' in package_data
    deps = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"jinja2>=3.1"' in deps and '"scipy>=' in deps
