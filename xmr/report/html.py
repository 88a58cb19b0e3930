"""``report.html``: one self-contained page (no external files, images inlined as base64 data URIs),
rendered from the Jinja2 template ``xmr/report/templates/report.html.j2`` with autoescaping on:
every text of the runs (row names, captions, paths, errors) is escaped by the template, never
concatenated into markup here.

Sections: a SYNTHETIC banner when any run used generated data; the full-gallery protocol table
(first: it cannot be gamed by how lists are built); the list-protocol table (Table 2) with the
leakage probe of its lists, each captioned with its construction — both tables are the
format-free models of :mod:`xmr.report.render` (same rows, names, values and bold best values as
``table.md`` / ``table.tex``); the significance test against CLIP cosine in both protocols (raw
and Holm-adjusted p) with the in-list gain warnings; failed / missing jobs; the PNG plots; a
qualitative gallery. WARNING lines are shown in red boxes.

The gallery (:func:`gallery_sections`) samples test queries (seeded, uniformly) per direction and shows,
one query per row group, the query (its caption, or its photo) and then, for CLIP cosine and for
the best ranker row on the same test lists (highest mean in-list R@1 in that direction; its
lowest-seed run), the top 5
side by side with their scores, the true item marked ✓ — or appended after them with its rank
and score when it is outside the top 5, or named as not in the list when the list missed it.
Items are read from the runs' list-protocol predictions files and the store's ``images.txt`` /
``captions.txt`` (the store path is ``results.json`` ``store.path``). Photos are shown as
thumbnails when ``images`` is a folder holding the files named in ``images.txt``; otherwise an
image is shown by its name and first caption.

A small inline script records, once the page has loaded, how many ``<img>`` elements decoded
(``<body data-images-loaded data-images-total>``), so a headless browser can check the page.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup, escape
from PIL import Image

from xmr.data.store import TABLE_ORDER, FeatureStore
from xmr.report.collect import run_predictions
from xmr.report.render import (
    DIRECTIONS_NOTE,
    NO_FULL_GALLERY,
    Value,
    direction_heading,
    error_summary,
    full_gallery_table,
    full_test_note,
    list_table,
    significance_caption,
    significance_table,
    value_text,
)
from xmr.report.significance import GAIN_RULE, PROTOCOL_TITLES, align_predictions, format_p
from xmr.report.table import BASELINE, Report, recall_definition
from xmr.utils.io import atomic_write_text

log = logging.getLogger(__name__)

#: The page's template (package data, ``xmr/report/templates``).
TEMPLATE = "report.html.j2"
#: Candidates shown per method in the gallery.
GALLERY_TOP = 5


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
            self.text_image = np.asarray(self.store.text_image)
            images_of, first_ids = np.unique(self.text_image, return_index=True)
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

    def item(self, item_id: int, kind: str) -> dict[str, Any]:
        """What the page shows for an item: ``{"kind": "image"|"text", "id", "name", "text",
        "thumb"}`` — an image's photo (``thumb``, a data URI) or, without one, its name and
        first caption; a caption's text."""
        if kind == "text":
            return {"kind": "text", "id": item_id, "name": "", "text": self.caption(item_id)}
        first = int(self.first_caption[item_id]) if self.store is not None else -1
        return {
            "kind": "image",
            "id": item_id,
            "name": self.image_name(item_id),
            "text": self.caption(first) if first >= 0 else "",
            "thumb": self.thumbnail(item_id),
        }

    def true_item(self, query: int, direction: str) -> dict[str, Any] | None:
        """The item relevant to ``query`` (t2i: its caption's image; i2t: the image's first
        caption), or None without the store."""
        if self.store is None:
            return None
        if direction == "t2i":
            return self.item(int(self.text_image[query]), "image")
        first = int(self.first_caption[query])
        return self.item(first, "text") if first >= 0 else None


def _code(text: Any) -> Markup:
    """A report line as HTML: escaped, `quoted` paths as ``<code>``."""
    return Markup(re.sub(r"`([^`]*)`", r"<code>\1</code>", str(escape(text))))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("xmr.report", "templates"),
        autoescape=True,  # every value is escaped unless marked safe (Markup)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = value_text
    env.filters["code"] = _code
    env.filters["p"] = format_p
    env.tests["value"] = lambda cell: isinstance(cell, Value)
    return env


def _score(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "NaN"


def _ranked(
    view: StoreView, pred: dict[str, np.ndarray], row: int, kind: str, direction: str
) -> dict[str, Any]:
    """One method's line of a gallery query: its top :data:`GALLERY_TOP` (item, score, relevant)
    and the true item: ``in_top`` when it is there, else its rank and score in the list, else
    (the list missed it) the item itself, ``rank`` None."""
    candidates, scores, labels = pred["candidates"][row], pred["scores"][row], pred["labels"][row]
    real = int(np.count_nonzero(candidates >= 0))
    top = [
        {
            "rank": r + 1,
            "item": view.item(int(candidates[r]), kind),
            "score": _score(float(scores[r])),
            "rel": bool(labels[r]),
        }
        for r in range(min(GALLERY_TOP, real))
    ]
    hits = np.flatnonzero(labels[:real] > 0)
    if len(hits) and hits[0] < GALLERY_TOP:
        true = {"in_top": True, "rank": int(hits[0]) + 1}
    elif len(hits):
        r = int(hits[0])
        true = {
            "in_top": False,
            "rank": r + 1,
            "score": _score(float(scores[r])),
            "item": view.item(int(candidates[r]), kind),
        }
    else:
        query = int(pred["query"][row])
        true = {"in_top": False, "rank": None, "item": view.true_item(query, direction)}
    return {"top": top, "true": true, "list_size": real}


def _gallery_pair(report: Report, direction: str) -> tuple[str, dict, dict] | None:
    """(ranker row name, ranker run, cosine run) for the gallery of ``direction``: the row with
    the highest mean in-list R@1 among those whose lowest-seed run ranked the same test lists
    as CLIP cosine (so that both top 5s are drawn from the same candidates)."""

    def first_run(row: dict[str, Any]) -> dict[str, Any] | None:
        runs = [r for r in row["runs"] if run_predictions(r, direction) is not None]
        return min(runs, key=lambda r: str(r.get("seed"))) if runs else None

    base = next((first_run(r) for r in report.rows.values() if r["method"] == BASELINE), None)
    if base is None:
        return None
    bpred = run_predictions(base, direction)
    scored = [
        (row.get(f"{direction}/R@1", (-math.inf, 0))[0], name, run)
        for name, row in report.rows.items()
        if row["method"] != BASELINE and (run := first_run(row)) is not None
    ]
    for _, name, run in sorted(scored, key=lambda t: -t[0]):  # stable: table order on ties
        pred = run_predictions(run, direction)
        if pred is not None and bpred is not None and align_predictions(pred, bpred) is not None:
            return name, run, base
    return None


#: Each direction's gallery title.
GALLERY_TITLES = {"t2i": "caption → images", "i2t": "image → captions"}


def gallery_sections(
    report: Report, images: str | Path | None, n: int = 6, seed: int = 0
) -> list[dict[str, Any]]:
    """The gallery's sections, one per direction: ``{"direction", "title", "message"}`` plus,
    when both runs are there, ``"ranker"``, ``"seed"``, ``"store_readable"`` and ``"queries"``:
    per sampled query its ``item``, ``tag`` (``fix`` / ``break`` / ``same``), ``right`` (top-1
    right for both) and ``methods`` (label and :func:`_ranked` line, CLIP cosine first)."""
    sections = []
    views: dict[str, StoreView] = {}
    for direction in TABLE_ORDER:
        section: dict[str, Any] = {
            "direction": direction,
            "title": GALLERY_TITLES[direction],
            "message": "",
        }
        sections.append(section)
        pair = _gallery_pair(report, direction)
        if pair is None:
            section["message"] = "needs a CLIP-cosine run and a ranker run on the same test lists."
            continue
        name, run, base = pair
        pred, bpred = run_predictions(run, direction), run_predictions(base, direction)
        assert pred is not None and bpred is not None  # _gallery_pair paired them
        aligned = align_predictions(pred, bpred)
        assert aligned is not None
        store_path = str((run.get("store") or {}).get("path") or "")
        if store_path not in views:
            views[store_path] = StoreView(store_path, images)
        view = views[store_path]
        a_idx, b_idx = aligned
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(a_idx), size=min(n, len(a_idx)), replace=False))
        q_kind, c_kind = ("text", "image") if direction == "t2i" else ("image", "text")
        queries = []
        for i in picks:
            ra, rb = int(a_idx[i]), int(b_idx[i])
            ok_r, ok_b = bool(pred["labels"][ra, 0]), bool(bpred["labels"][rb, 0])
            tag = "fix" if ok_r and not ok_b else "break" if ok_b and not ok_r else "same"
            queries.append(
                {
                    "item": view.item(int(pred["query"][ra]), q_kind),
                    "tag": tag,
                    "right": ok_r,
                    "methods": [
                        {"label": "CLIP cosine", **_ranked(view, bpred, rb, c_kind, direction)},
                        {"label": name, **_ranked(view, pred, ra, c_kind, direction)},
                    ],
                }
            )
        section.update(
            ranker=name,
            seed=run.get("seed"),
            store_readable=view.available,
            queries=queries,
        )
    return sections


def _probe(report: Report) -> list[dict[str, Any]]:
    """The probe lines as groups: a lists directory's line and its per-direction ``- `` lines."""
    lines = report.probe_lines or ["No lists directory named by the runs' configs: no probe."]
    groups: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith("- ") and groups:
            groups[-1]["items"].append(line[2:])
        else:
            groups.append({"head": line, "items": []})
    return groups


def _plots(plots: dict[str, Path]) -> list[dict[str, str]]:
    out = []
    for name in ("recall_at_k.png", "validation_curves.png"):
        path = plots.get(name)
        if path is not None and Path(path).is_file():
            out.append({"name": name, "uri": data_uri(Path(path).read_bytes(), "image/png")})
    return out


def render_html(
    report: Report,
    images: str | Path | None = None,
    plots: dict[str, Path] | None = None,
    gallery: int = 6,
) -> str:
    """The page as a string (see the module docstring); ``gallery``: sampled queries per
    direction (0: no gallery)."""
    template = _environment().get_template(TEMPLATE)
    return template.render(
        report=report,
        recall_text=recall_definition(report.recall),
        directions=[direction_heading(d) for d in TABLE_ORDER],
        ks=report.ks,
        full=full_gallery_table(report.rows, report.ks, report.full_construction),
        no_full=NO_FULL_GALLERY,
        lists=list_table(report.rows, report.ks, report.recall, report.list_construction),
        directions_note=DIRECTIONS_NOTE,
        probe=_probe(report),
        significance=significance_table(report.significance),
        protocol_titles=PROTOCOL_TITLES,
        significance_caption=significance_caption(1, report.n_resamples, report.seed, report.test),
        full_test_note=full_test_note(report.significance),
        gain_rule=GAIN_RULE,
        unfinished=[
            {**job, "summary": error_summary(job.get("error"), 300)} for job in report.unfinished
        ],
        plots=_plots(plots or {}),
        images=str(images) if images else "",
        gallery=gallery_sections(report, images, gallery, report.seed) if gallery else [],
        gallery_top=GALLERY_TOP,
    )


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
