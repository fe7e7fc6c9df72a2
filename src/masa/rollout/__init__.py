"""Rollout engines (HF generate, vLLM) and ``build_engine``, which picks one from ``rollout.engine``.

``build_engine`` resolves on first use, so importing ``masa.rollout.types`` stays free of torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_engine"]


def __getattr__(name: str) -> Any:
    if name == "build_engine":
        from masa.rollout.factory import build_engine

        return build_engine
    raise AttributeError(f"module 'masa.rollout' has no attribute {name!r}")
