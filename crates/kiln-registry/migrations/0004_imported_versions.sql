-- Versions can arrive from another machine (`kiln models import`): their run is not in this
-- registry, so `run_id` names the run on the machine that trained the version and no longer
-- references `runs`; `origin` records where an imported version came from (JSON: model,
-- version, registration time and the file it was read from). The alias trail gains the
-- `import` command, which moves `latest` to an imported version.
--
-- SQLite cannot drop a constraint: both tables are rebuilt. The migration runner turns foreign
-- keys off around a migration and checks them before committing.

CREATE TABLE model_versions_new (
    model TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    run_id INTEGER NOT NULL,
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
    origin TEXT,
    PRIMARY KEY (model, version),
    UNIQUE (model, lineage_key)
);
INSERT INTO model_versions_new (model, version, run_id, artifact_digest, lineage_key, commit_sha,
        dirty, params, metrics, deps, environment, servable_passed, servable_message, signature,
        example, profile, registered_at_ms)
    SELECT model, version, run_id, artifact_digest, lineage_key, commit_sha, dirty, params,
        metrics, deps, environment, servable_passed, servable_message, signature, example,
        profile, registered_at_ms
    FROM model_versions;
DROP TABLE model_versions;
ALTER TABLE model_versions_new RENAME TO model_versions;

CREATE TABLE alias_moves_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    command TEXT NOT NULL CHECK (command IN ('run', 'alias', 'promote', 'rollback', 'import')),
    run_id INTEGER REFERENCES runs (id),
    reason TEXT,
    undoes INTEGER REFERENCES alias_moves (id)
);
INSERT INTO alias_moves_new (id, model, alias, from_version, to_version, at_ms, command, run_id,
        reason, undoes)
    SELECT id, model, alias, from_version, to_version, at_ms, command, run_id, reason, undoes
    FROM alias_moves;
DROP TABLE alias_moves;
ALTER TABLE alias_moves_new RENAME TO alias_moves;
CREATE INDEX alias_moves_by_alias ON alias_moves (model, alias, id);
