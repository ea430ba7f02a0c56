"""docs/settings.md is generated from the settings object: the page and the code agree, and
every TSMETA_ variable the documents name is a setting (or one of the few that are not)."""

import re
from pathlib import Path

from tsmeta.config import Settings
from tsmeta.settings_doc import PAGE, main, render

ROOT = Path(__file__).resolve().parents[1]
# variables the documents name that are not settings: where the settings file is, progress
# bars, the PostgreSQL server of the tests, the folder a Prefect worker runs flows from
NOT_SETTINGS = {"TSMETA_CONFIG", "TSMETA_PROGRESS", "TSMETA_TEST_POSTGRES_URL", "TSMETA_HOME"}


def test_the_settings_page_is_what_the_code_says():
    assert PAGE == ROOT / "docs" / "settings.md"
    assert PAGE.read_text() == render(), (
        "docs/settings.md is stale: run `python -m tsmeta.settings_doc`"
    )
    assert main(["--check"]) == 0


def test_every_setting_has_a_description_on_the_page():
    page = PAGE.read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"| `{name}` | `TSMETA_{name.upper()}` |" in page


def test_check_fails_on_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "settings.md"
    stale.write_text(render().replace("`TSMETA_FREQ`", "`TSMETA_STEP`"))
    assert main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_every_variable_the_documents_name_is_a_setting():
    settings = {f"TSMETA_{name.upper()}" for name in Settings.model_fields}
    docs = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "benchmarks" / "README.md",
            *sorted((ROOT / "docs").glob("*.md"))]  # fmt: skip
    unknown = {
        (doc.relative_to(ROOT).as_posix(), var)
        for doc in docs
        for var in re.findall(r"TSMETA_[A-Z0-9_]*[A-Z0-9]", doc.read_text())
        if var not in settings | NOT_SETTINGS
    }
    assert not unknown, f"documents name variables that are not settings: {sorted(unknown)}"
