//! The one error type of kiln-profile.

use std::path::PathBuf;

/// Why a file could not be profiled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{}` as CSV", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("`{}` is empty: a CSV file starts with a header row", path.display())]
    NoHeader { path: PathBuf },
    #[error("row {row} of `{}` has {found} fields, its header has {expected}", path.display())]
    TooManyFields {
        path: PathBuf,
        /// The line's record number, the header being record 1.
        row: u64,
        found: usize,
        expected: usize,
    },
}

impl Error {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Read { .. } => None,
            Error::Csv { .. } | Error::NoHeader { .. } | Error::TooManyFields { .. } => Some(
                "training data is a comma-separated file with a header row naming the columns"
                    .into(),
            ),
        }
    }
}
