-- Images of versions pushed to OCI registries (`kiln image push`): per version and repository
-- (`127.0.0.1:5000/team/iris`), the manifest digest pushed last, its tags (a JSON array) and
-- when. A push of the same version to the same repository replaces its row.
CREATE TABLE version_images (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    tags TEXT NOT NULL,
    pushed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (model, version, repository),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);
