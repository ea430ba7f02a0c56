-- The strongest anomalies of the latest night (ties at a saturated score of 1.0 broken by
-- surprise, -log10 of the tail probability).
SELECT series_id, ts, value, forecast, lower, upper, score, surprise, direction, cluster_id
FROM latest_night_anomalies
ORDER BY score DESC, surprise DESC NULLS LAST, series_id, ts
LIMIT 20;
