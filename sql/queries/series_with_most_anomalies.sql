-- Series flagged most often, with their detected period.
SELECT series_id, max(period) AS period, count(*) AS n_anomalies, max(score) AS max_score
FROM anomalies_with_profile
GROUP BY series_id
ORDER BY n_anomalies DESC, series_id
LIMIT 20;
