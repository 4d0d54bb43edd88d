//! Kiln's exit codes: stable, documented in `kiln --help` and the README.

use std::process::ExitCode;

/// Everything asked for succeeded.
pub const SUCCESS: u8 = 0;
/// A stage command failed (or could not be run).
pub const STAGE_FAILED: u8 = 1;
/// The command line or the project file is invalid (`kiln check` found problems).
pub const INVALID: u8 = 2;
/// A data check failed.
pub const CHECK_FAILED: u8 = 3;
/// A quality gate failed.
pub const GATE_FAILED: u8 = 4;
/// The model could not be served: the servable check (its artifact loaded in its engine,
/// predicting on an example) failed.
pub const UNSERVABLE: u8 = 5;
/// A deployment did not happen: its rollout failed (the environment was rolled back), or it did
/// not finish in time, or the served endpoint did not answer.
pub const NOT_DEPLOYED: u8 = 6;
/// The run was cancelled (Ctrl-C, SIGTERM).
pub const CANCELLED: u8 = 130;

pub const HELP: &str = "Exit codes:
  0    success
  1    a stage failed, or Kiln hit an error
  2    invalid command line or project file
  3    a data check failed
  4    a quality gate failed
  5    the model could not be served: the servable check failed
  6    a deployment did not happen: its rollout failed and was rolled back,
       or it did not finish in time, or the endpoint did not answer
  130  cancelled (Ctrl-C or SIGTERM)";

pub fn code(value: u8) -> ExitCode {
    ExitCode::from(value)
}
