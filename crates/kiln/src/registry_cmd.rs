//! `kiln registry`: the model registry over HTTP (`kiln registry serve`), read-only but for
//! alias moves, which take the token of `KILN_REGISTRY_TOKEN`. The API itself is `kiln-api`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use kiln_api::{AliasMoved, ApiConfig, KILN_REGISTRY_TOKEN, OnAliasMoved};
use kiln_notify::Event;

use crate::error::{CliError, Result};
use crate::exit;
use crate::notify;
use crate::printer::errln;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry as JSON over HTTP: models, versions with lineage, aliases, history.
    #[command(after_help = "Routes:
  GET /v1/models
  GET /v1/models/{model}
  GET /v1/models/{model}/versions?limit=50&after=N   newest first, a page at a time
  GET /v1/models/{model}/versions/{n}                lineage, metrics, aliases
  GET /v1/models/{model}/aliases[/{alias}]
  GET /v1/models/{model}/history[?alias=production]
  PUT /v1/models/{model}/aliases/{alias}             {\"version\": 3, \"reason\": \"...\"}

Moving an alias takes `Authorization: Bearer <token>`, where the token is the value of
KILN_REGISTRY_TOKEN when the server started; without it set, no alias moves.

Examples:
  kiln registry serve
  KILN_REGISTRY_TOKEN=s3cret kiln registry serve --listen 127.0.0.1:8181
  curl -s localhost:8181/v1/models/iris/versions?limit=10
  curl -s -X PUT -H 'Authorization: Bearer s3cret' localhost:8181/v1/models/iris/aliases/production -d '{\"version\": 3}'")]
    Serve {
        /// Address and port to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8181", value_name = "ADDR:PORT")]
        listen: SocketAddr,
    },
}

pub fn registry(root: &Path, command: RegistryCommand) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    match command {
        RegistryCommand::Serve { listen } => serve(&root, listen)?,
    }
    Ok(exit::code(exit::SUCCESS))
}

fn serve(root: &Path, listen: SocketAddr) -> Result<()> {
    let state = root.join(kiln_pipeline::workspace::STATE_DIR);
    if !state.is_dir() {
        return Err(CliError::usage(format!(
            "`{}` holds no registry (no `{}` folder): run `kiln registry serve` in a project where `kiln run` has run, or name one with `-C DIR`",
            root.display(),
            kiln_pipeline::workspace::STATE_DIR
        )));
    }
    let mut config = ApiConfig::from_env(root.to_path_buf());
    config.on_alias_moved = Some(notify_moves(root.to_path_buf()));
    let moves = if config.token.is_some() {
        "alias moves take the token of KILN_REGISTRY_TOKEN".to_string()
    } else {
        format!("alias moves are off: set {KILN_REGISTRY_TOKEN} to allow them")
    };
    kiln_api::serve_blocking(config, listen, |addr| {
        if !addr.ip().is_loopback() {
            errln!(
                "warning: `{addr}` is reachable from other machines: anyone who reaches it can read the registry"
            );
        }
        errln!("kiln registry serve: listening on http://{addr} ({moves})");
    })?;
    Ok(())
}

/// Sends the project's notifications (`notify:` in kiln.yaml, read at each move) for an alias
/// moved through the API, as `kiln models alias` does, on a thread of its own: a slow receiver
/// does not hold the HTTP answer.
fn notify_moves(root: std::path::PathBuf) -> OnAliasMoved {
    std::sync::Arc::new(move |moved: &AliasMoved, reason: Option<&str>| {
        let Ok(project) = kiln_spec::load(&root) else {
            return;
        };
        if project.notify.is_none() {
            return;
        }
        let message = notify::alias_message(
            Event::Promoted,
            &moved.model,
            &moved.alias,
            moved.from_version,
            moved.to_version,
            reason,
        );
        std::thread::spawn(move || {
            let notifier = notify::start(&project);
            notifier.send(&message);
            notify::finish(notifier);
        });
    })
}
