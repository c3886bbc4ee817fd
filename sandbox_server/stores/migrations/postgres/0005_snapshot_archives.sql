-- Snapshot archives' bytes, shared by every server on the database (postgres_sessions.py): a snapshot taken on
-- one server restores on any. In chunks of at most 1 MiB, so that no value is read or written whole.
CREATE TABLE snapshot_archives (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    data BYTEA NOT NULL,
    PRIMARY KEY (name, seq)
);
