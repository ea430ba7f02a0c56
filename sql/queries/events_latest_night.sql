-- The latest night's shared events (a share of a cluster's series flagged the same way at
-- once), the largest first; their member anomalies carry the event_id.
SELECT kind, cluster_id, start_ts, end_ts, direction, n_series, peak_share, n_points, event_id
FROM shared_events
WHERE night = (SELECT max(night) FROM anomaly_daily_counts)
ORDER BY n_points DESC, start_ts, cluster_id;
