//! Reading `kiln.yaml` into a [`Project`], and every check `kiln check` makes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use marked_yaml::{Span, Spanned};

use crate::deploy::Deploy;
use crate::diagnostic::{Diagnostic, Location, SourceFile};
use crate::gate;
use crate::project::{
    DataCheck, Gate, Model, Project, ProjectFormat, PythonEnv, RelPath, Stage, StageId,
    StageLocations,
};
use crate::schema::{KilnFile, ModelSpec, StageSpec};
use crate::values;
use crate::yaml;

/// The project file Kiln looks for first.
pub const KILN_FILE: &str = "kiln.yaml";
/// The DVC pipeline file Kiln runs when there is no `kiln.yaml`.
pub const DVC_FILE: &str = "dvc.yaml";
/// Top-level keys of `kiln.yaml` that Kiln ignores: a place for blocks that anchors share.
pub(crate) const EXTENSION_PREFIX: &str = "x-";

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no `kiln.yaml` (or `dvc.yaml`) in `{}`", root.display())]
    NotFound { root: PathBuf },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` has {} problem{}", file.display(), diagnostics.len(), if diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        file: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

impl Error {
    /// What the user can do about it, shown apart from the message. `Invalid` has none of its
    /// own: each of its diagnostics carries its hint.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NotFound { .. } => Some(
                "run `kiln init` to write one, or pass `-C DIR` to point at the project".into(),
            ),
            Error::Read { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Some("check the file's permissions".into())
            }
            Error::Read { .. } | Error::Invalid { .. } => None,
        }
    }
}

/// Finds and reads the project under `root`: `kiln.yaml`, else `dvc.yaml`.
pub fn load(root: &Path) -> Result<Project, Error> {
    let root = std::path::absolute(root).map_err(|source| Error::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let (name, format) = if root.join(KILN_FILE).is_file() {
        (KILN_FILE, ProjectFormat::Kiln)
    } else if root.join(DVC_FILE).is_file() {
        (DVC_FILE, ProjectFormat::Dvc)
    } else {
        return Err(Error::NotFound { root });
    };
    let path = root.join(name);
    let bytes = std::fs::read(&path).map_err(|source| Error::Read { path, source })?;
    let invalid = |diagnostics| Error::Invalid {
        file: PathBuf::from(name),
        diagnostics,
    };
    let source = SourceFile::from_bytes(name, bytes).map_err(|d| invalid(vec![d]))?;
    let parsed = match format {
        ProjectFormat::Kiln => parse_kiln(&root, source),
        ProjectFormat::Dvc => crate::dvc::parse_dvc(&root, source),
    };
    parsed.map_err(invalid)
}

/// Where a spanned value stands in `source`.
pub(crate) fn locate(source: &SourceFile, span: &Span) -> Option<Location> {
    let start = span.start()?;
    let offset = source.offset(start.line(), start.column());
    Some(Location {
        file: source.clone(),
        range: source.token_at(offset),
    })
}

fn locate_marker(source: &SourceFile, marker: &marked_yaml::Marker) -> Location {
    let offset = source.offset(marker.line(), marker.column());
    Location {
        file: source.clone(),
        range: source.token_at(offset),
    }
}

/// Where the key `key` of the mapping at `path` (as in [`marker_at_path`]) stands in `source`.
fn locate_key(
    source: &SourceFile,
    node: &marked_yaml::Node,
    path: &str,
    key: &str,
) -> Option<Location> {
    marker_at_path(node, path, Some(key), None).map(|m| locate_marker(source, &m))
}

/// Reads the nodes of `source` into serde type `T`, turning shape errors into diagnostics.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    source: &SourceFile,
    node: &marked_yaml::Node,
) -> Result<T, Diagnostic> {
    marked_yaml::from_node(node).map_err(|error| {
        let unknown_field = match &*error {
            marked_yaml::Error::UnknownFieldError(field, _, _) => Some(field.as_str()),
            _ => None,
        };
        // The path names the offending value exactly; the error's own span is often only its
        // enclosing mapping.
        let marker = error
            .path()
            .and_then(|path| marker_at_path(node, path, unknown_field, error.start_mark()))
            .or_else(|| error.start_mark());
        let location = marker.map(|m| locate_marker(source, &m));
        let (message, hint) = match &*error {
            marked_yaml::Error::UnknownFieldError(field, expected, _) => (
                format!("unknown key `{field}`"),
                Some(match closest(field, expected) {
                    Some(near) => format!(
                        "did you mean `{near}`? expected one of: {}",
                        expected.join(", ")
                    ),
                    // At the top level of `kiln.yaml`, a block kept for anchors (`.defaults:`,
                    // as GitLab writes them) needs the `x-` prefix.
                    None if expected.contains(&"models") => format!(
                        "expected one of: {}; a block kept for YAML anchors goes under a key that starts with `{EXTENSION_PREFIX}`",
                        expected.join(", ")
                    ),
                    None => format!("expected one of: {}", expected.join(", ")),
                }),
            ),
            marked_yaml::Error::FloatParseFailure(_, _)
            | marked_yaml::Error::IntegerParseFailure(_, _) => {
                ("expected a number here".to_string(), None)
            }
            marked_yaml::Error::NotBoolean(_) => {
                ("expected `true` or `false` here".to_string(), None)
            }
            other => (describe_shape_error(&other.to_string()), None),
        };
        let diagnostic = Diagnostic::new(message).at(location);
        match hint {
            Some(hint) => diagnostic.hint(hint),
            None => diagnostic,
        }
    })
}

/// Loads a project file's YAML (duplicate keys are errors), as located diagnostics.
pub(crate) fn parse_node(source: &SourceFile) -> Result<marked_yaml::Node, Diagnostic> {
    let options = yaml::Options {
        duplicate_keys_are_errors: true,
        quoted_is_text: false,
    };
    yaml::load(&source.text, options).map_err(|error| error.diagnostic(source))
}

/// Where the value at a serde path (`models.?.stages.?.deps`) starts. `?` stands for a mapping
/// key serde could not name, and keys may contain dots (`data/train.csv`), so the path is matched
/// against the tree: the first match at or after `near` (the error's own, coarser position) wins.
/// With `field`, points at that key in the mapping the path ends in (for unknown keys).
fn marker_at_path(
    root: &marked_yaml::Node,
    path: &str,
    field: Option<&str>,
    near: Option<marked_yaml::Marker>,
) -> Option<marked_yaml::Marker> {
    let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let mut found = Vec::new();
    collect_matches(root, &segments, field, &mut found);
    let after = |m: &marked_yaml::Marker| {
        near.is_none_or(|n| (m.line(), m.column()) >= (n.line(), n.column()))
    };
    found.iter().find(|m| after(m)).or(found.first()).copied()
}

fn collect_matches(
    node: &marked_yaml::Node,
    segments: &[&str],
    field: Option<&str>,
    found: &mut Vec<marked_yaml::Marker>,
) {
    use marked_yaml::Node;
    let Some(first) = segments.first() else {
        let marker = match (field, node) {
            (Some(field), Node::Mapping(mapping)) => mapping
                .iter()
                .find(|(k, _)| k.as_str() == field)
                .and_then(|(k, _)| k.span().start().copied()),
            (Some(_), _) => None,
            (None, _) => node.span().start().copied(),
        };
        found.extend(marker);
        return;
    };
    match node {
        Node::Mapping(mapping) if *first == "?" => {
            for (_, value) in mapping.iter() {
                collect_matches(value, &segments[1..], field, found);
            }
        }
        Node::Mapping(mapping) => {
            for end in (1..=segments.len()).rev() {
                let key = segments[..end].join(".");
                if let Some((_, value)) = mapping.iter().find(|(k, _)| k.as_str() == key) {
                    collect_matches(value, &segments[end..], field, found);
                }
            }
            // An unknown key is the path's last segment, and is itself the field.
            if segments.len() == 1 && field == Some(*first) {
                collect_matches(node, &[], field, found);
            }
        }
        Node::Sequence(sequence) => {
            let position = first
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<usize>()
                .ok();
            if let Some(item) = position.and_then(|p| sequence.get(p)) {
                collect_matches(item, &segments[1..], field, found);
            }
        }
        Node::Scalar(_) => {}
    }
}

/// Serde's messages, in Kiln's voice.
fn describe_shape_error(message: &str) -> String {
    let message = message.replace("invalid type: ", "wrong type: found ");
    match message.strip_prefix("missing field ") {
        Some(field) => format!("missing required key {field}"),
        None => message,
    }
}

/// The expected name nearest to `word`, if any is close (a typo).
fn closest<'a>(word: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Reads and validates the text of a `kiln.yaml`.
pub fn parse_kiln(root: &Path, source: SourceFile) -> Result<Project, Vec<Diagnostic>> {
    let mut node = parse_node(&source).map_err(|d| vec![d])?;
    // Top-level `x-` keys hold what anchors share (as in Docker Compose); Kiln ignores them.
    if let Some(top) = node.as_mapping_mut() {
        top.retain_with_order(|key, _| !key.starts_with(EXTENSION_PREFIX));
    }
    let file: KilnFile = deserialize(&source, &node).map_err(|d| vec![d])?;
    let mut diagnostics = Vec::new();
    let mut models = Vec::new();
    if file.models.is_empty() {
        diagnostics.push(
            Diagnostic::new("`models` is empty").hint("declare at least one model with its stages"),
        );
    }
    for (name, spec) in &file.models {
        let mut reader = ModelReader {
            root,
            source: &source,
            node: &node,
            diagnostics: &mut diagnostics,
        };
        if let Some(model) = reader.model(name, spec) {
            models.push(model);
        }
    }
    let notify = file.notify.as_ref().map(|spec| {
        let (notify, problems) = crate::notify::read(spec, &source);
        diagnostics.extend(problems);
        notify
    });
    let project = Project {
        root: root.to_path_buf(),
        file: PathBuf::from(KILN_FILE),
        format: ProjectFormat::Kiln,
        models,
        notify,
    };
    diagnostics.extend(check_examples(&project, &file, &source));
    diagnostics.extend(crate::deploy::check_ports(&file, &source));
    diagnostics.extend(check_graph(&project));
    if diagnostics.is_empty() {
        Ok(project)
    } else {
        Err(diagnostics)
    }
}

/// A model's example inputs and training data exist, or some stage writes them (as for deps).
fn check_examples(project: &Project, file: &KilnFile, source: &SourceFile) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for (name, spec) in &file.models {
        let Some(model) = project.model(name) else {
            continue;
        };
        let declared = [
            ("example", &model.example, &spec.example),
            ("training data", &model.training_data, &spec.training_data),
        ];
        for (what, path, written) in declared {
            let (Some(path), Some(written)) = (path, written) else {
                continue;
            };
            let produced = project
                .stages()
                .any(|stage| stage.outs.iter().any(|out| path.is_within(out)));
            if !produced && !path.to_path(&project.root).is_file() {
                diagnostics.push(
                    Diagnostic::new(format!(
                        "{what} `{path}` of model `{}` does not exist and no stage writes it",
                        model.name
                    ))
                    .at(locate(source, written.span()))
                    .hint("the path is relative to the model's `dir`: create the file, or add it to the `outs` of the stage that writes it"),
                );
            }
        }
    }
    diagnostics
}

struct ModelReader<'a> {
    root: &'a Path,
    source: &'a SourceFile,
    /// The whole file, to locate keys (serde keeps the spans of values only).
    node: &'a marked_yaml::Node,
    diagnostics: &'a mut Vec<Diagnostic>,
}

/// Whether `name` can name a model (or a stage): letters, digits, `_`, `-` and `.`, not starting
/// with `.` or `-`. Other crates check names from outside (an HTTP path, an imported tarball)
/// with it, since a model name becomes a folder name under `.kiln/`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with(['.', '-'])
}

impl ModelReader<'_> {
    fn at(&self, span: &Span) -> Option<Location> {
        locate(self.source, span)
    }

    fn error(&mut self, message: String, span: &Span, hint: Option<&str>) {
        let mut diagnostic = Diagnostic::new(message).at(self.at(span));
        if let Some(hint) = hint {
            diagnostic = diagnostic.hint(hint);
        }
        self.diagnostics.push(diagnostic);
    }

    /// A path relative to `base`, checked to stay inside the project.
    fn path(&mut self, base: &RelPath, path: &Spanned<String>) -> Option<RelPath> {
        if path.trim().is_empty() {
            self.error("empty path".into(), path.span(), None);
            return None;
        }
        let resolved = RelPath::resolve(base, path);
        if resolved.is_none() {
            self.error(
                format!("`{}` points outside the project", path.as_str()),
                path.span(),
                Some(
                    "paths are relative to the model's `dir` and must stay inside the project root",
                ),
            );
        }
        resolved
    }

    fn model(&mut self, name: &Spanned<String>, spec: &ModelSpec) -> Option<Model> {
        if !valid_name(name) {
            self.error(
                format!("`{}` is not a valid model name", name.as_str()),
                name.span(),
                Some("use letters, digits, `_`, `-` and `.`"),
            );
        }
        let dir = match &spec.dir {
            Some(dir) => self.path(&RelPath::root(), dir)?,
            None => RelPath::root(),
        };
        if let Some(dir_spec) = &spec.dir
            && !dir.to_path(self.root).is_dir()
        {
            self.error(
                format!("model directory `{dir}` does not exist"),
                dir_spec.span(),
                Some("`dir` is relative to the project root"),
            );
        }
        let python = spec.python.as_ref().and_then(|python| {
            let requirements = self.path(&dir, &python.requirements)?;
            if !requirements.to_path(self.root).is_file() {
                self.error(
                    format!("requirements file `{requirements}` does not exist"),
                    python.requirements.span(),
                    Some("the path is relative to the model's `dir`"),
                );
            }
            Some(PythonEnv { requirements })
        });
        let params_file = match &spec.params {
            Some(params) => {
                let path = self.path(&dir, params);
                if let Some(path) = &path
                    && !path.to_path(self.root).is_file()
                {
                    self.error(
                        format!("params file `{path}` does not exist"),
                        params.span(),
                        Some("create it, or remove `params`"),
                    );
                }
                path
            }
            None => {
                RelPath::resolve(&dir, "params.yaml").filter(|p| p.to_path(self.root).is_file())
            }
        };
        let params = params_file.as_ref().and_then(|path| {
            let full = path.to_path(self.root);
            // A missing file was reported above.
            let bytes = std::fs::read(&full).ok()?;
            let read = SourceFile::from_bytes(path.as_str(), bytes)
                .and_then(|source| values::parse_source(&source));
            read.map_err(|diagnostic| self.diagnostics.push(diagnostic))
                .ok()
        });

        let mut stages = Vec::new();
        for (stage_name, stage_spec) in &spec.stages {
            stages.push(self.stage(
                name,
                stage_name,
                stage_spec,
                &dir,
                params.as_ref(),
                params_file.as_ref(),
            ));
        }
        if spec.stages.is_empty() {
            self.error(
                format!("model `{}` has no stages", name.as_str()),
                name.span(),
                Some("add a `stages` mapping with at least one stage"),
            );
        }
        let outs: Vec<RelPath> = stages.iter().flat_map(|s: &Stage| s.outs.clone()).collect();
        let artifact = spec.artifact.as_ref().and_then(|artifact| {
            let path = self.path(&dir, artifact)?;
            if !outs.iter().any(|out| path.is_within(out)) {
                self.error(
                    format!(
                        "artifact `{path}` is not written by any stage of model `{}`",
                        name.as_str()
                    ),
                    artifact.span(),
                    Some("add it to the `outs` of the stage that writes it"),
                );
            }
            Some(path)
        });
        let example = spec.example.as_ref().and_then(|example| {
            let path = self.path(&dir, example)?;
            let extension = Path::new(path.as_str())
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !matches!(extension.as_deref(), Some("csv" | "json")) {
                self.error(
                    format!("example `{path}` is neither a CSV nor a JSON file"),
                    example.span(),
                    Some(
                        "name a `.csv` file with a header row, or a `.json` file of input records",
                    ),
                );
                return None;
            }
            Some(path)
        });
        let training_data = spec.training_data.as_ref().and_then(|data| {
            let path = self.path(&dir, data)?;
            let is_csv = Path::new(path.as_str())
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            if !is_csv {
                self.error(
                    format!("training data `{path}` is not a CSV file"),
                    data.span(),
                    Some("name the `.csv` file (with a header row) that the model is trained on"),
                );
                return None;
            }
            Some(path)
        });
        let mut gates = Vec::new();
        for text in &spec.gates {
            match gate::parse(text) {
                Ok(expr) => gates.push(Gate {
                    text: text.to_string(),
                    expr,
                    location: self.at(text.span()),
                }),
                Err(error) => {
                    let location = self.at(text.span()).map(|mut location| {
                        // Point inside the expression when the file holds it verbatim (a plain
                        // or simply quoted scalar on one line); otherwise underline it whole.
                        let after = &self.source.text[location.range.start..];
                        let quoted = after.starts_with(['"', '\'']);
                        let start = location.range.start + usize::from(quoted);
                        let verbatim =
                            self.source.text.get(start..start + text.len()) == Some(text.as_str());
                        if verbatim {
                            location.range = start + error.range.start
                                ..start + error.range.end.min(text.len() + 1);
                        }
                        location
                    });
                    let mut diagnostic = Diagnostic::new(format!(
                        "invalid gate `{}`: {}",
                        text.as_str(),
                        error.message
                    ))
                    .at(location);
                    if let Some(hint) = error.hint {
                        diagnostic = diagnostic.hint(hint);
                    }
                    self.diagnostics.push(diagnostic);
                }
            }
        }
        let deploy = match &spec.deploy {
            Some(deploy) => {
                let key = locate_key(
                    self.source,
                    self.node,
                    &format!("models.{}", name.as_str()),
                    "deploy",
                );
                let (deploy, problems) =
                    crate::deploy::read(name, deploy, key, spec.artifact.is_some(), self.source);
                self.diagnostics.extend(problems);
                deploy
            }
            None => Deploy::default_for_model(),
        };
        let image_repository = spec
            .image
            .as_ref()
            .and_then(|image| image.repository.as_ref())
            .and_then(
                |repository| match crate::deploy::check_repository(repository) {
                    Ok(()) => Some(repository.to_string()),
                    Err(hint) => {
                        self.error(
                            format!("`{}` is not a registry repository", repository.as_str()),
                            repository.span(),
                            Some(&hint),
                        );
                        None
                    }
                },
            );
        let repository_written = spec
            .image
            .as_ref()
            .is_some_and(|image| image.repository.is_some());
        if !repository_written {
            let kubernetes = deploy
                .environments
                .iter()
                .find(|env| env.kubernetes.is_some());
            if let (Some(env), Some(deploy_spec)) = (kubernetes, &spec.deploy) {
                let at = deploy_spec
                    .keys()
                    .find(|key| key.as_str() == env.name)
                    .map(|key| *key.span());
                if let Some(span) = at {
                    self.error(
                        format!(
                            "environment `{}` of model `{}` runs on Kubernetes, but the model has no `image.repository`",
                            env.name,
                            name.as_str()
                        ),
                        &span,
                        Some("the cluster pulls the model's image from a registry: add `image: {repository: registry.example.com/team/NAME}` to the model"),
                    );
                }
            }
        }
        Some(Model {
            name: name.to_string(),
            dir,
            python,
            params_file,
            stages,
            artifact,
            example,
            training_data,
            gates,
            deploy,
            image_repository,
        })
    }

    fn stage(
        &mut self,
        model: &str,
        name: &Spanned<String>,
        spec: &StageSpec,
        dir: &RelPath,
        params: Option<&values::FlatValues>,
        params_file: Option<&RelPath>,
    ) -> Stage {
        if !valid_name(name) {
            self.error(
                format!("`{}` is not a valid stage name", name.as_str()),
                name.span(),
                Some("use letters, digits, `_`, `-` and `.`"),
            );
        }
        if spec.cmd.trim().is_empty() {
            self.error(
                format!("stage `{}` has an empty `cmd`", name.as_str()),
                spec.cmd.span(),
                None,
            );
        }
        let mut locations = StageLocations {
            name: self.at(name.span()),
            cmd: self.at(spec.cmd.span()),
            ..Default::default()
        };
        let mut deps = Vec::new();
        for dep in &spec.deps {
            if let Some(path) = self.path(dir, dep) {
                deps.push(path);
                locations.deps.push(self.at(dep.span()));
            }
        }
        let mut outs = Vec::new();
        let mut metrics = Vec::new();
        for (out, is_metric) in spec
            .outs
            .iter()
            .map(|o| (o, false))
            .chain(spec.metrics.iter().map(|m| (m, true)))
        {
            if let Some(path) = self.path(dir, out) {
                if is_metric {
                    metrics.push(path.clone());
                }
                if !outs.contains(&path) {
                    outs.push(path);
                    locations.outs.push(self.at(out.span()));
                }
            }
        }
        let mut stage_params = Vec::new();
        for key in &spec.params {
            match (params, params_file) {
                (None, None) => self.error(
                    format!(
                        "stage `{}` reads param `{}`, but model `{model}` has no params file",
                        name.as_str(),
                        key.as_str()
                    ),
                    key.span(),
                    Some(
                        "create `params.yaml` in the model's `dir`, or set `params:` on the model",
                    ),
                ),
                (Some(values), Some(file)) if values::select(values, key).next().is_none() => self
                    .error(
                        format!("param `{}` is not in `{file}`", key.as_str()),
                        key.span(),
                        Some(
                            "name a key or a section of the params file, e.g. `train` or `train.C`",
                        ),
                    ),
                _ => {}
            }
            stage_params.push(key.to_string());
            locations.params.push(self.at(key.span()));
        }
        let mut checks = Vec::new();
        for (file, check) in &spec.checks {
            let Some(path) = self.path(dir, file) else {
                continue;
            };
            if !outs.iter().any(|out| path.is_within(out)) {
                self.error(
                    format!("stage `{}` checks `{path}`, which it does not write", name.as_str()),
                    file.span(),
                    Some("data checks run right after the stage that writes the file: list it (or its folder) in `outs`"),
                );
            }
            for (column, rule) in &check.columns {
                if let (Some(min), Some(max)) = (rule.min, rule.max)
                    && min > max
                {
                    self.error(
                        format!(
                            "column `{}`: `min` {min} is greater than `max` {max}",
                            column.as_str()
                        ),
                        column.span(),
                        None,
                    );
                }
            }
            checks.push(DataCheck {
                file: path,
                rows: check.rows.clone().unwrap_or_default(),
                columns: check
                    .columns
                    .iter()
                    .map(|(c, r)| (c.to_string(), r.clone()))
                    .collect(),
            });
        }
        Stage {
            id: StageId::new(model, name.as_str()),
            cmd: spec.cmd.to_string(),
            workdir: dir.clone(),
            deps,
            outs,
            metrics,
            params: stage_params,
            checks,
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            locations,
        }
    }
}

/// For each stage, the stages whose outs it reads.
pub fn upstream(project: &Project) -> BTreeMap<StageId, BTreeSet<StageId>> {
    let mut graph = BTreeMap::new();
    for stage in project.stages() {
        let producers = project
            .stages()
            .filter(|other| other.id != stage.id)
            .filter(|other| {
                stage
                    .deps
                    .iter()
                    .any(|dep| other.outs.iter().any(|out| dep.overlaps(out)))
            })
            .map(|other| other.id.clone())
            .collect();
        graph.insert(stage.id.clone(), producers);
    }
    graph
}

/// The checks that need every stage at once: unproduced deps, shared outs, cycles, gate metrics.
pub fn check_graph(project: &Project) -> Vec<Diagnostic> {
    let mut diagnostics = check_protected_outs(project);
    let stages: Vec<&Stage> = project.stages().collect();
    for (index, stage) in stages.iter().enumerate() {
        for (dep, location) in stage.deps.iter().zip(&stage.locations.deps) {
            if let Some(position) = stage.outs.iter().position(|out| out.overlaps(dep)) {
                diagnostics.push(
                    Diagnostic::new(format!(
                        "stage `{}` lists `{dep}` as a dep, but it also writes `{}`",
                        stage.id, stage.outs[position]
                    ))
                    .at(location.clone())
                    .hint("a stage cannot read what it writes: split it into two stages"),
                );
                continue;
            }
            let produced = stages
                .iter()
                .any(|other| other.outs.iter().any(|out| dep.overlaps(out)));
            if !produced && !dep.to_path(&project.root).exists() {
                diagnostics.push(
                    Diagnostic::new(format!("stage `{}` depends on `{dep}`, which no stage produces and which does not exist", stage.id))
                        .at(location.clone())
                        .hint("add it to the `outs` of the stage that writes it, or create it"),
                );
            }
        }
        for other in &stages[index + 1..] {
            for (out, location) in stage.outs.iter().zip(&stage.locations.outs) {
                if let Some(theirs) = other.outs.iter().find(|theirs| out.overlaps(theirs)) {
                    diagnostics.push(
                        Diagnostic::new(format!(
                            "stages `{}` and `{}` both write `{}`",
                            stage.id,
                            other.id,
                            if out.is_within(theirs) { out } else { theirs }
                        ))
                        .at(location.clone())
                        .hint("each output must belong to one stage: rename one of them"),
                    );
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(project) {
        let first = project.stage(&cycle[0]);
        let path: Vec<String> = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|id| format!("`{id}`"))
            .collect();
        diagnostics.push(
            Diagnostic::new(format!("stages form a cycle: {}", path.join(" -> ")))
                .at(first.and_then(|s| s.locations.name.clone()))
                .hint("a stage cannot depend, even indirectly, on its own outputs: remove one of these deps"),
        );
    }
    diagnostics.extend(check_gate_metrics(project));
    diagnostics
}

/// Gates may only name metrics that the model's metrics files hold. Metrics files that do not
/// exist yet (before the first run) cannot be checked, so only existing ones are read.
fn check_gate_metrics(project: &Project) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    'models: for model in &project.models {
        let files: Vec<&RelPath> = model.stages.iter().flat_map(|s| &s.metrics).collect();
        if model.gates.is_empty() {
            continue;
        }
        if files.is_empty() {
            if let Some(gate) = model.gates.first() {
                diagnostics.push(
                    Diagnostic::new(format!(
                        "model `{}` has gates but no stage declares `metrics`",
                        model.name
                    ))
                    .at(gate.location.clone())
                    .hint("list the metrics file a stage writes under that stage's `metrics`"),
                );
            }
            continue;
        }
        let mut known = BTreeSet::new();
        for file in &files {
            match values::read_flat(&file.to_path(&project.root)) {
                Ok(values) => known.extend(values.into_keys()),
                // Not written yet, or unreadable: the run will tell.
                Err(_) => continue 'models,
            }
        }
        for gate in &model.gates {
            for name in gate.expr.metric_names() {
                if !known.contains(name) {
                    let known_list: Vec<&str> = known.iter().map(String::as_str).collect();
                    diagnostics.push(
                        Diagnostic::new(format!("gate `{}` names metric `{name}`, which no metrics file of model `{}` holds", gate.text, model.name))
                            .at(gate.location.clone())
                            .hint(format!("known metrics: {}", known_list.join(", "))),
                    );
                }
            }
        }
    }
    diagnostics
}

/// Kiln deletes a stage's outs before running it, so an out must never be, or contain, what the
/// project itself is made of: its root, its state folder, git's, its project file, a model's
/// folder or a stage's working folder, a params or requirements file.
fn check_protected_outs(project: &Project) -> Vec<Diagnostic> {
    let protected_path = |path: &str| RelPath::resolve(&RelPath::root(), path);
    let mut protected: Vec<(RelPath, String)> = vec![(RelPath::root(), "the project root".into())];
    for (path, what) in [
        (".kiln", "Kiln's state folder"),
        (".git", "the git repository"),
    ] {
        protected.extend(protected_path(path).map(|p| (p, what.to_string())));
    }
    if let Some(file) = project.file.to_str().and_then(protected_path) {
        protected.push((file, "the project file".into()));
    }
    for model in &project.models {
        protected.push((
            model.dir.clone(),
            format!("the folder of model `{}`", model.name),
        ));
        if let Some(params) = &model.params_file {
            protected.push((
                params.clone(),
                format!("the params file of model `{}`", model.name),
            ));
        }
        if let Some(python) = &model.python {
            protected.push((
                python.requirements.clone(),
                format!("the requirements of model `{}`", model.name),
            ));
        }
    }
    let mut diagnostics = Vec::new();
    for stage in project.stages() {
        for (out, location) in stage.outs.iter().zip(&stage.locations.outs) {
            let clash = protected.iter().find(|(path, _)| {
                path.is_within(out)
                    || (out.is_within(path)
                        && path.as_str().starts_with('.')
                        && path.as_str() != ".")
            });
            if let Some((_, what)) = clash {
                diagnostics.push(
                    Diagnostic::new(format!("stage `{}` declares `{out}` as an out, which would replace or write into {what}", stage.id))
                        .at(location.clone())
                        .hint("Kiln deletes a stage's outs before running it: name the files or folders the stage writes, e.g. `data/processed` or `model.onnx`"),
                );
            }
        }
    }
    diagnostics
}

/// A cycle among stages, if there is one, as the list of stages along it.
fn find_cycle(project: &Project) -> Option<Vec<StageId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        id: &StageId,
        graph: &BTreeMap<StageId, BTreeSet<StageId>>,
        marks: &mut BTreeMap<StageId, Mark>,
        path: &mut Vec<StageId>,
    ) -> Option<Vec<StageId>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == id).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            None => {}
        }
        marks.insert(id.clone(), Mark::Visiting);
        path.push(id.clone());
        for next in graph.get(id).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(id.clone(), Mark::Done);
        None
    }
    let graph = upstream(project);
    let mut marks = BTreeMap::new();
    for id in graph.keys() {
        if let Some(mut cycle) = visit(id, &graph, &mut marks, &mut Vec::new()) {
            // The graph points upstream; show the cycle in the order data flows.
            cycle.reverse();
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        dir
    }

    fn messages(error: Error) -> Vec<String> {
        match error {
            Error::Invalid { diagnostics, .. } => {
                diagnostics.iter().map(ToString::to_string).collect()
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_example_is_relative_to_the_model_dir() {
        let dir = project(&[
            (
                KILN_FILE,
                b"models:\n  m:\n    dir: models/m\n    stages:\n      a: {cmd: echo, outs: [out]}\n    example: out/rows.json\n",
            ),
            ("models/m/.keep", b""),
        ]);
        let project = load(dir.path()).unwrap();
        let example = project.models[0].example.as_ref().unwrap();
        assert_eq!(example.as_str(), "models/m/out/rows.json");
    }

    #[test]
    fn training_data_is_a_csv_file_relative_to_the_model_dir() {
        let dir = project(&[
            (
                KILN_FILE,
                b"models:\n  m:\n    dir: models/m\n    stages:\n      a: {cmd: echo, outs: [data]}\n    training_data: data/train.csv\n",
            ),
            ("models/m/.keep", b""),
        ]);
        let project = load(dir.path()).unwrap();
        let data = project.models[0].training_data.as_ref().unwrap();
        assert_eq!(data.as_str(), "models/m/data/train.csv");
    }

    #[test]
    fn training_data_that_is_missing_or_not_csv_is_located() {
        let text = "models:\n  m:\n    stages:\n      a: {cmd: echo, outs: [out]}\n    training_data: data/train.parquet\n";
        let dir = project(&[(KILN_FILE, text.as_bytes()), ("data/train.parquet", b"")]);
        let Error::Invalid { diagnostics, .. } = load(dir.path()).unwrap_err() else {
            panic!("expected diagnostics")
        };
        assert_eq!(
            diagnostics[0].message,
            "training data `data/train.parquet` is not a CSV file"
        );
        let location = diagnostics[0].location.as_ref().unwrap();
        assert_eq!(&text[location.range.clone()], "data/train.parquet");

        let text = "models:\n  m:\n    stages:\n      a: {cmd: echo, outs: [out]}\n    training_data: data/train.csv\n";
        let dir = project(&[(KILN_FILE, text.as_bytes())]);
        let Error::Invalid { diagnostics, .. } = load(dir.path()).unwrap_err() else {
            panic!("expected diagnostics")
        };
        assert_eq!(
            diagnostics[0].message,
            "training data `data/train.csv` of model `m` does not exist and no stage writes it"
        );
        let location = diagnostics[0].location.as_ref().unwrap();
        assert_eq!(&text[location.range.clone()], "data/train.csv");
    }

    #[test]
    fn did_you_mean_names_training_data() {
        let dir = project(&[(
            KILN_FILE,
            b"models:\n  m:\n    stages:\n      a: {cmd: echo, outs: [out]}\n    trainig_data: out/x.csv\n",
        )]);
        let Error::Invalid { diagnostics, .. } = load(dir.path()).unwrap_err() else {
            panic!("expected diagnostics")
        };
        assert!(
            diagnostics[0]
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("did you mean `training_data`?")),
            "{:?}",
            diagnostics[0].hint
        );
    }

    #[test]
    fn did_you_mean_catches_swapped_letters() {
        let dir = project(&[(
            KILN_FILE,
            b"models:\n  m:\n    stages:\n      a: {cmd: echo, mertics: [m.json]}\n",
        )]);
        let error = load(dir.path()).unwrap_err();
        let Error::Invalid { diagnostics, .. } = &error else {
            panic!("{error}")
        };
        assert!(
            diagnostics[0]
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("did you mean `metrics`?")),
            "{:?}",
            diagnostics[0].hint
        );
        assert_eq!(closest("metrcs", &["metrics", "deps"]), Some("metrics"));
        assert_eq!(closest("zzz", &["metrics", "deps"]), None);
    }

    #[test]
    fn a_params_file_that_is_not_utf8_is_located() {
        let dir = project(&[
            (
                KILN_FILE,
                b"models:\n  m:\n    stages:\n      a: {cmd: echo, params: [train]}\n",
            ),
            ("params.yaml", b"train:\n  C: 1\n  note: \xe9t\xe9\n"),
        ]);
        assert_eq!(
            messages(load(dir.path()).unwrap_err()),
            ["params.yaml:3:9: `params.yaml` is not UTF-8: byte `0xe9` at line 3, column 9"]
        );
    }

    #[test]
    fn an_unknown_top_level_key_suggests_the_extension_prefix() {
        let dir = project(&[(
            KILN_FILE,
            b".defaults: &d {cmd: echo}\nmodels:\n  m:\n    stages:\n      a: *d\n",
        )]);
        let error = load(dir.path()).unwrap_err();
        let Error::Invalid { diagnostics, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(
            diagnostics[0].to_string(),
            "kiln.yaml:1:1: unknown key `.defaults`"
        );
        assert!(
            diagnostics[0]
                .hint
                .as_deref()
                .unwrap()
                .ends_with("starts with `x-`"),
            "{:?}",
            diagnostics[0].hint
        );
        let dir = project(&[(
            KILN_FILE,
            b"x-defaults: &d {cmd: echo}\nmodels:\n  m:\n    stages:\n      a: *d\n",
        )]);
        assert_eq!(load(dir.path()).unwrap().stages().count(), 1);
    }

    #[test]
    fn errors_give_their_hint() {
        let dir = project(&[]);
        let error = load(dir.path()).unwrap_err();
        assert!(error.hint().unwrap().contains("kiln init"));
        let dir = project(&[(KILN_FILE, b"models: {}\n")]);
        assert_eq!(load(dir.path()).unwrap_err().hint(), None);
    }
}
