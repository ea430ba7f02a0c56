-- Analyst views over the anomaly store, portable (SQLite and PostgreSQL).
-- Apply after the schema exists (tsmeta db upgrade), then the dialect's views file:
--   psql "$URL" -f sql/views.sql -f sql/views.postgresql.sql
--   sqlite3 tsmeta.db < sql/views.sql && sqlite3 tsmeta.db < sql/views.sqlite.sql

-- Every anomaly with its series' attributes, detected period and cluster.
DROP VIEW IF EXISTS anomalies_with_series;
CREATE VIEW anomalies_with_series AS
SELECT a.series_id, a.ts, a.value, a.forecast, a.lower, a.upper, a.residual, a.score,
       a.surprise, a.alert, a.direction, a.severity, a.basis, a.cluster_id, a.event_id, a.model_version, a.run_id, a.detector_version,
       s.attributes, p.period, p.strength, c.n_series AS cluster_size
FROM anomalies a
LEFT JOIN series s ON s.series_id = a.series_id
LEFT JOIN series_profile p ON p.series_id = a.series_id
LEFT JOIN clusters c ON c.cluster_id = a.cluster_id;

-- Anomalies per night and cluster (from the write-time rollup: no scan of anomalies).
DROP VIEW IF EXISTS daily_counts_per_cluster;
CREATE VIEW daily_counts_per_cluster AS
SELECT d.night, d.cluster_id, c.period, c.n_series AS cluster_size, d.detector_version,
       d.n_anomalies, d.n_series AS n_series_flagged, d.max_score, d.run_id
FROM anomaly_daily_counts d
LEFT JOIN clusters c ON c.cluster_id = d.cluster_id;

-- Precision per cluster from analysts' feedback (verdicts on flagged points).
DROP VIEW IF EXISTS precision_by_cluster;
CREATE VIEW precision_by_cluster AS
SELECT a.cluster_id,
       count(*) AS n_reviewed,
       sum(CASE WHEN f.label = 'true_positive' THEN 1 ELSE 0 END) AS n_true_positive,
       sum(CASE WHEN f.label = 'false_positive' THEN 1 ELSE 0 END) AS n_false_positive,
       1.0 * sum(CASE WHEN f.label = 'true_positive' THEN 1 ELSE 0 END) / count(*) AS precision
FROM anomaly_feedback f
JOIN anomalies a ON a.series_id = f.series_id AND a.ts = f.ts
GROUP BY a.cluster_id;

-- Shared events: steps in which a large share of a cluster's scored series were flagged the
-- same way (a holiday, an outage), one row per span; kind 'holiday' on the configured
-- calendar (TSMETA_HOLIDAYS), else 'shared'. Their member anomalies carry the event_id.
DROP VIEW IF EXISTS shared_events;
CREATE VIEW shared_events AS
SELECT e.night, e.kind, e.cluster_id, c.period, c.n_series AS cluster_size, e.start_ts, e.end_ts,
       e.direction, e.n_series, e.peak_share, e.n_points, e.event_id, e.run_id, e.detector_version
FROM events e
LEFT JOIN clusters c ON c.cluster_id = e.cluster_id;
