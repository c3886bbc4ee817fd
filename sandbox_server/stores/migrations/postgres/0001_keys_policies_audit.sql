-- API keys (only a peppered hash of each secret), the policy version history and the audit trail.
-- Times are epoch seconds (double precision), as in the SQLite stores, so a record reads back exactly as written.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('tenant', 'admin')),
    label TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);

CREATE TABLE policy_versions (
    version INTEGER PRIMARY KEY,
    actor TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE policy_files (
    version INTEGER NOT NULL REFERENCES policy_versions (version),
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (version, name)
);

CREATE TABLE audit (
    execution_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    language TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    limits JSONB NOT NULL,
    outcome TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    wall_time_s DOUBLE PRECISION NOT NULL,
    cpu_time_s DOUBLE PRECISION NOT NULL,
    peak_memory_bytes BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    trace_id TEXT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    exercise BOOLEAN NOT NULL DEFAULT FALSE,
    egress_bytes_sent BIGINT NOT NULL DEFAULT 0,
    egress_bytes_received BIGINT NOT NULL DEFAULT 0,
    egress_connections BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX audit_tenant_time ON audit (tenant, started_at);
CREATE INDEX audit_session_time ON audit (session_id, started_at);
