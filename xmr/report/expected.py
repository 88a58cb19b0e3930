"""Expected numbers of a reproduction and the check of a run against them.

``reproducibility/expected_quick.json`` (written by ``python -m xmr.reproduce --quick
--write-expected``, checked after every ``xmr.reproduce`` run with the same settings) holds, in
the format ``xmr-expected/1``::

    {"format": "xmr-expected/1",
     "settings": {"data": "synthetic_demo", "epochs": 1, "seeds": 1,
                  "losses": [...], "baselines": [...]},      # the plan the numbers belong to
     "produced": {"command": ..., "xmr_commit": ..., "dirty": false, "date": ..., ...},
     "metrics": {"<method>": {"<results.json key>": {"value": 0.412, "tol": 0.03}, ...}, ...}}

A metric passes when ``|observed - value| <= tol``; ``observed`` is the mean of the key over the
method's finished runs (one per seed) below the reproduction's directory. A metric the run does
not have (a method that did not finish) fails as ``missing``.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmr.models.scorer import scorer_kind

EXPECTED_FORMAT = "xmr-expected/1"
#: The ``settings`` keys: the plan an expected file's numbers belong to.
SETTINGS_KEYS = ("data", "epochs", "seeds", "losses", "baselines")
#: The metrics an expected file holds per method: Recall@1/5/10 of both protocols, both directions.
METRIC_KEYS: tuple[str, ...] = tuple(
    f"{protocol}/{direction}/recall@{k}"
    for protocol in ("test", "test_full")
    for direction in ("t2i", "i2t")
    for k in (1, 5, 10)
)
#: Default tolerances (absolute, recall as a fraction): a parameter-free scorer's numbers only
#: depend on the generated store and float summation order; a trained model's also on every
#: floating-point step of its training (BLAS, thread count, CPU vs GPU). Measured for the quick
#: reproduction (200 list queries per direction, so one query = 0.005): rerun with threads=2
#: instead of 1 on the same machine, the fixed scorers did not move, the pair baselines and the
#: re-ranker moved by <= 0.001, the paper's rankers (near chance after one epoch) by <= 0.025.
TOL_FIXED = 0.01
TOL_TRAINED = 0.05


def validate_expected(doc: Any, where: str = "expected file") -> None:
    """Raise ``ValueError`` naming the rule when ``doc`` is not a well-formed expected file."""

    def fail(msg: str) -> None:
        raise ValueError(f"{where}: {msg}")

    if not isinstance(doc, dict):
        fail("not a JSON object")
    if doc.get("format") != EXPECTED_FORMAT:
        fail(f"format must be {EXPECTED_FORMAT!r}, got {doc.get('format')!r}")
    settings = doc.get("settings")
    if not isinstance(settings, dict) or set(settings) != set(SETTINGS_KEYS):
        fail(f"settings must be an object with exactly the keys {list(SETTINGS_KEYS)}")
    for key in ("epochs", "seeds"):
        if not isinstance(settings[key], int) or isinstance(settings[key], bool):
            fail(f"settings.{key} must be an integer")
    for key in ("losses", "baselines"):
        if not isinstance(settings[key], list) or not all(
            isinstance(x, str) for x in settings[key]
        ):
            fail(f"settings.{key} must be a list of strings")
    produced = doc.get("produced")
    if not isinstance(produced, dict):
        fail("produced must be an object (command, xmr_commit, date)")
    for key in ("command", "xmr_commit", "date"):
        if not isinstance(produced.get(key), str) or not produced[key]:
            fail(f"produced.{key} must be a non-empty string")
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        fail("metrics must be a non-empty object {method: {metric: {value, tol}}}")
    for method, entries in metrics.items():
        if not isinstance(entries, dict) or not entries:
            fail(f"metrics[{method!r}] must be a non-empty object")
        for key, entry in entries.items():
            name = f"metrics[{method!r}][{key!r}]"
            if not isinstance(entry, dict) or set(entry) != {"value", "tol"}:
                fail(f"{name} must be an object with exactly the keys 'value' and 'tol'")
            for field in ("value", "tol"):
                v = entry[field]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    fail(f"{name}.{field} must be a finite number, got {v!r}")
            if entry["tol"] < 0:
                fail(f"{name}.tol must be >= 0, got {entry['tol']!r}")


def load_expected(path: str | Path) -> dict[str, Any]:
    """The expected file at ``path``, validated (``ValueError`` naming the file otherwise)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable expected file ({err})") from err
    validate_expected(doc, str(path))
    return doc


def observed_metrics(
    runs: Iterable[Mapping[str, Any]], keys: Iterable[str] = METRIC_KEYS
) -> dict[str, dict[str, float]]:
    """Per method (``results.json`` ``method``), the mean of each of ``keys`` over its runs."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    keys = list(keys)
    for run in runs:
        for key in keys:
            value = run.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[str(run["method"])][key].append(float(value))
    return {
        method: {key: sum(v) / len(v) for key, v in per_key.items()}
        for method, per_key in values.items()
    }


def fixed_methods(runs: Iterable[Mapping[str, Any]]) -> set[str]:
    """The methods whose runs have no parameters (``ScorerKind.fits`` false)."""
    fixed = set()
    for run in runs:
        model = (run.get("config") or {}).get("model")
        if model is not None and not scorer_kind(model).fits:
            fixed.add(str(run["method"]))
    return fixed


@dataclass(frozen=True)
class CheckRow:
    """One metric of one method: expected value and tolerance, observed value (None: missing)."""

    method: str
    metric: str
    expected: float
    tol: float
    observed: float | None

    @property
    def passed(self) -> bool:
        # A hair of slack for the decimal rounding of the file's numbers.
        return self.observed is not None and abs(self.observed - self.expected) <= self.tol + 1e-9

    @property
    def status(self) -> str:
        if self.observed is None:
            return "FAIL (missing)"
        return "pass" if self.passed else "FAIL"


def check(
    expected: Mapping[str, Any], observed: Mapping[str, Mapping[str, float]]
) -> list[CheckRow]:
    """Every metric of ``expected`` (a validated expected file) against ``observed``."""
    rows = []
    for method, entries in expected["metrics"].items():
        for metric, entry in entries.items():
            got = observed.get(method, {}).get(metric)
            rows.append(CheckRow(method, metric, float(entry["value"]), float(entry["tol"]), got))
    return rows


def check_table(rows: list[CheckRow]) -> str:
    """The rows as a Markdown table (values in percent, like the report), then a summary line."""
    lines = [
        "| method | metric | expected (%) | tolerance (%) | observed (%) | diff (%) | result |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        got = "—" if r.observed is None else f"{100 * r.observed:.2f}"
        diff = "—" if r.observed is None else f"{100 * (r.observed - r.expected):+.2f}"
        lines.append(
            f"| {r.method} | {r.metric} | {100 * r.expected:.2f} | ±{100 * r.tol:.2f} | {got} "
            f"| {diff} | {r.status} |"
        )
    failed = sum(not r.passed for r in rows)
    verdict = "PASS" if failed == 0 else "FAIL"
    lines.append("")
    lines.append(f"{verdict}: {len(rows) - failed} of {len(rows)} metrics within tolerance")
    return "\n".join(lines) + "\n"


def expected_document(
    observed: Mapping[str, Mapping[str, float]],
    fixed: set[str],
    settings: Mapping[str, Any],
    produced: Mapping[str, Any],
    *,
    tol_fixed: float = TOL_FIXED,
    tol_trained: float = TOL_TRAINED,
    digits: int = 4,
) -> dict[str, Any]:
    """An expected file from a run's ``observed`` metrics (the ``fixed`` methods get
    ``tol_fixed``, the others ``tol_trained``), validated."""
    metrics = {
        method: {
            key: {
                "value": round(float(per_key[key]), digits),
                "tol": tol_fixed if method in fixed else tol_trained,
            }
            for key in METRIC_KEYS
            if key in per_key
        }
        for method, per_key in sorted(observed.items())
    }
    doc = {
        "format": EXPECTED_FORMAT,
        "settings": {key: settings[key] for key in SETTINGS_KEYS},
        "produced": dict(produced),
        "metrics": metrics,
    }
    validate_expected(doc, "new expected file")
    return doc


def dumps_expected(doc: Mapping[str, Any]) -> str:
    """``doc`` as JSON text, one line per metric (``{"value": ..., "tol": ...}``)."""
    text = json.dumps(doc, indent=1)
    return (
        re.sub(
            r'\{\s*"value": ([^,\s]+),\s*"tol": ([^\s}]+)\s*\}',
            r'{"value": \1, "tol": \2}',
            text,
        )
        + "\n"
    )
