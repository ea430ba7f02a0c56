from pathlib import Path

import pytest
from pydantic import ValidationError

from tsmeta.config import load_settings


def test_defaults_derive_from_data_dir():
    s = load_settings(data_dir=Path("/srv/x"))
    assert s.dataset_path == Path("/srv/x/dataset")
    assert s.model_dir == Path("/srv/x/models")
    assert s.database_url == "sqlite:////srv/x/tsmeta.db"
    assert s.ray_address is None
    assert (s.freq, s.k, s.horizon, s.candidate_periods) == ("h", 24, 24, [24, 168])


def test_daily_defaults():
    s = load_settings(freq="daily")
    assert (s.freq, s.k, s.horizon, s.candidate_periods, s.steps_per_day) == ("d", 28, 1, [7], 1)


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("TSMETA_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("TSMETA_K", "48")
    monkeypatch.setenv("TSMETA_RAY_ADDRESS", "auto")
    s = load_settings()
    assert s.database_url == "postgresql+psycopg://u@h/db" and s.k == 48 and s.ray_address == "auto"
    # explicit arguments win over the environment
    assert load_settings(k=12).k == 12


def test_toml_file(tmp_path, monkeypatch):
    cfg = tmp_path / "tsmeta.toml"
    cfg.write_text('data_dir = "/data/tsmeta"\nhorizon = 12\nfalse_alarm_rate = 0.01\n')
    monkeypatch.setenv("TSMETA_CONFIG", str(cfg))
    monkeypatch.setenv("TSMETA_HORIZON", "6")  # environment beats the file
    s = load_settings()
    assert s.data_dir == Path("/data/tsmeta") and s.horizon == 6 and s.false_alarm_rate == 0.01


def test_toml_in_working_directory(tmp_path, monkeypatch):
    (tmp_path / "tsmeta.toml").write_text("k = 30\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().k == 30


def test_missing_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TSMETA_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError, match="TSMETA_CONFIG"):
        load_settings()


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"freq": "7min"}, "does not divide a day evenly"),
        ({"freq": "1W"}, "longer than a day"),
        ({"k": 1}, "greater than or equal to 2"),
        ({"false_alarm_rate": 1.5}, "less than 1"),
        ({"databse_url": "x"}, "Extra inputs are not permitted"),
        ({"algorithm": "reptile"}, "'maml', 'fomaml', 'anil', 'ridge', 'metasgd' or 'pretrain'"),
        ({"score_threads": -1}, "greater than or equal to 0"),
        ({"score_workers": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_settings_are_rejected(kwargs, needle):
    with pytest.raises((ValidationError, ValueError), match=needle):
        load_settings(**kwargs)


def test_the_meta_learner_is_a_setting(monkeypatch):
    from tsmeta.jobs import meta_config

    assert meta_config(load_settings()).algorithm == "ridge"
    monkeypatch.setenv("TSMETA_ALGORITHM", "anil")
    s = load_settings()
    assert s.algorithm == "anil" and meta_config(s).algorithm == "anil"
    assert meta_config(s, algorithm="fomaml").algorithm == "fomaml"  # a flow's argument wins
    assert meta_config(s, algorithm=None).algorithm == "anil"
    # a causal deployment is calibrated as it scores: without isolation and onsets
    assert meta_config(load_settings()).without == ()
    causal = meta_config(load_settings(causal=True), without=("veto",))
    assert causal.without == ("veto", "isolation", "onsets")


def test_postgres_urls_without_a_driver_use_psycopg(monkeypatch, pg_url):
    """`postgres://` (as hosting services give it) connects through psycopg 3."""
    import sqlalchemy as sa

    from tsmeta.config import load_settings
    from tsmeta.store.schema import create_engine

    bare = pg_url.replace("postgresql+psycopg://", "postgres://")
    monkeypatch.setenv("TSMETA_DATABASE_URL", bare)
    settings = load_settings()
    assert settings.database_url == pg_url
    engine = create_engine(bare)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
    engine.dispose()
    with pytest.raises(ValueError, match="postgresql\\+psycopg://"):
        load_settings(database_url=pg_url.replace("+psycopg", "+psycopg2"))


def test_k_by_period_is_one_period_of_the_cluster_capped_once_the_window_holds_it():
    from tsmeta.jobs import k_for

    day = load_settings()  # the default
    assert [k_for(day, c) for c in ("p24-0", "p168-3", "aperiodic-0")] == [24, 24, 24]
    period = load_settings(k_rule="period")
    assert [k_for(period, c) for c in ("p24-0", "p168-3", "aperiodic-0")] == [24, 168, 24]
    # a weekly cluster adapts from its week once its training window holds the support and
    # the 3 weeks its lag medians read (4 weeks), from a day before
    assert k_for(period, "p168-3", steps=4 * 168) == 168
    assert k_for(period, "p168-3", steps=4 * 168 - 1) == 24
    assert k_for(period, "p24-0", steps=4 * 24) == 24
    minutes = load_settings(k_rule="period", freq="1min", k_max=2016)
    assert [k_for(minutes, c) for c in ("p1440-0", "p10080-1", "aperiodic-0")] == [1440, 2016, 1440]
    daily = load_settings(k_rule="period", freq="d")  # daily data's K (28) exceeds its period
    assert k_for(daily, "p7-0") == 28


def test_the_training_window_counts_from_its_first_observed_step():
    from datetime import datetime

    import numpy as np

    from tsmeta.data.panel import Panel
    from tsmeta.jobs.train import _steps_held

    start, ids = datetime(2026, 1, 1), np.array(["a", "b", "c"])
    mask = np.zeros((3, 672), dtype=bool)
    mask[1, 168:] = True  # 3 weeks of data in a 4-week window
    mask[2, 200:400] = True
    values = np.where(mask, 1.0, np.nan).astype(np.float32)
    assert _steps_held(Panel(values, mask, ids, start, "h")) == 504
    empty = np.zeros((1, 24), dtype=bool)
    assert _steps_held(Panel(np.full((1, 24), np.nan, np.float32), empty, ids[:1], start,
                             "h")) == 0  # fmt: skip
