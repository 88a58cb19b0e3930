"""xmr's Hydra launcher plugin: ``hydra/launcher=local`` (conf/hydra/launcher/local.yaml).

Hydra instantiates launchers only from classes it finds in the ``hydra_plugins`` namespace
package, so the launcher is named here; its code is :mod:`xmr.utils.launcher` (parallel local
jobs, one GPU per worker on a GPU node). ``hydra_plugins`` itself has no ``__init__.py``: it is
shared with the other plugins installed (joblib, submitit, optuna).
"""

from xmr.utils.launcher import LocalLauncher as _LocalLauncher


class LocalLauncher(_LocalLauncher):
    """``hydra/launcher=local``: :class:`xmr.utils.launcher.LocalLauncher`."""


__all__ = ["LocalLauncher"]
