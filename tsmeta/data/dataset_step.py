"""The step a dataset records: one dataset holds one step (``_meta/dataset.json``, written
by ``tsmeta ingest``, or the generator's ``_meta/manifest.json``); reading or writing it at
another step is refused before anything is read or written."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tsmeta.frequency import normalise_freq

__all__ = ["dataset_freq", "check_dataset_freq", "record_dataset_freq"]


def dataset_freq(path: str | Path) -> str | None:
    """The step a dataset records (``_meta/dataset.json``, written by ``tsmeta ingest``, or
    the generator's ``_meta/manifest.json``); None for a dataset that records none."""
    for name in ("dataset.json", "manifest.json"):
        file = Path(path) / "_meta" / name
        if file.is_file():
            freq = json.loads(file.read_text()).get("freq")
            if freq:
                return normalise_freq(freq)
    return None


def check_dataset_freq(path: str | Path, freq: str) -> None:
    """A ValueError when the dataset records another step than ``freq`` (one dataset, one
    step: a dataset read at another step is misread, and one written at another is mixed)."""
    recorded, asked = dataset_freq(path), normalise_freq(freq)
    if recorded is not None and recorded != asked:
        raise ValueError(
            f"the dataset {path} holds {recorded} data, and the step asked for is {asked}: pass "
            f"--freq {recorded} (or set TSMETA_FREQ={recorded}); data of another step belongs "
            "in a data folder of its own (--data-dir or TSMETA_DATA_DIR)"
        )


def record_dataset_freq(path: str | Path, freq: str) -> None:
    """Record the dataset's step (``_meta/dataset.json``) where it records none yet."""
    if dataset_freq(path) is None:
        meta = Path(path) / "_meta"
        meta.mkdir(parents=True, exist_ok=True)
        tmp = meta / f".dataset.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"freq": normalise_freq(freq)}))
        tmp.replace(meta / "dataset.json")
