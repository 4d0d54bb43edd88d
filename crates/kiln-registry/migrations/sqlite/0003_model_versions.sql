-- The model registry: numbered versions of each model with their lineage, aliases naming a
-- version (`latest`, `production`, ...), and the audit trail of every alias move.

-- A version: the artifact of one green run, numbered per model from 1 without gaps. The lineage
-- is kept here whole (not only by run id) so that a version outlives the run history and can
-- move between machines. `lineage_key` is a digest of everything that makes two registrations
-- the same (see `lineage_key` in `models.rs`): the same artifact with the same lineage is one
-- version. `signature`, `example` and `profile` are filled by later versions of Kiln.
CREATE TABLE model_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    run_id INTEGER NOT NULL REFERENCES runs (id),
    artifact_digest TEXT NOT NULL,
    lineage_key TEXT NOT NULL,
    commit_sha TEXT,
    dirty INTEGER NOT NULL,
    params TEXT NOT NULL,
    metrics TEXT NOT NULL,
    deps TEXT NOT NULL,
    environment TEXT,
    servable_passed INTEGER,
    servable_message TEXT,
    signature TEXT,
    example TEXT,
    profile TEXT,
    registered_at_ms INTEGER NOT NULL,
    PRIMARY KEY (model, version),
    UNIQUE (model, lineage_key)
);

-- Which version each alias of a model names now.
CREATE TABLE model_aliases (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- Every alias move, never updated nor deleted. `command` is what moved it (`run`, `alias`,
-- `promote`, `rollback`); `undoes` names the move a rollback reverted, so that rollbacks walk
-- back through the history rather than toggle between two versions.
CREATE TABLE alias_moves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    command TEXT NOT NULL CHECK (command IN ('run', 'alias', 'promote', 'rollback')),
    run_id INTEGER REFERENCES runs (id),
    reason TEXT,
    undoes INTEGER REFERENCES alias_moves (id)
);
CREATE INDEX alias_moves_by_alias ON alias_moves (model, alias, id);
