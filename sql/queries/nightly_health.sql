-- What a morning alert watches: the latest nightly run, the night it scored, its status
-- and counts. Alert when status is not 'completed' ('failed': the one-line reason is in
-- error, e.g. the night's data had not arrived; 'partial': clusters or series were left
-- out), or when series_with_data falls well below series.
SELECT run_id, status, parameters ->> 'night' AS night, started_at, finished_at,
       counts ->> 'series' AS series, counts ->> 'series_with_data' AS series_with_data,
       counts ->> 'points_scored' AS points_scored, counts ->> 'flagged' AS flagged,
       counts ->> 'no_model_series' AS no_model_series,
       counts ->> 'unprofiled_series' AS unprofiled_series, error
FROM runs
WHERE flow = 'nightly'
ORDER BY started_at DESC
LIMIT 1;
