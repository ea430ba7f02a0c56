-- The strongest anomalies of the latest night.
SELECT series_id, ts, value, forecast, lower, upper, score, direction, cluster_id
FROM latest_night_anomalies
ORDER BY score DESC, series_id, ts
LIMIT 20;
