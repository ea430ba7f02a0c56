-- The latest night's shared events first (the share of a cluster flagged the same way),
-- then how many of that night's anomalies are their own (not common-mode).
SELECT kind, cluster_id, start_ts, end_ts, direction, n_series, peak_share, n_points, event_id
FROM shared_events
WHERE night = (SELECT max(night) FROM anomaly_daily_counts)
ORDER BY n_points DESC, start_ts, cluster_id;
