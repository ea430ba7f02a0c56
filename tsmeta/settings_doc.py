"""The settings page, ``docs/settings.md``, generated from ``tsmeta.config.Settings``.

``python -m tsmeta.settings_doc`` rewrites the page; ``--check`` exits 1 when it differs
from what the code says (the test suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from datetime import date
from pathlib import Path

from tsmeta.config import Settings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"

HEADER = """# Settings

Every setting of tsmeta, generated from `tsmeta.config.Settings` by
`python -m tsmeta.settings_doc` (a test fails when this page and the code disagree).

Sources, highest priority first: a command's options (`--data-dir`, `--freq`, ...), the
environment variable `TSMETA_<NAME>`, a TOML file (`TSMETA_CONFIG=path`, else `./tsmeta.toml`
when present; keys as in the first column), the defaults below. Lists and dates in
environment variables are JSON (`TSMETA_HOLIDAYS='["2026-12-25"]'`). Paths left unset
derive from `data_dir`, so one variable relocates everything. Without a step asked for,
the commands take the step the dataset records. Two variables are not settings:
`TSMETA_CONFIG` (the TOML file) and `TSMETA_PROGRESS=off` (no progress bars).

| setting | environment variable | type | default | what it does |
|---|---|---|---|---|
"""


def _type_name(annotation: object) -> str:
    """A reader's name of a field's type: `local` or `ray`, `int` or unset, list of dates."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    names = {Path: "path", date: "date", bool: "bool", int: "int", float: "float", str: "text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: object) -> str:
    if field.default_factory is not None:  # type: ignore[attr-defined]
        value = field.default_factory()  # type: ignore[attr-defined]
    else:
        value = field.default  # type: ignore[attr-defined]
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"`{value}`" if isinstance(value, int) else f"`{value:g}`"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def render() -> str:
    """The page's text, from the settings' fields in their order."""
    rows = []
    for name, field in Settings.model_fields.items():
        text = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | `TSMETA_{name.upper()}` | {_type_name(field.annotation)} | "
                    f"{_default(field)} | {text} |")  # fmt: skip
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    ap.add_argument("path", nargs="?", type=Path, default=PAGE)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = args.path.is_file() and args.path.read_text() == text
        if not same:
            print(
                f"{args.path} is out of date: run `python -m tsmeta.settings_doc`", file=sys.stderr
            )
        return 0 if same else 1
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path} ({len(Settings.model_fields)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
