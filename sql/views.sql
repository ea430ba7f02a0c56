-- Analyst views over the anomaly store. Portable: runs on SQLite and PostgreSQL.
-- Apply after the schema exists (tsmeta db upgrade), e.g. psql -f sql/views.sql.

DROP VIEW IF EXISTS anomalies_with_profile;
CREATE VIEW anomalies_with_profile AS
SELECT a.series_id, a.ts, a.value, a.forecast, a.lower, a.upper, a.residual, a.score,
       a.direction, a.cluster_id, a.model_version, a.run_id,
       p.period, p.strength
FROM anomalies a
LEFT JOIN series_profile p ON p.series_id = a.series_id;

DROP VIEW IF EXISTS anomalies_by_cluster;
CREATE VIEW anomalies_by_cluster AS
SELECT a.cluster_id, c.period, c.n_series AS cluster_series,
       count(*) AS n_anomalies, count(DISTINCT a.series_id) AS n_series_flagged,
       avg(a.score) AS mean_score, min(a.ts) AS first_ts, max(a.ts) AS last_ts
FROM anomalies a
LEFT JOIN clusters c ON c.cluster_id = a.cluster_id
GROUP BY a.cluster_id, c.period, c.n_series;
