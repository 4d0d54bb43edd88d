//! `kiln image push`: a version's image, built into the project's image layout (a rebuild of an
//! unchanged version writes nothing new and gives the same digest), to an OCI distribution registry, tagged `vN`, with the commit's short
//! SHA and the version's aliases; the digest pushed is recorded on the version.

use std::path::Path;
use std::time::Instant;

use kiln_image::{PushOptions, Pushed};
use kiln_pipeline::Workspace;
use kiln_registry::{ModelRef, ModelVersion, Selector, VersionImage};
use serde::Serialize;

use crate::commands::load;
use crate::error::Result;
use crate::printer::{errln, outln};

/// Push a version's image to a registry.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The version: `MODEL@vN`, `MODEL@ALIAS`, or `MODEL` (its `latest`).
    #[arg(value_name = "MODEL[@VERSION|@ALIAS]")]
    reference: String,
    /// The repository to push to: `REGISTRY/REPOSITORY`, e.g. `127.0.0.1:5000/team/iris` or
    /// `ghcr.io/acme/iris` (no tag: tags come from the version).
    #[arg(value_name = "REGISTRY/REPOSITORY")]
    destination: String,
    /// Allow plain HTTP to a registry that is not on loopback (loopback ones always use it).
    #[arg(long)]
    insecure: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: &'a str,
    version: i64,
    #[serde(flatten)]
    pushed: &'a Pushed,
    seconds: f64,
}

pub fn push(root: &Path, args: PushArgs) -> Result<()> {
    let project = load(root)?;
    let mut workspace = Workspace::open(&project.root)?;
    let reference = ModelRef::parse(&args.reference)?;
    let number = workspace.registry.resolve(&reference)?;
    let version = workspace.registry.model_version(&reference.model, number)?;
    let started = Instant::now();

    // The project's layout and the name `kiln image build` gives the version there.
    let layout = crate::image_cmd::project_layout(&workspace);
    let options = PushOptions {
        insecure: args.insecure,
        ..PushOptions::default()
    };
    let mut progress = |line: &str| errln!("  {line}");
    // Built every time (the base is cached; an unchanged version gives the same digest), so that
    // what is pushed is this version's image as Kiln builds it, never an older build or one made
    // with other options under the same name.
    let reference = ModelRef {
        model: version.model.clone(),
        selector: Selector::Version(version.version),
    };
    let spec = crate::image_cmd::image_spec(&workspace, &project, &reference, &mut progress)?;
    kiln_image::build(
        &spec,
        &layout,
        &crate::image_cmd::base_cache()?,
        &mut progress,
    )?;
    let pushed = push_and_record(
        &mut workspace,
        &version,
        &layout,
        &args.destination,
        Tags::WithAliases,
        &options,
        &mut progress,
    )?;
    let seconds = started.elapsed().as_secs_f64();

    if args.json {
        let report = Report {
            model: &version.model,
            version: version.version,
            pushed: &pushed,
            seconds,
        };
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        errln!(
            "{} blobs pushed ({} bytes), {} already there, in {seconds:.2} s",
            pushed.blobs_pushed,
            pushed.bytes,
            pushed.blobs_skipped
        );
        outln!("{}@{}", pushed.repository, pushed.digest);
    }
    Ok(())
}

/// Pushes the version's image, as the layout names it (`MODEL:vN`), to `destination` with the
/// version's tags, and records the digest pushed on the version.
pub fn push_and_record(
    workspace: &mut Workspace,
    version: &ModelVersion,
    layout: &Path,
    destination: &str,
    tags: Tags,
    options: &PushOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Pushed> {
    let name = image_name(version);
    let pushed = kiln_image::push(
        layout,
        &name,
        destination,
        &tags_of(version, tags),
        options,
        progress,
    )?;
    workspace.registry.record_image(
        &version.model,
        version.version,
        &VersionImage {
            repository: pushed.repository.clone(),
            digest: pushed.digest.clone(),
            tags: pushed.tags.clone(),
            pushed_at_ms: now_ms(),
        },
    )?;
    Ok(pushed)
}

/// The name `kiln image build` gives a version's image in the layout.
fn image_name(version: &ModelVersion) -> String {
    format!("{}:v{}", version.model, version.version)
}

/// Which tags an image is pushed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tags {
    /// `vN`, the commit's short SHA and every alias the version holds (`kiln image push`).
    WithAliases,
    /// `vN` and the short SHA only: a rollout's push, whose environment alias may yet move back
    /// when the rollout fails, which would leave the registry's alias tag behind.
    VersionOnly,
}

/// `vN`, the commit's short SHA (not for a version trained from uncommitted changes, which that
/// commit does not hold), then the version's aliases when asked for.
fn tags_of(version: &ModelVersion, tags: Tags) -> Vec<String> {
    let mut names = vec![format!("v{}", version.version)];
    if let Some(commit) = &version.lineage.commit
        && !version.lineage.dirty
    {
        names.push(commit.chars().take(7).collect());
    }
    if tags == Tags::WithAliases {
        names.extend(version.aliases.iter().cloned());
    }
    names
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
