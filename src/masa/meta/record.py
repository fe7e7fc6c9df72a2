"""Which meta prompt a model was trained to answer, kept in its model folder.

A model answers the meta question in the wording it was trained on and parses poorly in any other, so a
MASA run writes ``masa_meta.json`` into every checkpoint and its final model, and ``masa eval --meta`` asks
that model the same question unless told otherwise. GRPO models were never asked, so they get no record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from masa.meta.prompt import PROMPT_STYLES

META_RECORD_FILE = "masa_meta.json"


class MetaRecordError(ValueError):
    """A model folder's meta record cannot be read."""


@dataclass(frozen=True)
class MetaPromptRecord:
    prompt: str
    """The meta prompt's style (``meta.prompt``)."""
    reasoning: bool
    """Whether a <meta> reasoning block came before the JSON (``meta.reasoning``)."""
    notions: bool
    """Whether the prompt asked for notions (false on a task without them)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


UNRECORDED = MetaPromptRecord(prompt="compact", reasoning=False, notions=True)
"""How a model folder without a record is asked: masa's meta prompt from session 12 until records began
(session 22), so models trained then are asked what they learnt; GRPO and hub models the same."""


def read_meta_record(model_folder: str | Path) -> MetaPromptRecord | None:
    """The record in a model folder; None for a folder without one (a hub name, a GRPO or older model)."""
    path = Path(model_folder) / META_RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        record = MetaPromptRecord(prompt=data["prompt"], reasoning=data["reasoning"], notions=data["notions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MetaRecordError(
            f"{path} is not a readable meta record ({exc!r}); pass --meta-prompt and --[no-]meta-reasoning"
        ) from exc
    if (
        record.prompt not in PROMPT_STYLES
        or not isinstance(record.reasoning, bool)
        or not isinstance(record.notions, bool)
    ):
        raise MetaRecordError(
            f"{path} names a meta prompt masa does not know ({record}); prompt must be one of "
            f"{', '.join(PROMPT_STYLES)}, reasoning and notions true or false"
        )
    return record
