-- Series flagged most often over the last week, with their detected period.
SELECT t.series_id, p.period, p.cluster_id, t.n_anomalies, t.max_score, t.last_ts
FROM top_series_last_7_nights t
LEFT JOIN series_profile p ON p.series_id = t.series_id
ORDER BY t.n_anomalies DESC, t.max_score DESC, t.series_id
LIMIT 20;
