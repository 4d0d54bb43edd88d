//! Moving a model's alias: the registry records the move, then `.kiln/serving/<model>@<alias>`
//! follows it, so that a server following the alias swaps versions. `kiln models
//! alias|promote|rollback` and the registry's HTTP API both move aliases through here.

use kiln_registry::{MoveBy, Version};
use kiln_spec::Project;
use serde::Serialize;

use crate::Error;
use crate::workspace::Workspace;

/// A move to make.
#[derive(Debug, Clone, Copy)]
pub enum AliasChange<'a> {
    /// Point the alias at this version.
    To { version: Version, by: MoveBy<'a> },
    /// Back to the version the alias held before its last move not undone yet.
    Rollback { reason: Option<&'a str> },
}

/// A move made.
#[derive(Debug, Clone, Serialize)]
pub struct AliasMoved {
    pub model: String,
    pub alias: String,
    /// `None` when the alias was new.
    pub from_version: Option<Version>,
    pub to_version: Version,
    /// Why `.kiln/serving/<model>@<alias>` could not follow, when it could not (no project,
    /// a model without artifact): the move itself is recorded all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_warning: Option<String>,
}

/// Moves `alias` of `model` in the registry, then its serving link. `project` is the project
/// the link is laid out for, or why there is none (the move is still made).
pub fn move_alias(
    workspace: &mut Workspace,
    project: Result<&Project, String>,
    model: &str,
    alias: &str,
    change: AliasChange<'_>,
) -> Result<AliasMoved, Error> {
    let (from_version, to_version) = match change {
        AliasChange::To { version, by } => (
            workspace.registry.move_alias(model, alias, version, by)?,
            version,
        ),
        AliasChange::Rollback { reason } => {
            let (from, to) = workspace.registry.rollback_alias(model, alias, reason)?;
            (Some(from), to)
        }
    };
    let published = project.and_then(|project| {
        crate::artifact::publish_alias(workspace, project, model, alias)
            .map_err(|error| crate::stage::error_chain(&error))
    });
    Ok(AliasMoved {
        model: model.to_string(),
        alias: alias.to_string(),
        from_version,
        to_version,
        serving_warning: published.err(),
    })
}
