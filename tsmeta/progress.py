"""Progress bars for the long steps (generation, profiling, training, scoring, writing).

Bars go to stderr, with counts and rates. They are on when stderr is a terminal, and
can be forced either way with ``TSMETA_PROGRESS=on|off`` or the CLI's ``--progress`` /
``--no-progress`` (scheduled jobs write logs, not bars). The numerical core never calls
this: the wiring (``tsmeta.jobs``, the CLI) does.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

__all__ = ["Bar", "bar", "enabled", "set_enabled"]

_forced: bool | None = None


def set_enabled(value: bool | None) -> None:
    """Force bars on (True) or off (False); None: decide from the environment."""
    global _forced
    _forced = value


def enabled() -> bool:
    if _forced is not None:
        return _forced
    mode = os.environ.get("TSMETA_PROGRESS", "auto").strip().lower()
    if mode in ("1", "on", "true", "yes"):
        return True
    if mode in ("0", "off", "false", "no"):
        return False
    return sys.stderr.isatty()


class Bar(Protocol):
    def update(self, n: float = 1) -> object: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object: ...
    def write(self, s: str) -> object: ...
    def close(self) -> object: ...


class _Off:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(desc: str, total: float | None = None, unit: str = "series") -> Bar:
    """A bar (a context manager) when progress is on, else one that does nothing."""
    if not enabled():
        return _Off()
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=f" {unit}", unit_scale=unit in ("series", "rows"), file=sys.stderr,
        mininterval=0.5, dynamic_ncols=True, leave=True,
    )  # fmt: skip
