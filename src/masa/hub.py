"""One quick look at whether the Hugging Face hub can be reached, before anything downloads from it.

Without it, an unreachable hub costs a minute of retries (five per file, printed line by line) before the
download libraries give up; with it, a hub id fails at once with one line that says why.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_PROBE_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE=1): then only cached files are used."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "true", "yes"}


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub (``$HF_ENDPOINT``, default huggingface.co) cannot be reached, or None if it can."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"
    return None
