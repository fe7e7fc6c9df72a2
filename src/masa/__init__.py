"""masa: RL post-training of reasoning language models with MASA (Meta-Awareness via Self-Alignment).

The public API, importable from the top-level package::

    from masa import check_answer, extract_answer, load_problems, load_config, train, parse_meta_prediction

Names resolve on first use, so ``import masa`` stays cheap and answer checking or meta parsing does not
pull in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_answer": "masa.verify",
    "check_answers": "masa.verify",
    "extract_answer": "masa.verify",
    "verify_timeouts": "masa.verify",
    "Problem": "masa.data.problem",
    "FieldMap": "masa.data.loaders",
    "DataError": "masa.data.loaders",
    "load_problems": "masa.data.loaders",
    "make_arithmetic_problems": "masa.data.arithmetic",
    "arithmetic_splits": "masa.data.arithmetic",
    "Config": "masa.config",
    "ConfigError": "masa.config",
    "ModelConfig": "masa.config",
    "DataConfig": "masa.config",
    "RolloutConfig": "masa.config",
    "AlgoConfig": "masa.config",
    "MetaConfig": "masa.config",
    "EfficientConfig": "masa.config",
    "TrainConfig": "masa.config",
    "load_config": "masa.config",
    "train": "masa.trainer",
    "Trainer": "masa.trainer",
    "TrainResult": "masa.trainer",
    "MetaPrediction": "masa.meta.parse",
    "parse_meta_prediction": "masa.meta.parse",
    "meta_reward": "masa.meta.rewards",
    "PredictiveGate": "masa.efficient.gating",
    "cutoff_limit": "masa.efficient.cutoff",
    "pass_at_k": "masa.eval.passk",
    "load_model": "masa.models",
    "HFEngine": "masa.rollout.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'masa' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
