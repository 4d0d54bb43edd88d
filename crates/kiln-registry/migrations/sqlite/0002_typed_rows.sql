-- Typed rows: a stage's outs become rows of their own table, a run records why it failed, a
-- data-check result names its column apart from its rule, and the servable check has a table.
-- Enumerated columns hold the names the registry's types spell and are read back through those
-- types (an unknown name is a `Corrupt` error); the new columns (`stage_outs.kind`,
-- `runs.failure`) are also constrained here.

-- A run's data checks and gates are read by run: index them so (the first schema had none).
CREATE INDEX check_results_by_run ON check_results (run_id, position);
CREATE INDEX gate_results_by_run ON gate_results (run_id, position);

-- Outs: one row per out, moved out of the JSON in `stage_results.outs`.
CREATE TABLE stage_outs (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
    digest TEXT NOT NULL,
    executable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, stage, position)
);
INSERT INTO stage_outs (run_id, stage, position, path, kind, digest, executable)
SELECT result.run_id, result.stage, out.key,
       json_extract(out.value, '$.path'), json_extract(out.value, '$.kind'),
       json_extract(out.value, '$.digest'), 0
FROM stage_results AS result, json_each(result.outs) AS out
WHERE result.outs IS NOT NULL AND json_valid(result.outs);
ALTER TABLE stage_results DROP COLUMN outs;

-- Stage outcomes: `not run` is spelt `not_run`, as the type names it.
UPDATE stage_results SET outcome = 'not_run' WHERE outcome = 'not run';

-- Data checks: `column.rule` becomes a column and a rule.
ALTER TABLE check_results ADD COLUMN column_name TEXT;
UPDATE check_results
SET column_name = substr(rule, 1, length(rule) - length(kind.name) - 1), rule = kind.name
FROM (SELECT 'present' AS name UNION ALL SELECT 'type' UNION ALL SELECT 'min'
      UNION ALL SELECT 'max' UNION ALL SELECT 'values' UNION ALL SELECT 'missing') AS kind
WHERE check_results.rule LIKE '%_.' || kind.name;

-- Why a run failed, told apart: found from what earlier runs recorded.
ALTER TABLE runs ADD COLUMN failure TEXT
    CHECK (failure IN ('environment', 'stage', 'check', 'gate', 'unservable', 'cancelled'));
UPDATE runs SET failure = CASE
    WHEN status = 'cancelled' THEN 'cancelled'
    WHEN EXISTS (SELECT 1 FROM check_results WHERE run_id = runs.id AND passed = 0) THEN 'check'
    WHEN EXISTS (SELECT 1 FROM stage_results WHERE run_id = runs.id AND outcome = 'failed') THEN 'stage'
    WHEN EXISTS (SELECT 1 FROM gate_results WHERE run_id = runs.id AND verdict IN ('fail', 'error')) THEN 'gate'
    WHEN message LIKE '%python environment%' THEN 'environment'
    ELSE 'stage'
END
WHERE status IN ('failed', 'cancelled');

-- The servable check: the artifact loaded in its engine and predicting on an example.
CREATE TABLE servable_checks (
    run_id INTEGER PRIMARY KEY REFERENCES runs (id),
    passed INTEGER NOT NULL,
    message TEXT NOT NULL,
    detail TEXT,
    duration_ms INTEGER NOT NULL
);
