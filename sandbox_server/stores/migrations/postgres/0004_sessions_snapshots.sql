-- Session records with their lifecycle events, and the snapshot index (postgres_sessions.py). A snapshot's
-- archive itself lives under the data directory of the server that made it.
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL CHECK (tenant <> ''),
    key_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    languages JSONB NOT NULL,
    limits JSONB NOT NULL,
    labels JSONB NOT NULL,
    snapshot_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    idle_timeout_s BIGINT NOT NULL,
    max_lifetime_s BIGINT NOT NULL,
    cpu_total_ms BIGINT NOT NULL,
    closed_at DOUBLE PRECISION,
    close_reason TEXT NOT NULL DEFAULT '',
    calls BIGINT NOT NULL DEFAULT 0,
    cpu_time_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    kernel_restarts BIGINT NOT NULL DEFAULT 0,
    last_used_at DOUBLE PRECISION,
    peak_memory_bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_tenant_time ON sessions (tenant, created_at);
CREATE INDEX sessions_open ON sessions (owner) WHERE closed_at IS NULL;

CREATE TABLE session_events (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    detail JSONB NOT NULL
);
CREATE INDEX session_events_by_session ON session_events (session_id, id);

CREATE TABLE snapshots (
    snapshot_id TEXT COLLATE "C" PRIMARY KEY,
    tenant TEXT NOT NULL CHECK (tenant <> ''),
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    files BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX snapshots_tenant_time ON snapshots (tenant, created_at, snapshot_id);
