//! Images of model versions pushed to OCI registries: which repository holds which manifest
//! digest of a version, under which tags, since when. `kiln image push` records a push here;
//! `kiln models show` and a deployment by digest read it.

use serde::Serialize;

use crate::db::args;
use crate::models::Version;
use crate::{Error, Registry};

/// A version's image in one repository, as last pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionImage {
    /// `127.0.0.1:5000/team/iris`: with the digest, `repository@digest` pulls the image.
    pub repository: String,
    /// The image manifest's digest (`sha256:...`).
    pub digest: String,
    pub tags: Vec<String>,
    /// Unix time in milliseconds.
    pub pushed_at_ms: i64,
}

impl Registry {
    /// Records that `version` of `model` was pushed as `image` (replacing what an earlier push
    /// to the same repository recorded).
    pub fn record_image(
        &mut self,
        model: &str,
        version: Version,
        image: &VersionImage,
    ) -> Result<(), Error> {
        // The version is checked here rather than left to the foreign key, for the error.
        self.model_version(model, version)?;
        let tags = serde_json::to_string(&image.tags).expect("strings serialise");
        self.db.execute(
            "INSERT INTO version_images (model, version, repository, digest, tags, pushed_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (model, version, repository) DO UPDATE SET
                 digest = excluded.digest, tags = excluded.tags,
                 pushed_at_ms = excluded.pushed_at_ms",
            args![
                model,
                version,
                image.repository.as_str(),
                image.digest.as_str(),
                tags,
                image.pushed_at_ms
            ],
        )?;
        Ok(())
    }

    /// The images of `version` of `model`, by repository.
    pub fn version_images(
        &self,
        model: &str,
        version: Version,
    ) -> Result<Vec<VersionImage>, Error> {
        images_of(self, model, version)
    }
}

pub(crate) fn images_of(
    registry: &Registry,
    model: &str,
    version: Version,
) -> Result<Vec<VersionImage>, Error> {
    let rows = registry.db.query(
        "SELECT rowid, repository, digest, tags, pushed_at_ms FROM version_images
         WHERE model = ?1 AND version = ?2",
        args![model, version],
    )?;
    let mut images = rows
        .iter()
        .map(|row| {
            let rowid: i64 = row.get(0)?;
            let tags: String = row.get(3)?;
            let tags: Vec<String> = serde_json::from_str(&tags).map_err(|_| Error::Corrupt {
                table: "version_images",
                row: rowid,
                reason: "`tags` does not hold what it should".into(),
            })?;
            Ok(VersionImage {
                repository: row.get(1)?,
                digest: row.get(2)?,
                tags,
                pushed_at_ms: row.get(4)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    // Text is ordered in Rust, not by the database's collation.
    images.sort_by(|a, b| a.repository.cmp(&b.repository));
    Ok(images)
}
