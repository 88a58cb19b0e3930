"""Secret scrubbing: the one rule for what never reaches a file or a logger."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

#: Keys whose values are never logged (matched case-insensitively against the key's last part).
SECRET_KEY_PATTERN = re.compile(
    r"(api[_-]?key|apikey|token|secret|password|passwd|credential)", re.I
)


def scrub_secrets(node: Any) -> Any:
    """A copy of a (nested) mapping/list with the values of secret-looking keys replaced by ``***``.

    A key is secret when its name contains api_key/apikey/token/secret/password/credential; a
    string value equal to the ``WANDB_API_KEY`` environment value is scrubbed wherever it appears.
    """
    env_key = os.environ.get("WANDB_API_KEY")
    if isinstance(node, Mapping):
        return {
            k: ("***" if SECRET_KEY_PATTERN.search(str(k)) else scrub_secrets(v))
            for k, v in node.items()
        }
    if isinstance(node, (list, tuple)):
        return [scrub_secrets(v) for v in node]
    if isinstance(node, str) and env_key and env_key in node:
        return node.replace(env_key, "***")
    return node
