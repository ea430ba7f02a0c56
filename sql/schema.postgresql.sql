-- The anomaly store's tables as PostgreSQL sees them.
-- Generated from tsmeta/store/schema.py; tests/test_sql.py fails when the two drift.
-- Regenerate: python -c 'from tsmeta.store.ddl import postgresql_ddl; print(postgresql_ddl(), end="")' > sql/schema.postgresql.sql

CREATE TABLE anomalies (
	id BIGSERIAL NOT NULL,
	series_id VARCHAR(255) NOT NULL,
	ts TIMESTAMP WITH TIME ZONE NOT NULL,
	value FLOAT NOT NULL,
	forecast FLOAT NOT NULL,
	lower FLOAT NOT NULL,
	upper FLOAT NOT NULL,
	residual FLOAT NOT NULL,
	score FLOAT NOT NULL,
	direction VARCHAR(4) NOT NULL,
	severity VARCHAR(8),
	basis VARCHAR(8),
	surprise FLOAT,
	alert BOOLEAN,
	cluster_id VARCHAR(64) NOT NULL,
	event_id VARCHAR(128),
	model_version INTEGER NOT NULL,
	run_id VARCHAR(36) NOT NULL,
	detector_version VARCHAR(32) NOT NULL,
	written_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id),
	CONSTRAINT uq_anomaly_point UNIQUE (series_id, ts, detector_version)
);

CREATE INDEX ix_anomalies_cluster_ts ON anomalies (cluster_id, ts);

CREATE INDEX ix_anomalies_ts ON anomalies (ts);

CREATE TABLE anomaly_daily_counts (
	night DATE NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	detector_version VARCHAR(32) NOT NULL,
	n_anomalies INTEGER NOT NULL,
	n_series INTEGER NOT NULL,
	max_score FLOAT,
	run_id VARCHAR(36) NOT NULL,
	PRIMARY KEY (night, cluster_id, detector_version)
);

CREATE TABLE anomaly_feedback (
	id BIGSERIAL NOT NULL,
	series_id VARCHAR(255) NOT NULL,
	ts TIMESTAMP WITH TIME ZONE NOT NULL,
	label VARCHAR(16) NOT NULL,
	note TEXT,
	author VARCHAR(128) NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT ck_feedback_label CHECK (label in ('true_positive', 'false_positive'))
);

CREATE INDEX ix_feedback_point ON anomaly_feedback (series_id, ts);

CREATE TABLE clusters (
	cluster_id VARCHAR(64) NOT NULL,
	period INTEGER NOT NULL,
	n_series INTEGER NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	run_id VARCHAR(36),
	centroid JSON,
	max_cluster_size INTEGER,
	created_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (cluster_id)
);

CREATE TABLE events (
	event_id VARCHAR(128) NOT NULL,
	night DATE NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	start_ts TIMESTAMP WITH TIME ZONE NOT NULL,
	end_ts TIMESTAMP WITH TIME ZONE NOT NULL,
	direction VARCHAR(4) NOT NULL,
	n_series INTEGER NOT NULL,
	peak_share FLOAT NOT NULL,
	n_points INTEGER NOT NULL,
	run_id VARCHAR(36) NOT NULL,
	detector_version VARCHAR(32) NOT NULL,
	CONSTRAINT pk_events PRIMARY KEY (event_id, detector_version)
);

CREATE INDEX ix_events_night ON events (night);

CREATE TABLE models (
	cluster_id VARCHAR(64) NOT NULL,
	version INTEGER NOT NULL,
	algorithm VARCHAR(32) NOT NULL,
	path TEXT NOT NULL,
	k INTEGER NOT NULL,
	horizon INTEGER NOT NULL,
	metrics JSON,
	data_start TIMESTAMP WITH TIME ZONE,
	data_end TIMESTAMP WITH TIME ZONE,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	run_id VARCHAR(36),
	PRIMARY KEY (cluster_id, version)
);

CREATE TABLE runs (
	run_id VARCHAR(36) NOT NULL,
	flow VARCHAR(64) NOT NULL,
	status VARCHAR(16) NOT NULL,
	parameters JSON NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	counts JSON,
	timings JSON,
	error TEXT,
	PRIMARY KEY (run_id)
);

CREATE TABLE series (
	series_id VARCHAR(255) NOT NULL,
	attributes JSON NOT NULL,
	first_seen TIMESTAMP WITH TIME ZONE,
	last_seen TIMESTAMP WITH TIME ZONE,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (series_id)
);

CREATE TABLE series_profile (
	series_id VARCHAR(255) NOT NULL,
	period INTEGER NOT NULL,
	strength FLOAT NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	profiled_at TIMESTAMP WITH TIME ZONE NOT NULL,
	run_id VARCHAR(36),
	PRIMARY KEY (series_id)
);

CREATE INDEX ix_series_profile_cluster_id ON series_profile (cluster_id);
