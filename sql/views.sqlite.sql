-- Date-dependent analyst views, SQLite dialect (timestamps stored as UTC text).

-- The most recent night's anomalies (range on the ts index).
DROP VIEW IF EXISTS latest_night_anomalies;
CREATE VIEW latest_night_anomalies AS
SELECT * FROM anomalies
WHERE ts >= (SELECT max(night) FROM anomaly_daily_counts);

-- Series flagged most over the last 7 nights that have results.
DROP VIEW IF EXISTS top_series_last_7_nights;
CREATE VIEW top_series_last_7_nights AS
SELECT series_id, count(*) AS n_anomalies, max(score) AS max_score, min(ts) AS first_ts, max(ts) AS last_ts
FROM anomalies
WHERE ts >= (SELECT date(max(night), '-6 days') FROM anomaly_daily_counts)
GROUP BY series_id;
