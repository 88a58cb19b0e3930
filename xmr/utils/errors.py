"""What went wrong from the user's side: an error fixed from its message alone, and Ctrl-C.

Every error a user causes with what they give xmr (a store, lists, a config value, a dataset, a
work directory) derives from :class:`UserError` besides its own base (``StoreError(UserError,
ValueError)``), and its message names the file or key and the rule. Commands print it on one line
(``xmr train: error: <message>``) and exit 2 (:func:`xmr.utils.console.run_command`).
"""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave (a file, a directory, a config value): the message says
    which and what to do; no traceback is needed to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what to do next (``run the same command again to resume from ...``)."""
