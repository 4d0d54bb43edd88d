//! Integration tests of the pipeline engine: real processes, real virtualenvs, real projects in
//! temporary folders.

mod checkout;
mod outs;
mod python_env;
mod servable;
mod watch;
