"""``report.html``: one self-contained page (no external files, images inlined as base64 data URIs).

Sections: a SYNTHETIC banner when any run used generated data; the full-gallery protocol table
(first: it cannot be gamed by how lists are built); the list-protocol table (Table 2) with the
leakage probe of its lists, each captioned with its construction; the significance test against
CLIP cosine in both protocols (raw and Holm-adjusted p) with the in-list gain warnings; failed /
missing jobs; the PNG plots; a qualitative gallery. WARNING lines are shown in red boxes. The gallery
samples test queries (seeded, uniformly) per direction and shows CLIP cosine's top-5 beside the
top-5 of the best ranker row (highest mean R@1 in that direction; its lowest-seed run), read from
the runs' predictions files and the store's ``images.txt`` / ``captions.txt`` (the store path is
``results.json`` ``store.path``). Photos are shown as thumbnails when ``images`` is a folder
holding the files named in ``images.txt``; otherwise an image is shown by its name and first
caption. Relevant candidates are marked ✓ (green).

A small inline script records, once the page has loaded, how many ``<img>`` elements decoded
(``<body data-images-loaded data-images-total>``), so a headless browser can check the page.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.store import TABLE_ORDER, FeatureStore
from xmr.report.collect import run_predictions
from xmr.report.render import (
    NO_FULL_GALLERY,
    direction_heading,
    error_summary,
    full_gallery_table,
    full_test_note,
    runs_cell,
    significance_caption,
    significance_table,
    table_caption,
)
from xmr.report.significance import (
    GAIN_RULE,
    PROTOCOL_TITLES,
    align_predictions,
    format_p,
)
from xmr.report.table import BASELINE, Report, recall_definition
from xmr.utils.io import atomic_write_text

log = logging.getLogger(__name__)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.banner { background: #b00020; color: #fff; font-weight: bold; font-size: 1.3em;
          padding: .6em 1em; border-radius: 4px; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td:not(:first-child) { white-space: nowrap; }
caption { caption-side: top; text-align: left; font-size: .9em; color: #444; padding: .3em 0; }
.plot { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.query { border: 1px solid #ccc; border-radius: 4px; padding: .6em; margin: .8em 0; }
.cols { display: flex; gap: 1.2em; }
.col { flex: 1; min-width: 0; }
.item { display: flex; gap: .5em; align-items: center; border: 2px solid #eee; margin: .2em 0;
        padding: .2em; font-size: .85em; }
.item.rel { border-color: #2e7d32; background: #e8f5e9; }
.item img, .qimg { max-height: 90px; max-width: 120px; }
.rank { font-weight: bold; width: 1.4em; }
.tag { font-size: .8em; padding: .1em .4em; border-radius: 3px; background: #eee; }
.fix { background: #c8e6c9; } .break { background: #ffcdd2; }
.warning { background: #fdecea; border-left: 4px solid #b00020; color: #7f0015;
           padding: .4em .8em; margin: .4em 0; font-weight: bold; }
.probe { font-size: .9em; color: #333; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` for inlining a file in the page."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class StoreView:
    """Texts and thumbnails of a store's items (what the gallery shows for an id)."""

    def __init__(self, store_path: str | None, images: str | Path | None) -> None:
        """``store_path``: the store's directory (``""``/None: ids only); ``images``: photos."""
        self.store = None
        self.images_dir = Path(images) if images else None
        self._thumbs: dict[int, str | None] = {}
        if store_path:
            try:
                self.store = FeatureStore.open(store_path, check_norms=False)
            except Exception as err:  # the gallery degrades to ids; the report still works
                log.warning("%s: store not readable for the gallery (%s)", store_path, err)
        if self.store is not None:
            self.image_names = self.store.images()
            self.captions = self.store.captions()
            images_of, first_ids = np.unique(np.asarray(self.store.text_image), return_index=True)
            self.first_caption = np.full(self.store.num_images, -1, np.int64)
            self.first_caption[images_of] = first_ids  # each image's lowest caption id

    @property
    def available(self) -> bool:
        return self.store is not None

    def caption(self, text_id: int) -> str:
        return self.captions[text_id] if self.store is not None else f"caption #{text_id}"

    def image_name(self, image_id: int) -> str:
        return self.image_names[image_id] if self.store is not None else f"image #{image_id}"

    def thumbnail(self, image_id: int) -> str | None:
        """A JPEG data URI of the photo (≤ 160 px), or None when it is not at hand."""
        if self.images_dir is None or self.store is None:
            return None
        if image_id not in self._thumbs:
            self._thumbs[image_id] = None
            name = self.image_name(image_id)
            for path in (self.images_dir / name, self.images_dir / Path(name).name):
                if path.is_file():
                    try:
                        from PIL import Image

                        with Image.open(path) as photo:
                            rgb = photo.convert("RGB")
                        rgb.thumbnail((160, 160))
                        buf = io.BytesIO()
                        rgb.save(buf, format="JPEG", quality=80)
                        self._thumbs[image_id] = data_uri(buf.getvalue(), "image/jpeg")
                    except OSError as err:
                        log.warning("%s: unreadable photo (%s)", path, err)
                    break
        return self._thumbs[image_id]

    def image_html(self, image_id: int, css: str = "") -> str:
        thumb = self.thumbnail(image_id)
        name = _e(self.image_name(image_id))
        if thumb:
            return f'<img class="{css}" src="{thumb}" alt="{name}" title="{name}">'
        first = self.first_caption[image_id] if self.store is not None else -1
        text = f" — “{_e(self.caption(int(first)))}”" if first >= 0 else ""
        return f"<span>[{name}]{text}</span>"

    def item_html(self, item_id: int, kind: str) -> str:
        return (
            self.image_html(item_id)
            if kind == "image"
            else f"<span>{_e(self.caption(item_id))}</span>"
        )


def _fmt(ms: tuple[float, float] | None) -> str:
    return f"{ms[0]:.2f} ± {ms[1]:.2f}" if ms else "—"


def _text(line: str) -> str:
    """A report line as HTML: escaped, `quoted` paths as code."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(line))


def warnings_html(lines: list[str]) -> str:
    return "".join(f'<div class="warning">{_text(line)}</div>' for line in lines)


def full_gallery_html(report: Report) -> str:
    ks = report.ks
    fg = full_gallery_table(report.rows, ks, report.full_construction)
    if fg is None:
        return f"<p>{_e(NO_FULL_GALLERY)}</p>"
    head = "".join(f'<th colspan="{len(ks)}">{direction_heading(d)}</th>' for d in TABLE_ORDER)
    sub = "".join(f"<th>R@{k}</th>" for _ in TABLE_ORDER for k in ks)
    first = "".join(f'<th rowspan="2">{_e(h)}</th>' for h in fg["head"])
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>" for cells in fg["body"]
    )
    return (
        f'<table id="full_gallery"><caption>{_e(fg["caption"])}</caption>'
        f"<tr>{first}{head}</tr><tr>{sub}</tr>{body}</table><p>{_e(fg['note'])}</p>"
    )


def table_html(report: Report) -> str:
    ks = report.ks
    head = "".join(f'<th colspan="{len(ks)}">{direction_heading(d)}</th>' for d in TABLE_ORDER)
    sub = "".join(f"<th>R@{k}</th>" for _ in TABLE_ORDER for k in ks)
    body = []
    for name, row in report.rows.items():
        cells = "".join(f"<td>{_fmt(row.get(f'{d}/R@{k}'))}</td>" for d in TABLE_ORDER for k in ks)
        body.append(f"<tr><td>{_e(name)}</td><td>{_e(runs_cell(row))}</td>{cells}</tr>")
    caption = table_caption(report.rows, report.recall)
    if report.list_construction:
        caption += " " + report.list_construction
    return (
        f'<table id="table2"><caption>{_e(caption)}</caption>'
        f'<tr><th rowspan="2">method</th><th rowspan="2">runs</th>{head}</tr><tr>{sub}</tr>'
        + "".join(body)
        + "</table>"
    )


def probe_html(report: Report) -> str:
    lines = report.probe_lines or ["No lists directory named by the runs' configs: no probe."]
    items = "".join(f"<li>{_text(line[2:])}</li>" for line in lines if line.startswith("- "))
    heads = "".join(f"<p>{_text(line)}</p>" for line in lines if not line.startswith("- "))
    return (
        f'<div class="probe" id="probe">{heads}{f"<ul>{items}</ul>" if items else ""}</div>'
        + warnings_html(report.probe_warnings)
    )


def significance_html(report: Report) -> str:
    if not report.significance:
        return "<p>No CLIP-cosine baseline with predictions files: no significance test.</p>"
    rows = []
    for rec in significance_table(report.significance):
        protocol = _e(PROTOCOL_TITLES.get(rec["protocol"], rec["protocol"]))
        lead = (
            f"<tr><td>{protocol}</td><td>{_e(rec['row'])}</td><td>{rec['direction']}</td>"
            f"<td>{_e(rec['seeds'])}</td>"
        )
        if rec["note"]:
            rows.append(f'{lead}<td colspan="4">{_e(rec["note"])}</td></tr>')
            continue
        rows.append(
            f"{lead}<td>{rec['delta']:+.2f}</td><td>[{rec['low']:+.2f}, {rec['high']:+.2f}]</td>"
            f"<td>{format_p(rec['p'])}</td><td>{format_p(rec['p_holm'])}</td></tr>"
        )
    caption = significance_caption(1, report.n_resamples, report.seed)
    return (
        f'<table id="significance"><caption>{_e(caption)}</caption><tr><th>protocol</th>'
        "<th>method</th><th>direction</th><th>seeds</th><th>Δ R@1</th><th>95% interval</th>"
        "<th>p</th><th>p (Holm)</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<p>{_text(note)}</p>" if (note := full_test_note(report.significance)) else "")
        + f"<p>In-list gains vs the full gallery. {_e(GAIN_RULE)}</p>"
        + (warnings_html(report.gain_warnings) or "<p>No method is flagged.</p>")
    )


def unfinished_html(report: Report) -> str:
    if not report.unfinished:
        return "<p>None: every job finished.</p>"
    rows = "".join(
        f"<tr><td>{_e(j['status'])}</td><td>{_e(j.get('_row', j['method']))}</td>"
        f"<td>{_e(j.get('seed'))}</td><td>{_e(j['_dir'])}</td>"
        f"<td>{_e(error_summary(j.get('error'), 300))}</td></tr>"
        for j in report.unfinished
    )
    return (
        '<table id="unfinished"><tr><th>status</th><th>row</th><th>seed</th><th>job directory</th>'
        f"<th>error</th></tr>{rows}</table>"
    )


def _gallery_pair(report: Report, direction: str) -> tuple[str, dict, dict] | None:
    """(ranker row name, ranker run, cosine run) for the gallery of ``direction``."""

    def first_run(row: dict[str, Any]) -> dict[str, Any] | None:
        runs = [r for r in row["runs"] if run_predictions(r, direction) is not None]
        return min(runs, key=lambda r: str(r.get("seed"))) if runs else None

    base = next((first_run(r) for r in report.rows.values() if r["method"] == BASELINE), None)
    scored = [
        (row.get(f"{direction}/R@1", (-math.inf, 0))[0], name, run)
        for name, row in report.rows.items()
        if row["method"] != BASELINE and (run := first_run(row)) is not None
    ]
    if base is None or not scored:
        return None
    _, name, run = max(scored, key=lambda t: t[0])
    return name, run, base


def gallery_html(report: Report, images: str | Path | None, n: int = 6, seed: int = 0) -> str:
    parts = []
    views: dict[str, StoreView] = {}
    for direction, title in (("t2i", "caption → images"), ("i2t", "image → captions")):
        pair = _gallery_pair(report, direction)
        if pair is None:
            parts.append(f"<p>{direction}: needs a CLIP-cosine run and a ranker run.</p>")
            continue
        name, run, base = pair
        pred, bpred = run_predictions(run, direction), run_predictions(base, direction)
        assert pred is not None and bpred is not None
        aligned = align_predictions(pred, bpred)
        if aligned is None:
            parts.append(f"<p>{direction}: the runs' test lists differ; no gallery.</p>")
            continue
        store_path = str((run.get("store") or {}).get("path") or "")
        if store_path not in views:
            views[store_path] = StoreView(store_path, images)
        view = views[store_path]
        a_idx, b_idx = aligned
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(a_idx), size=min(n, len(a_idx)), replace=False))
        q_kind, c_kind = ("text", "image") if direction == "t2i" else ("image", "text")
        parts.append(
            f"<h3>{direction}: {title} — CLIP cosine vs {_e(name)} (seed {_e(run.get('seed'))})</h3>"
        )
        if not view.available:
            parts.append("<p>Store not readable here: items are shown by id.</p>")
        for i in picks:
            ra, rb = int(a_idx[i]), int(b_idx[i])
            query = int(pred["query"][ra])
            ok_r, ok_b = bool(pred["labels"][ra, 0]), bool(bpred["labels"][rb, 0])
            tag = (
                '<span class="tag fix">ranker fixes top-1</span>'
                if ok_r and not ok_b
                else '<span class="tag break">ranker breaks top-1</span>'
                if ok_b and not ok_r
                else f'<span class="tag">top-1 {"right" if ok_r else "wrong"} for both</span>'
            )
            q_html = (
                view.image_html(query, "qimg")
                if q_kind == "image"
                else f"<b>“{_e(view.caption(query))}”</b>"
            )
            cols = []
            for label, p, row in (("CLIP cosine", bpred, rb), (name, pred, ra)):
                items = []
                for rank in range(min(5, p["candidates"].shape[1])):
                    cand = int(p["candidates"][row, rank])
                    if cand < 0:
                        break
                    rel = bool(p["labels"][row, rank])
                    items.append(
                        f'<div class="item{" rel" if rel else ""}"><span class="rank">{rank + 1}'
                        f"{' ✓' if rel else ''}</span>{view.item_html(cand, c_kind)}</div>"
                    )
                cols.append(f'<div class="col"><b>{_e(label)}</b> top-5{"".join(items)}</div>')
            parts.append(
                f'<div class="query"><div>query {q_kind} #{query}: {q_html} {tag}</div>'
                f'<div class="cols">{"".join(cols)}</div></div>'
            )
    note = (
        "Photos from " + _e(images) + " (matched by images.txt names)."
        if images
        else "No photo folder given (--images): images are shown by name and first caption."
    )
    return f'<div id="gallery"><p>{note} Queries sampled uniformly (seed {seed}).</p>{"".join(parts)}</div>'


def render_html(
    report: Report,
    images: str | Path | None = None,
    plots: dict[str, Path] | None = None,
    gallery: int = 6,
) -> str:
    """The page as a string (see the module docstring)."""
    plots = plots or {}
    banner = (
        '<div class="banner" id="synthetic">SYNTHETIC DATA — these numbers come from a generated '
        "feature store, not from real images and captions.</div>"
        if report.synthetic
        else ""
    )
    figs = []
    for name in ("recall_at_k.png", "validation_curves.png"):
        path = plots.get(name)
        if path is not None and Path(path).is_file():
            uri = data_uri(Path(path).read_bytes(), "image/png")
            figs.append(f'<img class="plot" src="{uri}" alt="{name}">')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xmr report</title>
<style>{CSS}</style></head>
<body>
<h1>xmr report{" — SYNTHETIC data" if report.synthetic else ""}</h1>
{banner}
<p>Runs below <code>{_e(report.root)}</code>: {len(report.runs)} finished,
{len(report.unfinished)} failed or missing. Recall = {_e(recall_definition(report.recall))}.</p>
<h2>Full-gallery protocol</h2>
{full_gallery_html(report)}
<h2>List protocol (Table 2)</h2>
{table_html(report)}
<p>i2t = text retrieval (image query → captions); t2i = image retrieval (caption query → images).</p>
{probe_html(report)}
<h2>Significance vs CLIP cosine</h2>
{significance_html(report)}
<h2>Failed / missing jobs</h2>
{unfinished_html(report)}
<h2>Plots</h2>
{"".join(figs) or "<p>No plots.</p>"}
<h2>Gallery</h2>
{gallery_html(report, images, gallery, report.seed)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(
    report: Report,
    path: str | Path,
    images: str | Path | None = None,
    plots: dict[str, Path] | None = None,
    gallery: int = 6,
) -> Path:
    """Write ``report.html`` (atomically); returns its path."""
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"--images {images}: not a directory")
    return atomic_write_text(path, render_html(report, images, plots, gallery))
