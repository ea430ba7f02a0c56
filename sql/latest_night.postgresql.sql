-- The most recent night's anomalies (PostgreSQL: nights are UTC calendar days).
DROP VIEW IF EXISTS latest_night_anomalies;
CREATE VIEW latest_night_anomalies AS
SELECT * FROM anomalies
WHERE (ts AT TIME ZONE 'UTC')::date = (SELECT (max(ts) AT TIME ZONE 'UTC')::date FROM anomalies);
