"""Detector version named for the scoring rules, not a meta-learner: 'maml-v1' was written
for every model, ridge included. Stored rows move to 'tsmeta-1' so that re-running an old
night replaces them instead of adding a second copy beside them.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("anomalies", "anomaly_daily_counts")


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"UPDATE {table} SET detector_version = 'tsmeta-1' WHERE detector_version = 'maml-v1'"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(
            f"UPDATE {table} SET detector_version = 'maml-v1' WHERE detector_version = 'tsmeta-1'"
        )
