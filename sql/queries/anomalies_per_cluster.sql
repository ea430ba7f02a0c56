-- Anomaly counts and mean score per cluster, over everything stored.
SELECT cluster_id, period, cluster_series, n_anomalies, n_series_flagged, mean_score
FROM anomalies_by_cluster
ORDER BY n_anomalies DESC, cluster_id;
