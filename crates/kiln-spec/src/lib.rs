//! `kiln.yaml` and `dvc.yaml`: parse, validate, and report every mistake with file:line:column,
//! the offending text underlined, and a hint.
//!
//! The entry point is [`load`]: it finds the project file under a root, reads it into the
//! validated [`Project`] or returns every [`Diagnostic`] it found.

pub mod deploy;
pub mod diagnostic;
mod duration;
pub mod edit;
pub mod gate;
pub mod init;
pub mod notify;
pub mod project;
pub mod schema;
mod validate;
pub mod values;
mod yaml;

pub use deploy::{Approve, Deploy, Environment, TargetKind};
pub use diagnostic::{Diagnostic, Location, SourceFile};
pub use duration::parse_duration;
pub use project::{
    DataCheck, Gate, Model, Project, ProjectFormat, PythonEnv, RelPath, Stage, StageId,
    StageLocations,
};
pub mod dvc;

pub use validate::{
    DVC_FILE, Error, KILN_FILE, check_graph, load, parse_kiln, upstream, valid_name,
};
