-- The latest runs of every flow, with their status.
SELECT run_id, flow, status, started_at, finished_at, error
FROM runs
ORDER BY started_at DESC
LIMIT 10;
