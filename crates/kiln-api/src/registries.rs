//! Open registries kept between requests: a request takes one (or opens one), uses it on a
//! blocking thread, and gives it back. Opening brings the schema up to date and looks for
//! interrupted runs, too much work to repeat for every read.

use std::path::PathBuf;
use std::sync::Mutex;

use kiln_registry::Registry;

/// Registries kept open for the next requests; more are opened under load and dropped after.
const IDLE_KEPT: usize = 4;

#[derive(Debug)]
pub struct Registries {
    root: PathBuf,
    idle: Mutex<Vec<Registry>>,
}

impl Registries {
    pub fn new(root: PathBuf) -> Registries {
        Registries {
            root,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` with an open registry. Blocks: call it from a blocking thread.
    pub fn with<T>(&self, read: impl FnOnce(&Registry) -> T) -> Result<T, kiln_pipeline::Error> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let registry = match taken {
            Some(registry) => registry,
            None => kiln_pipeline::workspace::open_registry(&self.root)?,
        };
        let result = read(&registry);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_KEPT {
            idle.push(registry);
        }
        Ok(result)
    }
}
