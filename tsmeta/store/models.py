"""The model store: checkpoint files under ``<model_dir>/cluster=<id>/version=<n>/`` plus a
registry row per version in the ``models`` table.

Files are written to a temporary folder and renamed into place before the registry row is
inserted, so a registered version always has complete files.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
import torch

from tsmeta.meta.train import MetaModel
from tsmeta.store.schema import models

__all__ = ["save_model", "load_latest_models", "load_model"]


def save_model(
    engine: sa.Engine, model_dir: Path, cluster_id: str, model: MetaModel, run_id: str,
    data_start: datetime | None = None, data_end: datetime | None = None,
) -> int:  # fmt: skip
    """Store a new version of a cluster's model; returns the version number."""
    state = model.state()
    with engine.begin() as conn:
        current = conn.execute(
            sa.select(sa.func.max(models.c.version)).where(models.c.cluster_id == cluster_id)
        ).scalar()
        version = (current or 0) + 1
        folder = Path(model_dir) / f"cluster={cluster_id}" / f"version={version}"
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "model.pt")
        meta = {k: v for k, v in state.items() if k != "params"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)  # leftover of a crashed, unregistered save
        os.replace(tmp, folder)
        conn.execute(
            sa.insert(models).values(
                cluster_id=cluster_id,
                version=version,
                algorithm=model.config.algorithm,
                # absolute: a relative model_dir would tie every later load to the
                # working directory this training ran in
                path=str(folder.resolve()),
                k=model.config.k,
                horizon=model.config.horizon,
                metrics={k: v for k, v in model.metrics.items() if k != "history"},
                data_start=data_start,
                data_end=data_end,
                created_at=datetime.now(UTC),
                run_id=run_id,
            )  # fmt: skip
        )
    return version


def load_model(path: str | Path, *fallbacks: str | Path) -> MetaModel:
    """The model saved in folder ``path``, or in the first of ``fallbacks`` that has one."""
    tried = [Path(p) / "model.pt" for p in (path, *fallbacks)]
    file = next((f for f in tried if f.is_file()), None)
    if file is None:
        raise FileNotFoundError(
            f"model file {' or '.join(map(str, dict.fromkeys(tried)))} is missing: retrain the "
            "cluster (`tsmeta train`), or point TSMETA_MODEL_DIR (or --data-dir) at the models"
        )
    return MetaModel.from_state(torch.load(file, weights_only=False))


def load_latest_models(
    engine: sa.Engine, model_dir: Path | None = None
) -> dict[str, tuple[int, MetaModel]]:
    """{cluster_id: (version, model)} for the newest version of every cluster.

    A version's files are looked for where the registry says, then under ``model_dir``
    (``cluster=<id>/version=<n>``): registries written with a relative model directory,
    or a data directory moved since, still load from wherever the command runs.
    """
    latest = (
        sa.select(models.c.cluster_id, sa.func.max(models.c.version).label("version"))
        .group_by(models.c.cluster_id)
        .subquery()
    )
    query = sa.select(models.c.cluster_id, models.c.version, models.c.path).join(
        latest,
        (models.c.cluster_id == latest.c.cluster_id) & (models.c.version == latest.c.version),
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {
        r.cluster_id: (
            r.version,
            load_model(r.path, *([Path(model_dir) / f"cluster={r.cluster_id}" / f"version={r.version}"]
                                 if model_dir is not None else [])),
        )
        for r in rows
    }  # fmt: skip
