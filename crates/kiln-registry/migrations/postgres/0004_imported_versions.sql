-- Imported versions, in PostgreSQL: what `sqlite/0004_imported_versions.sql` does, without
-- rebuilding tables (PostgreSQL drops a constraint in place). A version's `run_id` no longer
-- references `runs` (an imported version's run is on the machine that trained it), `origin`
-- records where an imported version came from, and the alias trail gains `import`.
ALTER TABLE model_versions DROP CONSTRAINT model_versions_run_id_fkey;
ALTER TABLE model_versions ADD COLUMN origin TEXT;
ALTER TABLE alias_moves DROP CONSTRAINT alias_moves_command_check;
ALTER TABLE alias_moves ADD CONSTRAINT alias_moves_command_check
    CHECK (command IN ('run', 'alias', 'promote', 'rollback', 'import'));
