"""Safe by default: no pickles are loaded, configs cannot run foreign code, secrets stay out of
the files a run writes. Part of it audits the source (AST), part runs a tiny SYNTHETIC training.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
from _compose import make_cfg

from xmr.eval import evaluate
from xmr.train import train
from xmr.utils.instantiate import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SOURCES = sorted((REPO / "xmr").rglob("*.py"))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call ``<something>.name(...)`` or ``name(...)`` in the xmr package."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    found.append((path, node))
    return found


def _kw(call: ast.Call, key: str) -> object:
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def _where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(REPO)}:{call.lineno}"


def test_every_torch_load_is_weights_only() -> None:
    loads = [(p, c) for p, c in _calls("load") if ast.unparse(c.func).startswith("torch.")]
    assert loads, "expected at least one torch.load (xmr.models.build.load_weights)"
    bad = [_where(p, c) for p, c in loads if _kw(c, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True at {bad}"


def test_lightning_resume_loads_weights_only() -> None:
    fits = _calls("fit")
    assert fits
    bad = [_where(p, c) for p, c in fits if _kw(c, "weights_only") is not True]
    assert not bad, f"Trainer.fit(ckpt_path=...) without weights_only=True at {bad}"


def test_every_numpy_load_refuses_pickles() -> None:
    loads = [(p, c) for p, c in _calls("load") if ast.unparse(c.func) in ("np.load", "numpy.load")]
    assert loads
    bad = [_where(p, c) for p, c in loads if _kw(c, "allow_pickle") is not False]
    assert not bad, f"np.load without allow_pickle=False at {bad}"


def test_open_clip_loads_local_checkpoints_weights_only() -> None:
    """``xmr extract`` hands local weight files to open_clip, whose loader defaults to it."""
    open_clip = pytest.importorskip("open_clip")
    default = inspect.signature(open_clip.create_model_and_transforms).parameters["weights_only"]
    assert default.default is True


def test_instantiate_only_through_the_restricted_helper() -> None:
    offenders = []
    for path in SOURCES:
        if path.name == "instantiate.py" and path.parent.name == "utils":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("hydra.utils.instantiate", "hydra.utils.call", "from hydra.utils import"):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------- run-level


@pytest.mark.parametrize(
    "override",
    [
        "+evil={_target_:os.system,_args_:['touch PWNED']}",
        "+callbacks.evil={_target_:subprocess.call,_args_:[[touch,PWNED]]}",
        "+model.net.extra={_target_:builtins.eval,_args_:['1']}",
        "+trainer.plugins=[{_target_:os.system,_args_:['touch PWNED']}]",
    ],
)
def test_foreign_target_anywhere_is_refused_at_start_up(
    tmp_path: Path, override: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", override])
    with pytest.raises(ConfigError, match="only targets in xmr, torch, lightning"):
        train(cfg)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "data").exists()


SECRET = "0123456789abcdef0123456789abcdef01234567"  # shaped like a W&B API key


@pytest.fixture(scope="module")
def secret_run(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("secret")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_API_KEY", SECRET)
    # The command line as results.json's provenance records it: overrides holding the secret.
    mp.setattr(sys, "argv", ["xmr train", "+wandb_api_key=" + SECRET, "+other=x" + SECRET])
    try:
        cfg = make_cfg(
            tmp,
            [
                "data=synthetic_tiny",
                f"data.store={tiny_store}",
                "data.synth=null",
                f"data.lists_root={tmp / 'lists'}",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "+wandb_api_key=" + SECRET,  # a secret-named key
                "+note=${oc.env:WANDB_API_KEY}",  # an innocent key resolving to the env secret
            ],
        )
        train(cfg)
    finally:
        mp.undo()
    return tmp / "run"


def test_secrets_are_not_written_to_run_files(secret_run: Path) -> None:
    files = [p for p in secret_run.rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert {"config.yaml", "results.json"} <= {p.name for p in files}
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    results = json.loads((secret_run / "results.json").read_text())
    assert results["config"]["wandb_api_key"] == "***" and results["config"]["note"] == "***"
    assert results["provenance"]["argv"] == ["xmr train", "+wandb_api_key=***", "+other=x***"]


def test_eval_results_scrub_secrets(
    secret_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``xmr eval`` writes through the same scrubbing writer as ``xmr train``: a secret given as
    an override, or resolved from the environment, never reaches its output."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    out = tmp_path / "eval"
    evaluate(secret_run, ["api_token=" + SECRET, "note=${oc.env:WANDB_API_KEY}"], out=out)
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert "eval_results.json" in {p.name for p in files}
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    config = json.loads((out / "eval_results.json").read_text())["config"]
    assert config["api_token"] == "***" and config["note"] == "***"


def test_checkpoints_hold_no_pickled_objects(secret_run: Path) -> None:
    """Lightning's own resume and xmr eval load them with weights_only=True: that must work."""
    for ckpt in sorted((secret_run / "checkpoints").glob("*.ckpt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert "state_dict" in state and "xmr.rng" in state["callbacks"]


def test_failed_json_scrubs_secrets_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", "optimizer.lr=-1", "+api_token=" + SECRET])
    with pytest.raises(ConfigError):
        train(cfg)
    text = (tmp_path / "run" / "failed.json").read_text()
    assert SECRET not in text and json.loads(text)["config"]["api_token"] == "***"


# ------------------------------------------------------------- targets resolved, not matched


@pytest.mark.parametrize(
    "target",
    [
        "torch.load",  # unpickles whatever file it is given
        "torch.serialization.load",
        "torch.hub.load",
        "torch.save",
        "torch.jit.load",
        "xmr.data.store.shutil.copyfile",  # a foreign function reached through an xmr module
        "xmr.utils.instantiate.hydra.utils.instantiate",
        "xmr.utils.instantiate.instantiate",  # an xmr function that is not a builder
        "torch.Tensor",  # a torch class that is not a part of a run
        "torch.nn.init.normal_",
        "lightning.pytorch.utilities.rank_zero_only",
        "xmr.no_such_module.Thing",
    ],
)
def test_target_must_resolve_to_something_xmr_builds(target: str) -> None:
    from xmr.utils.instantiate import check_target

    with pytest.raises(ConfigError, match="may be instantiated"):
        check_target(target, where="callbacks.x")


@pytest.mark.parametrize(
    "target",
    sorted(
        {
            line.split("_target_:", 1)[1].strip()
            for path in CONF.rglob("*.yaml")
            # conf/hydra/: Hydra's own config (the launcher), built by Hydra before xmr runs
            if "hydra" not in path.relative_to(CONF).parts[:1]
            for line in path.read_text(encoding="utf-8").splitlines()
            if "_target_:" in line and not line.lstrip().startswith("#")
        }
    ),
)
def test_every_shipped_target_is_accepted(target: str) -> None:
    from xmr.utils.instantiate import check_target

    assert check_target(target) is not None


def test_pickle_target_from_a_run_config_on_disk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's config.yaml read back by `xmr eval` (or given on the command line) cannot
    instantiate torch.load: the pickle below would create PWNED if it were ever loaded."""
    import pickle

    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (tmp_path / "PWNED",))

    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(pickle.dumps(Evil()))
    override = "+callbacks.evil={_target_:torch.load,f:" + str(bomb) + ",weights_only:false}"
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", override])
    with pytest.raises(ConfigError, match="callbacks.evil._target_ = 'torch.load'"):
        train(cfg)
    assert not (tmp_path / "PWNED").exists()
    from omegaconf import OmegaConf

    from xmr.utils.instantiate import instantiate

    on_disk = tmp_path / "config.yaml"
    OmegaConf.save(
        OmegaConf.create({"_target_": "torch.load", "f": str(bomb), "weights_only": False}),
        on_disk,
    )
    with pytest.raises(ConfigError, match="torch.load"):
        instantiate(OmegaConf.load(on_disk), where="callbacks.evil")
    assert not (tmp_path / "PWNED").exists()


def test_copyfile_through_an_xmr_module_is_refused(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from xmr.utils.instantiate import instantiate

    src = tmp_path / "src.txt"
    src.write_text("x")
    cfg = OmegaConf.create(
        {"_target_": "xmr.data.store.shutil.copyfile", "src": str(src), "dst": str(tmp_path / "d")}
    )
    with pytest.raises(ConfigError, match="resolves to shutil.copyfile"):
        instantiate(cfg, where="data")
    assert not (tmp_path / "d").exists()
