//! Every error a command can end with, as one enum: each library's error, a command-line
//! mistake, an error already shown in full, or stdout closed by its reader. The exit code and the
//! hint of an error are matches on this enum; each library error brings its own hint.

use crate::exit;
use crate::printer::Closed;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Spec(#[from] kiln_spec::Error),
    #[error(transparent)]
    Init(#[from] kiln_spec::init::InitError),
    #[error(transparent)]
    Pipeline(#[from] kiln_pipeline::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error(transparent)]
    Deploy(#[from] kiln_deploy::Error),
    #[error(transparent)]
    Serve(#[from] kiln_serve::Error),
    #[error(transparent)]
    Api(#[from] kiln_api::Error),
    #[error(transparent)]
    Image(#[from] kiln_image::Error),
    /// A mistake in the command line (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Already printed in full (diagnostics); only the exit code is left.
    #[error("reported")]
    Reported(u8),
    /// stdout was closed by its reader (`kiln runs | head -1`): stop quietly.
    #[error(transparent)]
    Closed(#[from] Closed),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, CliError>;

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> CliError {
        CliError::Other(error.into())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(error: serde_json::Error) -> CliError {
        CliError::Other(error.into())
    }
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Usage(message.into())
    }

    /// What the user can do about it, shown on its own `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Spec(error) => error.hint(),
            CliError::Init(error) => error.hint(),
            CliError::Pipeline(error) => error.hint(),
            CliError::Registry(error) => error.hint(),
            CliError::Deploy(error) => error.hint(),
            CliError::Serve(error) => error.hint(),
            CliError::Api(error) => error.hint(),
            CliError::Image(error) => error.hint(),
            CliError::Usage(_)
            | CliError::Reported(_)
            | CliError::Closed(_)
            | CliError::Other(_) => None,
        }
    }

    /// The process exit code (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Reported(code) => *code,
            CliError::Closed(_) => exit::SUCCESS,
            CliError::Usage(_)
            | CliError::Image(
                kiln_image::Error::BadReference { .. }
                | kiln_image::Error::BadDestination { .. }
                | kiln_image::Error::BadTag { .. },
            )
            | CliError::Spec(
                kiln_spec::Error::NotFound { .. } | kiln_spec::Error::Invalid { .. },
            ) => exit::INVALID,
            CliError::Pipeline(error) | CliError::Deploy(kiln_deploy::Error::Pipeline(error))
                if names_a_wrong_input(error) =>
            {
                exit::INVALID
            }
            CliError::Registry(error)
            | CliError::Pipeline(kiln_pipeline::Error::Registry(error))
            | CliError::Deploy(kiln_deploy::Error::Registry(error))
            | CliError::Deploy(kiln_deploy::Error::Pipeline(kiln_pipeline::Error::Registry(
                error,
            ))) if names_a_wrong_version(error) => exit::INVALID,
            _ => exit::STAGE_FAILED,
        }
    }

    /// Prints the error, its causes and its hint on stderr (nothing for one already shown).
    pub fn print(&self) {
        if matches!(self, CliError::Reported(_) | CliError::Closed(_)) {
            return;
        }
        crate::printer::errln!("error: {self}");
        // A `transparent` variant's source is its inner error's source, so no cause is repeated.
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            crate::printer::errln!("  caused by: {cause}");
            source = cause.source();
        }
        if let Some(hint) = self.hint() {
            crate::printer::errln!("hint: {hint}");
        }
    }
}

/// A pipeline error caused by what the user asked for (a model or param that does not exist, a
/// `--set` the params file cannot take, a file to import that is not a sound export), not by
/// Kiln or the project's state.
fn names_a_wrong_input(error: &kiln_pipeline::Error) -> bool {
    matches!(
        error,
        kiln_pipeline::Error::UnknownParam { .. }
            | kiln_pipeline::Error::UndeclaredParam { .. }
            | kiln_pipeline::Error::UnknownModel { .. }
            | kiln_pipeline::Error::SetParam { .. }
            | kiln_pipeline::Error::BranchNotFound { .. }
            | kiln_pipeline::Error::RemoteNotFound { .. }
            | kiln_pipeline::Error::BadBranchName { .. }
            | kiln_pipeline::Error::DetachedHead { .. }
    ) || matches!(error, kiln_pipeline::Error::Transfer(error) if error.is_bad_input())
}

/// A registry error caused by a model, version or alias the user named that does not exist or
/// cannot be.
fn names_a_wrong_version(error: &kiln_registry::Error) -> bool {
    matches!(
        error,
        kiln_registry::Error::NoSuchModel(_)
            | kiln_registry::Error::NoSuchVersion { .. }
            | kiln_registry::Error::AliasUnset { .. }
            | kiln_registry::Error::BadAlias { .. }
            | kiln_registry::Error::BadModelRef { .. }
            | kiln_registry::Error::NothingToRollBack { .. }
    )
}
