-- The first schema: runs, stage results (outs as JSON text), metrics, data checks, gates, and
-- the inputs each stage last ran with. Kept as it shipped: databases written by it are migrated
-- forward by the files that follow.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    commit_sha TEXT,
    dirty INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    duration_ms INTEGER,
    params TEXT NOT NULL,
    overrides TEXT NOT NULL,
    message TEXT,
    pid INTEGER NOT NULL
);
CREATE INDEX runs_by_model ON runs (model, id);
CREATE TABLE stage_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    stage TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    exit_code INTEGER,
    log_path TEXT,
    cache_key TEXT,
    outs TEXT,
    PRIMARY KEY (run_id, stage)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE check_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    stage TEXT NOT NULL,
    file TEXT NOT NULL,
    rule TEXT NOT NULL,
    passed INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE gate_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    position INTEGER NOT NULL,
    expr TEXT NOT NULL,
    verdict TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE stage_state (
    stage TEXT PRIMARY KEY,
    cache_key TEXT NOT NULL,
    inputs TEXT NOT NULL
);
