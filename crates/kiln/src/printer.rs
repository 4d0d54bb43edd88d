//! Where the binary's text goes: data on stdout, messages and progress on stderr.
//!
//! `println!` panics when stdout is a closed pipe (`kiln runs show 3 | head -1`); [`outln!`]
//! instead returns [`Closed`] (as a `CliError`) from the command, which `main` turns into a quiet
//! exit. Messages ([`errln!`]) are best effort: a closed stderr must not stop a run half-way.

/// stdout was closed by the reader: stop writing, exit quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct Closed;

/// A failed write to stdout: a closed pipe is [`Closed`] (only here: a broken pipe elsewhere is
/// an error like any other).
pub fn stdout_failed(error: std::io::Error) -> crate::error::CliError {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        crate::error::CliError::Closed(Closed)
    } else {
        crate::error::CliError::Other(anyhow::Error::new(error).context("cannot write to stdout"))
    }
}

/// A line of data on stdout; returns from the calling command when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::printer::stdout_failed)?
    }};
}

/// Data on stdout, without a newline; returns from the calling command when stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::printer::stdout_failed)?
    }};
}

/// A message on stderr, best effort.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub(crate) use {errln, out, outln};
