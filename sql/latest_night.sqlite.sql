-- The most recent night's anomalies (SQLite: timestamps are stored as UTC text).
DROP VIEW IF EXISTS latest_night_anomalies;
CREATE VIEW latest_night_anomalies AS
SELECT * FROM anomalies
WHERE date(ts) = (SELECT date(max(ts)) FROM anomalies);
