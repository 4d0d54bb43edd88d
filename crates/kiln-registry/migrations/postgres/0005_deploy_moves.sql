-- The alias trail gains the `deploy` command, in PostgreSQL: what
-- `sqlite/0005_deploy_moves.sql` does, without rebuilding the table (PostgreSQL replaces a
-- constraint in place).
ALTER TABLE alias_moves DROP CONSTRAINT alias_moves_command_check;
ALTER TABLE alias_moves ADD CONSTRAINT alias_moves_command_check
    CHECK (command IN ('run', 'alias', 'promote', 'rollback', 'import', 'deploy'));
