"""What a person sees on the console: fast help, one-line user errors, Ctrl-C, quiet runs,
1-based epochs, recall in percent, the end-of-run summary."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from _compose import make_cfg, tiny_overrides
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from xmr import cli
from xmr.callbacks.progress import EpochRichProgressBar, EpochTQDMProgressBar
from xmr.runs.summary import best_epoch, summary_lines
from xmr.utils.console import (
    epoch_label,
    key_value_args,
    metrics_line,
    one_line,
    quiet_library_noise,
    run_command,
)
from xmr.utils.errors import Interrupted, UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def argv_restored(monkeypatch):
    """``xmr.cli.main`` sets ``sys.argv`` for Hydra; Hydra leaves its global state behind."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("XMR_DEBUG", raising=False)
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # a run's config (its choices name later runs' methods)


# -- help -----------------------------------------------------------------------------------------
def test_help_of_every_command_imports_neither_torch_nor_lightning() -> None:
    """``xmr COMMAND --help`` is answered before the command's module is imported (it took
    ~20 s with torch and Lightning; now well under a second)."""
    script = (
        "import contextlib, io, sys, time\n"
        "from xmr import cli\n"
        "for name in cli.COMMANDS:\n"
        "    t0 = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        cli.main([name, '--help'])\n"
        "    assert out.getvalue().strip(), name\n"
        "    print(name, round(time.perf_counter() - t0, 2))\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == len(cli.COMMANDS)


def test_train_help_lists_its_groups_and_says_sweep_takes_a_plus(capsys) -> None:
    cli.main(["train", "loss=listnet", "--help"])
    text = capsys.readouterr().out
    groups = text.split("Config groups", 1)[1].split("\n\n", 1)[0]
    assert "*listnet" in groups and "*ranker" in groups  # the overrides' choices are starred
    assert "\n  sweep" not in groups, "+sweep is not a plain group"
    assert "+sweep" in text and "xmr train -m +sweep=" in text
    assert "conf/train.yaml" in text and "monitor: val/rsum" in text


def test_extract_help_lists_only_its_own_config(capsys) -> None:
    cli.main(["extract", "-h"])
    text = capsys.readouterr().out
    groups = text.split("Config groups", 1)[1].split("\n\n", 1)[0]
    listed = [line.split()[0] for line in groups.splitlines()[1:] if line.strip()]
    assert listed == ["encoder", "paths"]
    assert "tiny_random   (none chosen)" in groups  # the offline trial run's model
    assert "annotations: ???" in text and "loss" not in groups and "+sweep" not in text


def test_xmr_help_documents_the_three_argument_styles(capsys) -> None:
    cli.main(["--help"])
    text = capsys.readouterr().out
    assert "Hydra overrides (synth, mine, train, train-ensemble, extract)" in text
    assert "key=value words (eval, embed, eval-zeroshot)" in text
    assert "flags (report)" in text
    for word in ("eval", "embed", "eval-zeroshot", "report"):
        cli.main([word, "--help"])
        assert f"usage: xmr {word}" in capsys.readouterr().out


def test_the_command_table_names_each_hydra_commands_own_config() -> None:
    for name, command in cli.COMMANDS.items():
        if command.config is None:
            continue
        path = REPO / (command.module.replace(".", "/") + ".py")
        (func,) = [
            n
            for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef) and n.name == command.func
        ]
        (deco,) = func.decorator_list
        config = {k.arg: k.value.value for k in deco.keywords if k.arg == "config_name"}
        assert config["config_name"] == command.config, name


# -- errors ---------------------------------------------------------------------------------------
def test_a_bad_override_is_one_line_and_exit_2(argv_restored, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "data=synthetic_tiny", "data.batch_sise=8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "xmr train: error: Could not override 'data.batch_sise'. To append to your config use "
        "+data.batch_sise=8; Key 'batch_sise' is not in struct"
    ]


def test_a_missing_store_is_one_line_and_exit_2(argv_restored, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "data=flickr30k", f"data.store={tmp_path}/none", f"hydra.run.dir={run}"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(
        f"xmr train: error: {tmp_path}/none/manifest.json: no feature store"
    )
    assert "Traceback" not in "\n".join(lines)
    assert json.loads((run / "failed.json").read_text())["error"].startswith("FileNotFoundError")


def test_debug_shows_the_traceback(argv_restored, monkeypatch) -> None:
    monkeypatch.setenv("XMR_DEBUG", "1")
    with pytest.raises(UserError, match="missing run_dir"):
        cli.main(["eval", "ckpt=x"])


def test_key_value_commands_parse_alike() -> None:
    usage = "usage: xmr eval run_dir=DIR"
    opts, rest = key_value_args(["run_dir=a", "data.x=1"], usage, ("run_dir",), overrides=True)
    assert opts == {"run_dir": "a"} and rest == ["data.x=1"]
    with pytest.raises(UserError, match="unknown key 'x'"):
        key_value_args(["x=1"], usage, ("run_dir",))
    with pytest.raises(UserError, match="'oops' is not key=value"):
        key_value_args(["oops"], usage, ("run_dir",))
    with pytest.raises(UserError, match=r"missing run_dir=\.\.\."):
        key_value_args([], usage, ("run_dir",), required=("run_dir",))


def test_hydra_option_lists_become_one_line() -> None:
    class Fake(Exception):
        pass

    msg = (
        "In 'train': Could not find 'model/nope'\n\nAvailable options in 'model':\n\tcosine\n"
        "\tranker\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf"
    )
    assert one_line(Fake(msg)) == (
        "In 'train': Could not find 'model/nope'; Available options in 'model': cosine, ranker"
    )


def test_run_command_exit_codes(capsys) -> None:
    def interrupted() -> None:
        raise Interrupted("run the same command again to resume from X/last.ckpt")

    with pytest.raises(SystemExit) as exc:
        run_command("train", interrupted)
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "xmr train: interrupted; run the same command again to resume from X/last.ckpt"
    )

    def bug() -> None:
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_command("train", bug)


def test_ctrl_c_during_training_says_how_to_resume(tiny_store, tmp_path, monkeypatch) -> None:
    from xmr.models.module import RankingModule
    from xmr.train import train

    overrides = tiny_overrides(tiny_store, f"data.lists_root={tmp_path / 'lists'}", "loss=listnet")
    cfg = make_cfg(tmp_path, [*overrides, "trainer.max_epochs=1", "test=false"])
    train(cfg)  # one epoch: last.ckpt exists
    step = RankingModule.training_step

    def ctrl_c_in_epoch_2(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if self.current_epoch >= 1:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    monkeypatch.setattr(RankingModule, "training_step", ctrl_c_in_epoch_2)
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C once it shut down
    try:
        with pytest.raises(Interrupted) as exc:
            train(make_cfg(tmp_path, [*overrides, "trainer.max_epochs=3"]))
    finally:
        signal.signal(signal.SIGINT, sigint)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(exc.value) == f"run the same command again to resume from {last}"
    assert not (tmp_path / "run" / "failed.json").exists()  # nothing failed


# -- quiet runs, epochs from 1, percent -----------------------------------------------------------
def test_library_noise_is_silenced() -> None:
    import lightning_utilities.core.rank_zero as rank_zero
    from lightning.pytorch.utilities import rank_zero_info
    from torch.utils._pytree import LeafSpec

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_library_noise()
        LeafSpec()
    assert not [w for w in seen if "LeafSpec" in str(w.message)]
    shown: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: shown.append(record.getMessage())  # type: ignore[method-assign]
    logger = rank_zero.log
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        rank_zero_info("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("a message that stays")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert shown == ["a message that stays"]


def test_epochs_count_from_one_in_the_bar_and_the_lines() -> None:
    trainer = SimpleNamespace(current_epoch=2, max_epochs=3, num_training_batches=4)
    assert epoch_label(2, 3) == "epoch 3/3" and epoch_label(0) == "epoch 1"
    rich = EpochRichProgressBar()
    rich._trainer = trainer
    assert rich._get_train_description(2).strip() == "Epoch 3/3"
    bar = EpochTQDMProgressBar()
    bar._trainer = trainer
    bar._train_progress_bar = SimpleNamespace(
        reset=lambda: None, set_description=lambda d: setattr(bar, "shown", d)
    )
    bar.init_train_tqdm = lambda: bar._train_progress_bar
    bar.on_train_epoch_start(trainer)
    assert bar.shown == "Epoch 3/3"


def test_console_lines_show_recall_in_percent() -> None:
    line = metrics_line(
        {
            "val/rsum": 151.0,
            "val/t2i/recall@10": 0.6,
            "val/t2i/recall@1": 0.19,
            "val/t2i/recall@5": 0.42,
            "train/loss": 0.5,
        }
    )
    assert line == "rsum 151.0 | t2i R@1 19.0% R@5 42.0% R@10 60.0% | train loss 0.5"


def test_the_end_of_run_summary(tmp_path) -> None:
    history = [
        {"stage": "val", "epoch": 0, "val/rsum": 100.0},
        {"stage": "val", "epoch": 1, "val/rsum": 151.0},
        {"stage": "val", "epoch": 2, "val/rsum": 140.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    assert best_epoch(tmp_path, "val/rsum") == 1 and best_epoch(tmp_path, "val/rsum", "min") == 0
    results = {
        "method": "listnet",
        "seed": 0,
        "synthetic": True,
        "config": {"data": {"name": "synthetic_tiny"}},
        "epochs_run": 3,
        "test/t2i/recall@1": 0.19,
        "test/i2t/recall@1": 0.255,
        "test_full/t2i/recall@1": 0.17,
        "test_full/i2t/recall@1": 0.2,
        "full_gallery": {"top_k": 50},
        "best_val/rsum": 151.0,
        "checkpoint": str(tmp_path / "checkpoints" / "best.ckpt"),
    }
    assert summary_lines(results, tmp_path, max_epochs=3) == [
        "xmr train: listnet, seed 0, on synthetic_tiny (SYNTHETIC store): trained 3 epochs",
        "  test R@1    t2i 19.0%  i2t 25.5%   in the lists (list protocol)",
        "  test R@1    t2i 17.0%  i2t 20.0%   full gallery (first stage's top 50 re-ranked)",
        "  best val    rsum 151.0 at epoch 2/3 (checkpoints/best.ckpt)",
        f"  results     {tmp_path / 'results.json'}",
    ]


@pytest.mark.slow  # `xmr train` in a subprocess
def test_a_tiny_train_prints_no_noise_and_ends_with_a_summary(tiny_store, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XMR_LOGS": str(tmp_path / "logs")}
    cmd = [
        sys.executable,
        "-m",
        "xmr.cli",
        "train",
        "data=synthetic_tiny",
        f"data.store={tiny_store}",
        "data.synth=null",
        f"data.lists_root={tmp_path / 'lists'}",
        "loss=listnet",
        "trainer.max_epochs=3",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for noise in ("litlogger", "LeafSpec", "log_every_n_steps"):
        assert noise not in text, (noise, text[-3000:])
    assert "val epoch 3/3: rsum" in text and "Epoch 2/2" not in text
    assert "R@1" in text and "recall@1=" not in text
    tail = proc.stdout.strip().splitlines()[-5:]
    assert tail[0].startswith("xmr train: listnet, seed 0, on synthetic_tiny (SYNTHETIC store)")
    assert tail[-1].strip().startswith("results") and tail[-1].endswith("results.json")
    assert Path(tail[-1].split()[-1]).exists(), f"{time.monotonic() - t0:.0f} s"
