"""Execute ``notebooks/analysis.py`` as a notebook on a runs root; save the executed ``.ipynb``.

    python notebooks/run.py RUNS_ROOT [--out DIR] [--resamples N] [--timeout SECONDS]

``RUNS_ROOT`` is what ``xmr report ROOT`` reads: a sweep's output tree with the jobs'
``results.json``, ``predictions_*.npz`` and ``metrics.jsonl`` below it (not a report that
``xmr report --out`` wrote). The jupytext percent-format file is read into an nbformat notebook
and executed cell by cell by nbclient in an ipykernel kernel of *this* Python interpreter (the
same environment as the caller, never a kernelspec found elsewhere on the machine), with
``XMR_RUNS_ROOT``, ``XMR_NOTEBOOK_OUT`` and ``XMR_RESAMPLES`` set for it and this checkout first
on its ``PYTHONPATH``. The executed notebook, outputs included (tables rendered from Markdown,
plots inline), is written to ``DIR/analysis.ipynb`` (``DIR`` defaults to ``RUNS_ROOT``) beside
the notebook's PNG plots — also when a cell fails: the error is then in the saved notebook,
the failing cell is named on stderr and the exit status is 1.

Needs the ``dev`` extra (jupytext, nbclient, ipykernel). ``make notebook`` and ``.ci/run`` call
this script; tests/test_report.py calls :func:`execute_notebook` through it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.py"
#: The executed notebook's file name inside the output directory.
EXECUTED_NAME = "analysis.ipynb"
#: What the runner needs beyond xmr's own dependencies (all in the ``dev`` extra).
REQUIRED = ("jupytext", "nbclient", "ipykernel")


def missing_modules() -> list[str]:
    """The modules of :data:`REQUIRED` that this interpreter cannot import."""
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def kernel_env(runs_root: Path, out: Path, resamples: int) -> dict[str, str]:
    """The kernel's environment: the caller's, plus the notebook's settings. ``MPLBACKEND`` is
    dropped so that plots render inline (ipykernel's backend) instead of going nowhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "XMR_REPORT_DIR")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env["XMR_RUNS_ROOT"] = str(runs_root)
    env["XMR_NOTEBOOK_OUT"] = str(out)
    env["XMR_RESAMPLES"] = str(resamples)
    return env


def execute_notebook(
    runs_root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resamples: int = 10_000,
    timeout: int = 1800,
    notebook: str | os.PathLike[str] = NOTEBOOK,
) -> Path:
    """Execute ``notebook`` on ``runs_root``; return the path of the saved executed notebook.

    ``out``: the directory for ``analysis.ipynb`` and the plots (default ``runs_root``);
    ``timeout``: seconds one cell may run. Raises ``nbclient.exceptions.CellExecutionError``
    (after saving the notebook with the error in it) when a cell fails.
    """
    import jupytext
    import nbformat
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    runs_root = Path(runs_root).resolve()
    if not runs_root.is_dir():
        raise FileNotFoundError(f"{runs_root}: no such directory (give a sweep's runs root)")
    out_dir = Path(out).resolve() if out is not None else runs_root
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(notebook)  # jupytext percent format -> nbformat v4 notebook
    nb.metadata["kernelspec"] = {
        "name": NATIVE_KERNEL_NAME,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    # ipykernel's own kernelspec (this interpreter, sys.executable -m ipykernel_launcher); no
    # search of the kernel directories, where a "python3" of another environment may be found.
    km = KernelManager(
        kernel_name=NATIVE_KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True),
    )
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=NATIVE_KERNEL_NAME)
    target = out_dir / EXECUTED_NAME
    try:
        client.execute(
            cleanup_kc=True, cwd=os.getcwd(), env=kernel_env(runs_root, out_dir, resamples)
        )
    finally:
        nbformat.write(nb, str(target))  # with the outputs so far, the error's included
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python notebooks/run.py",
        description="Execute notebooks/analysis.py as a notebook on RUNS_ROOT and save "
        "the executed analysis.ipynb.",
    )
    parser.add_argument(
        "runs_root", help="the sweep's runs root (what `xmr report ROOT` reads, not its --out)"
    )
    parser.add_argument("--out", help="where analysis.ipynb and the plots go (default: RUNS_ROOT)")
    parser.add_argument(
        "--resamples", type=int, default=10_000, help="significance test resamples (10000)"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (1800)")
    args = parser.parse_args(argv)
    if missing := missing_modules():
        print(
            f"notebooks/run.py: error: {', '.join(missing)} not importable; install the dev "
            "extra (pip install -e '.[dev]')",
            file=sys.stderr,
        )
        return 2
    from nbclient.exceptions import CellExecutionError

    try:
        path = execute_notebook(
            args.runs_root, args.out, resamples=args.resamples, timeout=args.timeout
        )
    except FileNotFoundError as exc:
        print(f"notebooks/run.py: error: {exc}", file=sys.stderr)
        return 2
    except CellExecutionError as exc:
        out = Path(args.out or args.runs_root) / EXECUTED_NAME
        print(
            f"notebooks/run.py: a cell failed (saved with its error in {out}):\n{exc}",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
