//! `kiln image`: OCI images of a project's model versions, without a container engine. `build`
//! writes the image of a registered version into an OCI image layout (the project's
//! `.kiln/images/`, shared by every model so that blobs are stored once, or `--output DIR`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use kiln_deploy::ServedModel;
use kiln_image::{BuiltImage, ImageSpec, LayerRole, Runtime};
use kiln_pipeline::{ModelRef, Workspace};
use kiln_spec::Project;

use crate::commands::load;
use crate::error::{CliError, Result};
use crate::exit;
use crate::printer::{errln, outln};

/// OCI images of model versions.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the OCI image of a registered version into an image layout on disk.
    #[command(
        after_help = "The image holds Kiln's server (stripped), ONNX Runtime or the model's Python
environment, the shared libraries they load, and the artifact; its entrypoint serves the model
on 0.0.0.0:8080 as a non-root user. The same version gives the same image digest; another
version of the model reuses every layer but the model's.

Examples:
  kiln image build iris@v3
  kiln image build iris@production --json
  kiln image build iris@v3 --output /tmp/iris-layout
  skopeo inspect oci:.kiln/images:iris:v3"
    )]
    Build(BuildArgs),
    /// Push a version's image to an OCI registry, tagged `vN`, its commit and its aliases.
    #[command(
        after_help = "The image is built into `.kiln/images/` first (an unchanged version, same digest). Blobs the
registry has are skipped; the SBOM goes along. The digest pushed is recorded on the version
(`kiln models show`).

Credentials: KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD, else the registry's entry in the
Docker config file ($DOCKER_CONFIG/config.json, else ~/.docker/config.json). Registries on
loopback are spoken to in plain HTTP, others over HTTPS unless --insecure.

Examples:
  kiln image push iris@v3 127.0.0.1:5000/team/iris
  kiln image push iris@production ghcr.io/acme/iris --json
  export KILN_REGISTRY_USERNAME=ci KILN_REGISTRY_PASSWORD=...
  kiln image push iris registry.example.com/ml/iris"
    )]
    Push(crate::image_push_cmd::PushArgs),
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The version: MODEL@VERSION or MODEL@ALIAS (`iris@v3`, `iris@production`; `iris` is `iris@latest`).
    #[arg(value_name = "MODEL@VERSION")]
    pub reference: String,

    /// Write the image into the image layout DIR (created when missing) instead of `.kiln/images/`.
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// The image's name in the layout (default `MODEL:vN`).
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,

    /// The port the server listens on in the container.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Print what was built as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn image(root: &Path, command: ImageCommand) -> Result<ExitCode> {
    match command {
        ImageCommand::Build(args) => build(root, args),
        ImageCommand::Push(args) => {
            crate::image_push_cmd::push(root, args)?;
            Ok(exit::code(exit::SUCCESS))
        }
    }
}

/// `kiln image build`.
fn build(root: &Path, args: BuildArgs) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let reference = ModelRef::parse(&args.reference)?;
    let project = load(&root)?;
    let workspace = Workspace::open(&project.root)?;
    let mut spec = image_spec(&workspace, &project, &reference, &mut |line| {
        errln!("  {line}")
    })?;
    spec.port = args.port;
    if let Some(tag) = args.tag {
        spec.reference = tag;
    }
    let layout = match &args.output {
        Some(dir) => std::path::absolute(dir)?,
        None => project_layout(&workspace),
    };
    let cache = base_cache()?;
    errln!(
        "building `{}`: {} v{} into `{}`",
        spec.reference,
        spec.model,
        spec.version,
        layout.display()
    );
    let built = kiln_image::build(&spec, &layout, &cache, &mut |line| errln!("  {line}"))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        report(&built);
    }
    Ok(exit::code(exit::SUCCESS))
}

/// The project's image layout, shared by all its models: `.kiln/images/`.
pub fn project_layout(workspace: &Workspace) -> PathBuf {
    workspace.state_dir.join("images")
}

/// Where base layers are cached: `$KILN_CACHE_DIR/images`, shared between projects.
pub fn base_cache() -> Result<PathBuf> {
    Ok(kiln_pipeline::python_env::EnvOptions::from_env()
        .map_err(kiln_pipeline::Error::from)?
        .cache_root
        .join("images"))
}

/// What an image of the version `reference` names is made of: its artifact as registered,
/// what serves it (ONNX Runtime, or the model's Python environment: [`kiln_deploy::prepare`]
/// finds both, as for `kiln serve`), this `kiln` executable, and the version's lineage for the
/// labels. The image is named `MODEL:vN`.
pub fn image_spec(
    workspace: &Workspace,
    project: &Project,
    reference: &ModelRef,
    progress: &mut dyn FnMut(&str),
) -> Result<ImageSpec> {
    let served = kiln_deploy::prepare(workspace, project, reference, progress)?;
    spec_of(workspace, &project.root, &served)
}

/// The image of a version already prepared for serving.
fn spec_of(workspace: &Workspace, root: &Path, served: &ServedModel) -> Result<ImageSpec> {
    let registered = workspace
        .registry
        .model_version(&served.name, served.version)?;
    let runtime = match (&served.onnx_runtime, &served.python) {
        (Some(library), _) => Runtime::Onnx {
            library: library.clone(),
        },
        (None, Some(python)) => Runtime::Python {
            python: python.clone(),
        },
        (None, None) => {
            return Err(CliError::usage(format!(
                "`{}` is served by Python workers, and its model declares no Python environment to put in the image: add `python: {{requirements: requirements.txt}}` to the model in kiln.yaml",
                served.name
            )));
        }
    };
    let kiln = std::env::current_exe()
        .map_err(|error| anyhow::anyhow!("cannot find the running `kiln` executable: {error}"))?;
    let version = served.version;
    Ok(ImageSpec {
        model: served.name.clone(),
        version,
        reference: format!("{}:v{version}", served.name),
        artifact: served.path.clone(),
        artifact_digest: served.artifact.digest.to_hex(),
        runtime,
        kiln,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        revision: registered.lineage.commit.clone(),
        source: git_source(root),
        created_ms: registered.registered_at_ms,
        port: 8080,
    })
}

/// Builds the image of a version prepared for serving (a rollout's) into the project's
/// layout: nothing is written when the layout holds it already, bar the name.
pub fn build_served(
    root: &Path,
    served: &ServedModel,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage> {
    let workspace = Workspace::open(root)?;
    let spec = spec_of(&workspace, root, served)?;
    let built = kiln_image::build(&spec, &project_layout(&workspace), &base_cache()?, progress)?;
    Ok(built)
}

/// The project's `origin` remote, without credentials, for the `source` label.
fn git_source(root: &Path) -> Option<String> {
    let output = Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(root)
        .output()
        .ok()?;
    let url = String::from_utf8(output.stdout).ok()?.trim().to_string();
    if !output.status.success() || url.is_empty() {
        return None;
    }
    // `https://user:token@host/repo` → `https://host/repo`.
    Some(match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((credentials, host)) if !credentials.contains('/') => format!("{scheme}://{host}"),
            _ => url,
        },
        None => url,
    })
}

fn report(built: &BuiltImage) {
    for layer in &built.layers {
        let role = match layer.role {
            LayerRole::Base => "base ",
            LayerRole::Model => "model",
        };
        errln!(
            "  {role}  {}  {:>9}  {}  {}",
            short(&layer.digest),
            human_size(layer.size),
            if layer.reused { "reused" } else { "new   " },
            layer.description
        );
    }
    errln!(
        "built `{}` in {:.2} s: {}, manifest {}, SBOM {}",
        built.reference,
        built.elapsed_ms as f64 / 1000.0,
        human_size(built.size),
        built.manifest_digest,
        short(&built.sbom_digest)
    );
    errln!(
        "  skopeo inspect oci:{}:{}",
        built.layout.display(),
        built.reference
    );
}

/// `sha256:0123456789ab`.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} B"),
    }
}
