-- The cost ledger (append-only) and the budget reservations of executions still running (postgres_costs.py).
CREATE TABLE cost_ledger (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    tenant TEXT NOT NULL CHECK (tenant <> ''),
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('execution', 'usage')),
    execution_id TEXT,
    model TEXT NOT NULL DEFAULT '',
    input_tokens BIGINT NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens BIGINT NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    amount DOUBLE PRECISION NOT NULL CHECK (amount >= 0),
    idempotency_key TEXT NOT NULL DEFAULT '',
    CHECK ((kind = 'execution') = (execution_id IS NOT NULL))
);
CREATE UNIQUE INDEX cost_ledger_execution ON cost_ledger (execution_id) WHERE kind = 'execution';
CREATE UNIQUE INDEX cost_ledger_idempotency ON cost_ledger (tenant, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX cost_ledger_tenant_time ON cost_ledger (tenant, at) INCLUDE (amount);
CREATE INDEX cost_ledger_tenant_session ON cost_ledger (tenant, session_id) INCLUDE (amount);

CREATE TABLE cost_reservations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    session_id TEXT NOT NULL,
    amount DOUBLE PRECISION NOT NULL CHECK (amount >= 0),
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX cost_reservations_scope ON cost_reservations (tenant, session_id, expires_at);
CREATE INDEX cost_reservations_expiry ON cost_reservations (expires_at);
