"""What a person reads on the console: help, one-line errors, Ctrl-C, quiet libraries, metrics.

- :func:`run_command` runs a command's entry point: an error in what the user gave
  (:func:`is_user_error`: :class:`~xmr.utils.errors.UserError`, a missing file, a bad Hydra
  override or config option, a missing mandatory value) is printed as one line
  ``xmr <command>: error: <message>`` and exits 2; Ctrl-C prints ``xmr <command>: interrupted``
  with what to do next (:class:`~xmr.utils.errors.Interrupted`) and exits 130. ``XMR_DEBUG=1``
  (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
- :func:`quiet_library_noise` silences three messages every run printed and nobody acts on:
  Lightning's litlogger tip, torch's ``LeafSpec`` deprecation warning raised from Lightning's
  code, and (by :func:`xmr.runs.loggers.log_interval`, not a filter) the ``log_every_n_steps``
  warning.
- Epochs are counted from 1 wherever a person reads them (:func:`epoch_label`; the progress bar,
  the history lines, the end-of-run summary); stored records keep Lightning's 0-based index.
- Recall is shown in percent in console lines (:func:`metric_text`), as ``rsum`` already is;
  stored values stay fractions.
- :func:`hydra_help` and :func:`docstring_help` answer ``xmr COMMAND --help`` without importing
  the command (no torch, no Lightning): a second, not twenty.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import CompactHydraException, InstantiationException
from omegaconf.errors import MissingMandatoryValue

from xmr.utils.errors import Interrupted, UserError
from xmr.utils.paths import CONF_DIR

#: Exit status of a command stopped by an error in what the user gave (argparse's convention).
USER_ERROR_EXIT = 2
#: Exit status after Ctrl-C (128 + SIGINT).
INTERRUPT_EXIT = 130
#: Set to 1 to see the full traceback of a user error (``HYDRA_FULL_ERROR=1`` works too).
DEBUG_ENV = "XMR_DEBUG"


# -- errors --------------------------------------------------------------------------------------
def debug_requested() -> bool:
    """True when the user asked for full tracebacks (``XMR_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``)."""
    return (
        os.environ.get(DEBUG_ENV, "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"
    )


def is_user_error(exc: BaseException) -> bool:
    """An error the user fixes from its message: xmr's own (:class:`UserError`), a missing file
    or directory, a Hydra override / config-option error, or a mandatory value left unset."""
    if isinstance(exc, InstantiationException):  # a failing constructor: a bug, show it all
        return False
    return isinstance(
        exc,
        (
            UserError,
            FileNotFoundError,
            NotADirectoryError,
            CompactHydraException,
            MissingMandatoryValue,
        ),
    )


#: Lines of Hydra's and OmegaConf's messages that locate, not explain.
_NOISE = re.compile(r"^(full_key:|object_type=|reference_type=|Config search path|provider=)")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (and of its cause, for Hydra's wrapped OmegaConf errors) as one
    line: a header ending in ``:`` is followed by its items joined with ``, ``."""
    texts = [str(exc)]
    cause = exc.__cause__
    if isinstance(exc, CompactHydraException) and cause is not None and str(cause) not in texts[0]:
        texts.append(str(cause))
    out = ""
    listing = False
    for raw in "\n".join(texts).splitlines():
        line = raw.strip()
        if not line:
            continue
        if _NOISE.match(line):
            if line.startswith("Config search path"):
                break
            continue
        if not out:
            out = line
        elif out.endswith(":"):
            out += " " + line
            listing = True
        elif listing and not line.endswith(":") and " " not in line:
            out += ", " + line
        else:
            out += ("; " if out[-1] not in ".;" else " ") + line
            listing = False
    return out or type(exc).__name__


def run_command(name: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run ``func(*args)``, the entry point of ``xmr <name>``: user errors become one line and exit
    2, Ctrl-C a line saying how to resume and exit 130; any other error keeps its traceback.

    Hydra prints errors of a run itself and exits 1; while ``func`` runs, ``HYDRA_FULL_ERROR=1``
    makes it re-raise them here instead (unless the user set it: then nothing is shortened).
    """
    debug = debug_requested()
    quiet_library_noise()
    set_env = "HYDRA_FULL_ERROR" not in os.environ
    if set_env:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return func(*args)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        hint = str(exc) if isinstance(exc, Interrupted) else ""
        print(f"\nxmr {name}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(INTERRUPT_EXIT) from None
    except Exception as exc:
        if debug or not is_user_error(exc):
            raise
        print(f"xmr {name}: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
    finally:
        if set_env:
            os.environ.pop("HYDRA_FULL_ERROR", None)


# -- library noise -------------------------------------------------------------------------------
class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line, printed by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


#: Loggers Lightning's ``rank_zero_info`` writes through (the module attribute is set by whichever
#: of these was imported last).
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


def quiet_library_noise() -> None:
    """Silence the litlogger tip and torch's ``isinstance(treespec, LeafSpec)`` deprecation
    warning (raised inside Lightning's own code, once per run). Idempotent."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())


# -- numbers a person reads ----------------------------------------------------------------------
def epoch_label(index: int, max_epochs: int | None = None) -> str:
    """``epoch 3/10`` for Lightning's 0-based epoch ``index`` 2: epochs count from 1 on screen."""
    total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
    return f"epoch {index + 1}{total}"


def _metric_order(metric: str) -> tuple[int, str, int]:
    family, _, k = metric.partition("@")
    rank = {"recall": 0, "recall_found": 1, "ndcg": 2, "mrr": 3, "loss": 5}.get(family, 4)
    return rank, family, int(k) if k.isdigit() else 0


def metric_text(metric: str, value: float) -> str:
    """``R@1 19.0%`` for ``recall@1`` = 0.19 (recall in percent), ``rsum 151.0``,
    ``nDCG@10 0.412``, ``loss -0.2647``."""
    family, _, k = metric.partition("@")
    if family.endswith("recall"):  # recall, first_stage_recall
        label = ("first-stage " if family.startswith("first_stage") else "") + f"R@{k}"
        return f"{label} {100.0 * value:.1f}%"
    if family == "recall_found":
        return f"found@{k} {100.0 * value:.1f}%"
    if family == "rsum":
        return f"rsum {value:.1f}"
    label = {"ndcg": "nDCG", "mrr": "MRR"}.get(family, family)
    return f"{label}{'@' + k if k else ''} {value:.4g}"


def metrics_line(values: Mapping[str, float]) -> str:
    """One line of ``{stage}/{metric}`` and ``{stage}/{direction}/{metric}`` values:
    ``rsum 151.0 | i2t R@1 25.0% R@5 55.0% R@10 70.5% loss -0.27 | t2i ... | train loss -0.51``.
    """
    head: list[str] = []
    tail: list[str] = []
    directions: dict[str, list[tuple[tuple[int, str, int], str]]] = {}
    stages = {k.split("/", 1)[0] for k in values}
    main = next((s for s in ("test", "val") if s in stages), None)
    if main is None and len(stages) == 1:
        main = next(iter(stages))
    for key, value in values.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == main:
            directions.setdefault(parts[1], []).append(
                (_metric_order(parts[2]), metric_text(parts[2], value))
            )
        elif len(parts) == 2 and parts[0] == main:
            head.append(metric_text(parts[1], value))
        else:  # another stage's value (the training loss beside validation metrics)
            tail.append(" ".join([*parts[:-1], metric_text(parts[-1], value)]))
    groups = [" ".join(head)] if head else []
    for d in sorted(directions):
        groups.append(f"{d} " + " ".join(t for _, t in sorted(directions[d])))
    groups += sorted(tail)
    return " | ".join(groups)


# -- help ----------------------------------------------------------------------------------------
def _module_ast(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def module_docstring(module: str) -> str:
    """The docstring of ``module`` read from its source, without importing it (nor torch)."""
    doc = ast.get_docstring(_module_ast(module)) or ""
    # reST roles and literals read as plain text on a terminal
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def module_usage(module: str) -> str:
    """The ``USAGE`` string constant of ``module`` read from its source (``""`` without one)."""
    for node in _module_ast(module).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "USAGE" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return ""


def key_value_args(
    args: Sequence[str],
    usage: str,
    keys: Sequence[str],
    required: Sequence[str] = (),
    overrides: bool = False,
) -> tuple[dict[str, str], list[str]]:
    """Parse the ``key=value`` words of a command (``xmr eval``, ``embed``, ``eval-zeroshot``):
    ``({key: value} of ``keys``, other words)``. Another ``dotted.key=value`` is returned among
    the other words when ``overrides`` (a config override), else refused; so is a word without
    ``=`` and a missing ``required`` key (:class:`UserError` naming it, then ``usage``)."""
    opts: dict[str, str] = {}
    rest: list[str] = []
    for word in args:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise UserError(f"{word!r} is not key=value ({usage})")
        if key in keys:
            opts[key] = value
        elif overrides:
            rest.append(word)
        else:
            raise UserError(f"unknown key {key!r}; keys: {', '.join(keys)} ({usage})")
    missing = [k for k in required if k not in opts]
    if missing:
        raise UserError(f"missing {', '.join(k + '=...' for k in missing)} ({usage})")
    return opts, rest


def _paragraphs(text: str, n: int | None) -> str:
    parts = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(parts if n is None else parts[:n])


def docstring_help(module: str) -> str:
    """Help of a command that takes ``key=value`` words: its ``USAGE`` and its docstring."""
    usage = module_usage(module)
    head = f"{usage}\n\n" if usage else ""
    return f"{head}{_paragraphs(module_docstring(module), None)}\n"


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def hydra_help(
    command: str,
    module: str,
    config: str,
    overrides: Sequence[str] = (),
    plus_groups: Sequence[str] = (),
) -> str:
    """``xmr COMMAND --help`` of a Hydra command, from ``conf/`` alone: usage, the command's
    summary (first two paragraphs of its docstring), the config groups its config uses with the
    current choice starred (``overrides`` applied when they compose), the groups added with
    ``+``, and ``conf/<config>.yaml`` itself (its comments document the keys)."""
    note = ""
    multirun = any(o in ("-m", "--multirun") for o in overrides)
    # A sweep's axes (loss=a,b) name no single choice: show the others.
    wanted = [
        o
        for o in overrides
        if o not in ("-m", "--multirun")
        and not (
            multirun and "," in (v := o.partition("=")[2]) and not v.startswith(("[", "'", '"'))
        )
    ]
    try:
        choices = _choices(config, wanted)
    except Exception as exc:  # noqa: BLE001 - sweep values, a typo: show the defaults instead
        choices = _choices(config, [])
        note = f"(choices shown without the overrides: {one_line(exc)})\n"
    lines = [
        f"usage: xmr {command} [-m] [GROUP=OPTION ...] [KEY=VALUE ...] [+KEY=VALUE ...]",
        "",
        _paragraphs(module_docstring(module), 2),
        "",
        "Config groups (GROUP=OPTION; * = chosen now):",
    ]
    if note:
        lines.append("  " + note.rstrip())
    groups = sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/"))
    width = max([len(g) for g in groups] + [len(g) + 1 for g in plus_groups] + [8]) + 2
    for group in groups:
        chosen = choices[group]
        opts = [("*" if o == chosen else "") + o for o in _group_options(group)]
        extra = "" if chosen is not None else "   (none chosen)"
        lines.append(_wrapped(f"  {group:{width}s}", ", ".join(opts) + extra))
    if plus_groups:
        lines += ["", "Groups not in the defaults list, added with a leading +:"]
        for group in plus_groups:
            opts = _group_options(group)
            example = f"   e.g. xmr {command} -m +{group}={opts[0]}" if opts else ""
            lines.append(_wrapped(f"  {'+' + group:{width}s}", ", ".join(opts) + example))
    text = (Path(CONF_DIR) / f"{config}.yaml").read_text(encoding="utf-8").rstrip()
    lines += [
        "",
        f"conf/{config}.yaml (override a key: KEY=VALUE; a group's keys: GROUP.KEY=VALUE):",
        textwrap.indent(text, "  "),
        "",
        "Hydra flags: -m/--multirun runs one job per combination of comma-separated values",
        f"  (xmr {command} -m KEY=A,B KEY2=C,D); --cfg job prints the composed config",
        f"  (xmr {command} --cfg job [overrides]); --hydra-help lists Hydra's own options.",
        f"An error in what you give prints one line and exits 2 ({DEBUG_ENV}=1: full traceback).",
    ]
    return "\n".join(lines) + "\n"


def _wrapped(head: str, body: str, width: int = 100) -> str:
    return textwrap.fill(body, width=width, initial_indent=head, subsequent_indent=" " * len(head))


def _choices(config: str, overrides: Sequence[str]) -> dict[str, str | None]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="help"):
        cfg = compose(config, overrides=list(overrides), return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)
