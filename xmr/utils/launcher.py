"""``hydra/launcher=local``: a sweep's jobs in parallel worker processes, one GPU per worker.

``xmr train -m hydra/launcher=local loss=listnet,ranknet seed=0,1,2,3`` runs the jobs in joblib's
loky worker processes (``conf/hydra/launcher/local.yaml``; joblib comes with
``pip install 'xmr[cluster]'``), like Hydra's joblib launcher, plus the device plan of
:func:`xmr.utils.devices.assign_devices`: on a node with G GPUs, G x ``XMR_JOBS_PER_GPU`` jobs at
once, each worker pinned to one GPU by :func:`xmr.utils.devices.claim_gpu_slot`, its start-up
hook (run before it unpickles a job, hence before torch); without a GPU, ``XMR_JOBS`` (default 2)
jobs at once and nothing pinned. With one job at a time joblib runs the jobs in the launching
process itself.

Hydra instantiates launchers only from the ``hydra_plugins`` package: the class it builds is
``hydra_plugins.xmr_launcher.LocalLauncher``, which is this module's :class:`LocalLauncher`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from xmr.utils.devices import (
    DevicePlan,
    assign_devices,
    claim_gpu_slot,
    default_lock_dir,
    slot_table,
    visible_gpus,
)

__all__ = ["LocalLauncher", "plan_of"]

log = logging.getLogger(__name__)


def plan_of(
    n_jobs: int | None, jobs_per_gpu: int, gpus: Sequence[str]
) -> tuple[DevicePlan, list[tuple[str, str]]]:
    """The sweep's device plan and its slots (``(GPU name, lock name)``) for the GPUs ``gpus``."""
    plan = assign_devices(n_jobs, len(gpus), jobs_per_gpu)
    return plan, slot_table(plan, gpus)


def _execute_job(
    idx: int,
    overrides: Sequence[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One job in a worker: the sweep config of ``overrides``, then Hydra's ``run_job``."""
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class LocalLauncher(Launcher):
    """Hydra's joblib launcher with a device plan (module docstring).

    ``n_jobs``: jobs at once (``XMR_JOBS``; None = every GPU slot, or 2 without a GPU);
    ``jobs_per_gpu``: the most jobs one GPU runs at once (``XMR_JOBS_PER_GPU``, default 1);
    ``lock_dir``: the slot locks' directory (None: :func:`xmr.utils.devices.default_lock_dir`);
    anything else goes to ``joblib.Parallel`` (``backend`` is always loky).
    """

    def __init__(
        self,
        n_jobs: int | None = None,
        jobs_per_gpu: int = 1,
        lock_dir: str | None = None,
        **joblib_options: Any,
    ) -> None:
        self.n_jobs = n_jobs
        self.jobs_per_gpu = jobs_per_gpu
        self.lock_dir = lock_dir
        self.joblib = dict(joblib_options)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        try:
            from joblib import Parallel, delayed
        except ImportError as err:  # an optional dependency: the cluster extra
            raise ImportError(
                "hydra/launcher=local needs joblib: pip install 'xmr[cluster]'"
            ) from err
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)

        gpus = visible_gpus()
        plan, slots = plan_of(self.n_jobs, self.jobs_per_gpu, gpus)
        options = {**self.joblib, "n_jobs": plan.n_jobs, "backend": "loky"}
        if slots and plan.n_jobs > 1:
            lock_dir = str(self.lock_dir or default_lock_dir())
            options.update(initializer=claim_gpu_slot, initargs=(lock_dir, slots))
            where = (
                f" on {len(gpus)} GPU(s) {','.join(gpus)}, at most {plan.jobs_per_gpu} per GPU, "
                f"one GPU per worker (slot locks in {lock_dir})"
            )
        elif slots:
            where = f" on GPU {gpus[0]}, in this process"
        else:
            where = " (no GPU)"
        log.info(
            "local launcher: %d jobs, %s at once%s",
            len(job_overrides),
            plan.n_jobs,
            where,
        )
        log.info("sweep output dir: %s", sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))

        singleton_state = Singleton.get_state()
        runs = Parallel(**options)(
            delayed(_execute_job)(
                initial_job_idx + idx,
                overrides,
                self.hydra_context,
                self.config,
                self.task_function,
                singleton_state,
            )
            for idx, overrides in enumerate(job_overrides)
        )
        assert isinstance(runs, list) and all(isinstance(r, JobReturn) for r in runs)
        return runs
