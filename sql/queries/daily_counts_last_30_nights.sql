-- Anomalies per night and cluster over the last 30 nights with results.
SELECT night, cluster_id, period, n_anomalies, n_series_flagged, max_score
FROM daily_counts_per_cluster
WHERE night >= (SELECT min(night) FROM (SELECT DISTINCT night FROM anomaly_daily_counts ORDER BY night DESC LIMIT 30) recent)
ORDER BY night DESC, n_anomalies DESC, cluster_id;
