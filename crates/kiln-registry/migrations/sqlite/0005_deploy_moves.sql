-- The alias trail gains the `deploy` command: an environment's alias moved by `kiln deploy`, or
-- by Kiln's supervisor rolling a version out to an environment.
--
-- SQLite cannot change a CHECK constraint: `alias_moves` is rebuilt with the same rows and ids,
-- and its AUTOINCREMENT counter carried over, so no id is handed out twice. The migration
-- runner turns foreign keys off around a migration and checks them before committing.

CREATE TABLE alias_moves_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    command TEXT NOT NULL
        CHECK (command IN ('run', 'alias', 'promote', 'rollback', 'import', 'deploy')),
    run_id INTEGER REFERENCES runs (id),
    reason TEXT,
    undoes INTEGER REFERENCES alias_moves (id)
);
INSERT INTO alias_moves_new (id, model, alias, from_version, to_version, at_ms, command, run_id,
        reason, undoes)
    SELECT id, model, alias, from_version, to_version, at_ms, command, run_id, reason, undoes
    FROM alias_moves;
DELETE FROM sqlite_sequence WHERE name = 'alias_moves_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'alias_moves_new', seq FROM sqlite_sequence WHERE name = 'alias_moves';
DROP TABLE alias_moves;
ALTER TABLE alias_moves_new RENAME TO alias_moves;
CREATE INDEX alias_moves_by_alias ON alias_moves (model, alias, id);
