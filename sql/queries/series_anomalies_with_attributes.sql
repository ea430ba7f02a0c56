-- One series' flagged points with its attributes and cluster (replace the id).
SELECT series_id, ts, value, forecast, score, direction, cluster_id, period, attributes
FROM anomalies_with_series
WHERE series_id = 'a'
ORDER BY ts DESC
LIMIT 100;
