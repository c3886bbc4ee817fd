-- Incidents and their mitigations (postgres_incidents.py). At most one open incident per (rule, scope, subject,
-- exercise): the partial unique index is what guarantees it across replicas.
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    scope TEXT NOT NULL CHECK (scope IN ('session', 'tenant', 'language', 'server')),
    subject TEXT NOT NULL,
    tenant TEXT NOT NULL,
    summary TEXT NOT NULL,
    details JSONB NOT NULL,
    count BIGINT NOT NULL CHECK (count >= 1),
    opened_at DOUBLE PRECISION NOT NULL,
    last_seen_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    resolved_by TEXT NOT NULL DEFAULT '',
    exercise BOOLEAN NOT NULL DEFAULT FALSE,
    seq BIGSERIAL NOT NULL
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (rule, scope, subject, exercise) WHERE resolved_at IS NULL;
CREATE INDEX incidents_by_time ON incidents (opened_at, seq);
CREATE INDEX incidents_by_tenant ON incidents (tenant, opened_at);

CREATE TABLE mitigations (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    action TEXT NOT NULL CHECK (action IN ('throttle', 'quarantine', 'disable_language')),
    scope TEXT NOT NULL CHECK (scope IN ('session', 'tenant', 'language')),
    subject TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    lifted_at DOUBLE PRECISION,
    lifted_by TEXT NOT NULL DEFAULT '',
    throttle_per_minute DOUBLE PRECISION NOT NULL,
    seq BIGSERIAL NOT NULL
);
CREATE INDEX mitigations_by_incident ON mitigations (incident_id);
CREATE INDEX mitigations_unlifted ON mitigations (lifted_at, expires_at);
