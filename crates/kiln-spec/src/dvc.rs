//! `dvc.yaml`: DVC pipelines read into a Kiln [`Project`], so that DVC users can switch without
//! rewriting their pipeline.
//!
//! The whole file becomes one model, named after the root folder, whose `dir` is the root. Kiln
//! reads DVC's own grammar: stages with `cmd` (one command or a list), `wdir`, `deps`, `outs`,
//! `params`, `metrics` and `plots` (both also outs); `foreach`/`do` and `matrix` templates; and
//! `${...}` values from `foreach`, `vars` and `params.yaml`. What Kiln cannot honour yet (params
//! from another file, external deps such as `s3://...`) is reported, never silently dropped.
//!
//! The file is walked as `marked_yaml` nodes rather than read through serde: templates are
//! expanded before a stage has a shape, and every value keeps its place for diagnostics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use crate::diagnostic::{Diagnostic, Location, SourceFile};
use crate::project::{Model, Project, ProjectFormat, RelPath, Stage, StageId, StageLocations};
use crate::validate::{DVC_FILE, check_graph, locate, parse_node};
use crate::values::{self, FlatValues};
use crate::yaml;

/// Keys DVC allows at the top level of `dvc.yaml`.
const TOP_KEYS: &[&str] = &[
    "stages",
    "vars",
    "params",
    "metrics",
    "plots",
    "artifacts",
    "datasets",
];
/// Keys of one stage (or of a `do` body). `foreach`, `do` and `matrix` are handled when the stage
/// is expanded, before these are read.
const STAGE_KEYS: &[&str] = &[
    "cmd",
    "wdir",
    "deps",
    "outs",
    "params",
    "metrics",
    "plots",
    "vars",
    "frozen",
    "always_changed",
    "desc",
    "meta",
];
/// Options DVC accepts on an entry of `outs` or `metrics`. Kiln caches every out by content and
/// restores it when the stage is skipped, so none of them changes what Kiln does.
const OUT_OPTIONS: &[&str] = &[
    "cache",
    "persist",
    "checkpoint",
    "desc",
    "remote",
    "push",
    "type",
    "labels",
    "meta",
];
/// Options an entry of `plots` accepts on top of [`OUT_OPTIONS`]: how DVC draws it.
const PLOT_OPTIONS: &[&str] = &[
    "x", "y", "template", "title", "x_label", "y_label", "header",
];
/// The one params file Kiln reads for a `dvc.yaml` project: DVC's default, next to `dvc.yaml`.
const PARAMS_FILE: &str = "params.yaml";

/// Reads and validates the text of a `dvc.yaml`.
pub fn parse_dvc(root: &Path, source: SourceFile) -> Result<Project, Vec<Diagnostic>> {
    let node = parse_node(&source).map_err(|d| vec![d])?;
    let mut reader = Reader {
        root,
        source: &source,
        diagnostics: Vec::new(),
        params_unreadable: false,
    };
    let model = reader.model(&node, model_name_for(root));
    let mut diagnostics = reader.diagnostics;
    let project = Project {
        root: root.to_path_buf(),
        file: PathBuf::from(DVC_FILE),
        format: ProjectFormat::Dvc,
        models: model.into_iter().collect(),
        notify: None,
    };
    diagnostics.extend(check_graph(&project));
    if diagnostics.is_empty() {
        Ok(project)
    } else {
        Err(diagnostics)
    }
}

/// The model name for a project rooted at `root`: its folder name, cut down to what Kiln allows
/// in names (letters, digits, `_`, `-`, `.`, not starting with `.` or `-`), else `default`.
pub(crate) fn model_name_for(root: &Path) -> String {
    let folder = std::path::absolute(root)
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    crate::project::name_from_folder(&folder, "default")
}

/// `params.yaml` at the root, read once for every stage.
struct ParamsFile {
    path: RelPath,
    values: FlatValues,
}

/// One stage as it will be read: a plain stage, or one instance of a `foreach` or `matrix`.
struct Instance<'n> {
    name: String,
    /// The key under `stages:` the instance comes from: where diagnostics about it point.
    name_span: Span,
    body: &'n MarkedMappingNode,
    /// Keys of `body` that the expansion consumed (`matrix` sits beside the stage's own keys).
    consumed: &'static [&'static str],
    /// `base` with `item` and `key` in front.
    scope: Scope,
    /// How many layers of `scope` are `item`/`key` (stage `vars` go right after them).
    locals: usize,
}

struct Reader<'a> {
    root: &'a Path,
    source: &'a SourceFile,
    diagnostics: Vec<Diagnostic>,
    /// `params.yaml` exists but could not be read (and that was reported).
    params_unreadable: bool,
}

impl Reader<'_> {
    fn at(&self, span: &Span) -> Option<Location> {
        locate(self.source, span)
    }

    fn error(&mut self, message: impl Into<String>, span: &Span, hint: Option<&str>) {
        let mut diagnostic = Diagnostic::new(message).at(self.at(span));
        if let Some(hint) = hint {
            diagnostic = diagnostic.hint(hint);
        }
        self.diagnostics.push(diagnostic);
    }

    fn unknown_key(&mut self, key: &MarkedScalarNode, place: &str, expected: &[&str]) {
        let hint = format!("expected one of: {}", expected.join(", "));
        self.error(
            format!("unknown key `{}` {place}", key.as_str()),
            key.span(),
            Some(&hint),
        );
    }

    fn model(&mut self, node: &Node, name: String) -> Option<Model> {
        let Some(top) = node.as_mapping() else {
            self.error(
                "`dvc.yaml` must be a mapping with a `stages` key",
                node.span(),
                None,
            );
            return None;
        };
        for (key, _) in top.iter() {
            if !TOP_KEYS.contains(&key.as_str()) {
                self.unknown_key(key, "at the top level of `dvc.yaml`", TOP_KEYS);
            }
        }
        let (params, params_node) = match self.params_file() {
            Some((params, node)) => (Some(params), node),
            None => (None, None),
        };
        // DVC lets `${...}` name the top-level `vars` first, then the keys of `params.yaml`.
        let mut base = Scope::default();
        if let Some(vars) = top.get_node("vars") {
            self.vars(vars, &RelPath::root(), &mut base);
        }
        if let Some(node) = params_node {
            base.layers.push(Layer { node, only: None });
        }
        let Some(stages_node) = top.get_node("stages") else {
            let diagnostic = Diagnostic::new("`dvc.yaml` has no `stages`")
                .hint("declare the pipeline under `stages:`, one entry per stage with its `cmd`");
            self.diagnostics.push(diagnostic);
            return None;
        };
        let Some(stage_nodes) = stages_node.as_mapping() else {
            self.error(
                "`stages` must map stage names to stages",
                stages_node.span(),
                None,
            );
            return None;
        };
        let mut stages: Vec<Stage> = Vec::new();
        let mut names = BTreeSet::new();
        for (stage_name, body) in stage_nodes.iter() {
            for instance in self.expand(stage_name, body, &base) {
                if !names.insert(instance.name.clone()) {
                    self.error(
                        format!("stage `{}` is defined twice", instance.name),
                        &instance.name_span,
                        Some("`foreach` and `matrix` name each stage after its item: make the items unique"),
                    );
                    continue;
                }
                if let Some(stage) = self.stage(&name, &instance, params.as_ref()) {
                    stages.push(stage);
                }
            }
        }
        if stage_nodes.is_empty() {
            self.error(
                "`stages` is empty",
                stages_node.span(),
                Some("declare at least one stage with its `cmd`"),
            );
        }
        // Top-level `metrics` name files for `dvc metrics show`; when a stage writes one, it is
        // that stage's metrics file for Kiln too, so gates can read it.
        if let Some(metrics) = top.get_sequence("metrics") {
            for entry in metrics.iter() {
                let Some(path) = entry
                    .as_scalar()
                    .and_then(|p| RelPath::resolve(&RelPath::root(), p.as_str()))
                else {
                    continue;
                };
                if let Some(stage) = stages
                    .iter_mut()
                    .find(|s| s.outs.iter().any(|out| path.is_within(out)))
                    && !stage.metrics.contains(&path)
                {
                    stage.metrics.push(path);
                }
            }
        }
        // DVC 3 `artifacts`: the first one a stage writes is what Kiln versions and serves.
        let artifact = top.get_mapping("artifacts").and_then(|artifacts| {
            artifacts.iter().find_map(|(_, spec)| {
                let path = spec.as_mapping()?.get_scalar("path")?;
                let path = RelPath::resolve(&RelPath::root(), path.as_str())?;
                stages
                    .iter()
                    .any(|s| s.outs.iter().any(|out| path.is_within(out)))
                    .then_some(path)
            })
        });
        Some(Model {
            name,
            dir: RelPath::root(),
            python: None,
            params_file: params.map(|p| p.path),
            stages,
            artifact,
            example: None,
            training_data: None,
            gates: Vec::new(),
            deploy: crate::deploy::Deploy::default_for_model(),
            image_repository: None,
        })
    }

    /// `params.yaml` at the root, flattened, and as nodes for `${...}`. A malformed one is
    /// reported where it is wrong.
    fn params_file(&mut self) -> Option<(ParamsFile, Option<Node>)> {
        let path = RelPath::resolve(&RelPath::root(), PARAMS_FILE)?;
        let full = path.to_path(self.root);
        if !full.is_file() {
            return None;
        }
        let bytes = match std::fs::read(&full) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.params_unreadable = true;
                self.diagnostics.push(Diagnostic::new(format!(
                    "cannot read `{PARAMS_FILE}`: {error}"
                )));
                return None;
            }
        };
        let read = SourceFile::from_bytes(PARAMS_FILE, bytes).and_then(|source| {
            let values = values::parse_source(&source)?;
            let node = if source.text.trim().is_empty() {
                None
            } else {
                Some(
                    yaml::load(&source.text, yaml::Options::default())
                        .map_err(|e| e.diagnostic(&source))?,
                )
            };
            Ok((values, node))
        });
        match read {
            Ok((values, node)) => Some((ParamsFile { path, values }, node)),
            Err(diagnostic) => {
                self.params_unreadable = true;
                let diagnostic = match diagnostic.hint {
                    Some(_) => diagnostic,
                    None => diagnostic.hint("fix `params.yaml`: stages read their params from it"),
                };
                self.diagnostics.push(diagnostic);
                None
            }
        }
    }

    /// Reads a `vars` list into `scope`: inline mappings, and YAML or JSON files (`file.yaml`,
    /// or `file.yaml:key1,key2` for some of their keys) relative to `dir`.
    fn vars(&mut self, node: &Node, dir: &RelPath, scope: &mut Scope) {
        let Some(entries) = node.as_sequence() else {
            self.error(
                "`vars` must be a list",
                node.span(),
                Some("write `vars:` then `- name: value` or `- file.yaml` lines"),
            );
            return;
        };
        for entry in entries.iter() {
            match entry {
                Node::Mapping(_) => scope.layers.push(Layer {
                    node: entry.clone(),
                    only: None,
                }),
                Node::Scalar(text) => {
                    let (file, keys) = match text.as_str().split_once(':') {
                        Some((file, keys)) => (
                            file,
                            Some(keys.split(',').map(|k| k.trim().to_string()).collect()),
                        ),
                        None => (text.as_str(), None),
                    };
                    if let Some(node) = self.vars_file(file, dir, text.span()) {
                        scope.layers.push(Layer { node, only: keys });
                    }
                }
                Node::Sequence(_) => self.error(
                    "expected a mapping of values or a file name",
                    entry.span(),
                    None,
                ),
            }
        }
    }

    fn vars_file(&mut self, file: &str, dir: &RelPath, span: &Span) -> Option<Node> {
        let Some(path) = RelPath::resolve(dir, file) else {
            self.error(format!("`{file}` points outside the project"), span, None);
            return None;
        };
        if !(file.ends_with(".yaml") || file.ends_with(".yml") || file.ends_with(".json")) {
            self.error(
                format!("reading `vars` from `{file}` is not supported yet"),
                span,
                Some("use a YAML or JSON file, or write the values inline under `vars`"),
            );
            return None;
        }
        let Ok(bytes) = std::fs::read(path.to_path(self.root)) else {
            self.error(
                format!("vars file `{path}` does not exist"),
                span,
                Some("the path is relative to the folder of `dvc.yaml` (or to the stage's `wdir`)"),
            );
            return None;
        };
        // The file's own mistakes point into it.
        let read = SourceFile::from_bytes(path.as_str(), bytes).and_then(|source| {
            yaml::load(&source.text, yaml::Options::default()).map_err(|e| e.diagnostic(&source))
        });
        match read {
            Ok(node) => Some(node),
            Err(diagnostic) => {
                let diagnostic = match diagnostic.hint {
                    Some(_) => diagnostic,
                    None => diagnostic.hint("`dvc.yaml` reads this file in `vars`"),
                };
                self.diagnostics.push(diagnostic);
                None
            }
        }
    }

    /// Turns one entry of `stages:` into the stages it stands for: itself, or one per item of
    /// its `foreach` or per combination of its `matrix`, named `name@suffix` as DVC names them.
    fn expand<'n>(
        &mut self,
        name: &MarkedScalarNode,
        body: &'n Node,
        base: &Scope,
    ) -> Vec<Instance<'n>> {
        let name_span = *name.span();
        if name.is_empty()
            || name.contains(['@', ':', '/', '\\'])
            || name.contains(char::is_whitespace)
        {
            self.error(
                format!("`{}` is not a valid stage name", name.as_str()),
                &name_span,
                Some("stage names cannot hold spaces, `:`, `/` or `\\`; `@` is kept for the stages `foreach` makes"),
            );
            return Vec::new();
        }
        let Some(body) = body.as_mapping() else {
            self.error(
                format!("stage `{}` must be a mapping", name.as_str()),
                body.span(),
                Some("give the stage at least a `cmd`"),
            );
            return Vec::new();
        };
        if let Some(foreach) = body.get_node("foreach") {
            return self.expand_foreach(name, body, foreach, base);
        }
        if let Some(matrix) = body.get_node("matrix") {
            return self.expand_matrix(name, body, matrix, base);
        }
        if let Some((key, _)) = body.iter().find(|(key, _)| key.as_str() == "do") {
            self.error(
                format!("stage `{}` has `do` but no `foreach`", name.as_str()),
                key.span(),
                Some("add `foreach:` with the items to repeat `do` over"),
            );
            return Vec::new();
        }
        vec![Instance {
            name: name.to_string(),
            name_span,
            body,
            consumed: &[],
            scope: base.clone(),
            locals: 0,
        }]
    }

    fn expand_foreach<'n>(
        &mut self,
        name: &MarkedScalarNode,
        body: &'n MarkedMappingNode,
        foreach: &Node,
        base: &Scope,
    ) -> Vec<Instance<'n>> {
        for (key, _) in body.iter() {
            if !matches!(key.as_str(), "foreach" | "do") {
                self.error(
                    format!(
                        "`{}` must go under `do` when the stage uses `foreach`",
                        key.as_str()
                    ),
                    key.span(),
                    Some("indent the stage's keys under `do:`"),
                );
            }
        }
        let template = match body.get_node("do") {
            Some(Node::Mapping(template)) => template,
            Some(other) => {
                self.error(
                    "`do` must be a stage (a mapping with `cmd`)",
                    other.span(),
                    None,
                );
                return Vec::new();
            }
            None => {
                self.error(
                    format!("stage `{}` has `foreach` but no `do`", name.as_str()),
                    name.span(),
                    Some("put the stage to repeat under `do:`"),
                );
                return Vec::new();
            }
        };
        let Some(items) = self.iterable(foreach, base, "foreach") else {
            return Vec::new();
        };
        let mut instances = Vec::new();
        match &items {
            Node::Sequence(items) => {
                for (index, item) in items.iter().enumerate() {
                    // DVC names a stage after a plain item, and after its index otherwise.
                    let suffix = match item {
                        Node::Scalar(text) => text.to_string(),
                        _ => index.to_string(),
                    };
                    let locals: MarkedMappingNode = [("item", item.clone())].into_iter().collect();
                    instances.push(Instance {
                        name: format!("{}@{suffix}", name.as_str()),
                        name_span: *name.span(),
                        body: template,
                        consumed: &[],
                        scope: base.inner(Node::Mapping(locals)),
                        locals: 1,
                    });
                }
            }
            Node::Mapping(items) => {
                for (key, item) in items.iter() {
                    let locals: MarkedMappingNode =
                        [("key", Node::Scalar(key.clone())), ("item", item.clone())]
                            .into_iter()
                            .collect();
                    instances.push(Instance {
                        name: format!("{}@{}", name.as_str(), key.as_str()),
                        name_span: *name.span(),
                        body: template,
                        consumed: &[],
                        scope: base.inner(Node::Mapping(locals)),
                        locals: 1,
                    });
                }
            }
            Node::Scalar(_) => {}
        }
        instances
    }

    fn expand_matrix<'n>(
        &mut self,
        name: &MarkedScalarNode,
        body: &'n MarkedMappingNode,
        matrix: &Node,
        base: &Scope,
    ) -> Vec<Instance<'n>> {
        let Some(dimensions) = matrix.as_mapping() else {
            self.error(
                "`matrix` must map names to lists",
                matrix.span(),
                Some("e.g. `matrix: {model: [cnn, rnn], lr: [0.1, 0.01]}`"),
            );
            return Vec::new();
        };
        let mut axes: Vec<(String, Vec<Node>)> = Vec::new();
        for (axis, values) in dimensions.iter() {
            match self.iterable(values, base, "matrix") {
                Some(Node::Sequence(values)) => axes.push((axis.to_string(), values.to_vec())),
                Some(other) => {
                    self.error(
                        format!("`matrix` entry `{}` must be a list", axis.as_str()),
                        other.span(),
                        None,
                    );
                    return Vec::new();
                }
                None => return Vec::new(),
            }
        }
        // Every combination, first axis slowest, as DVC orders them.
        let mut combinations: Vec<Vec<usize>> = vec![Vec::new()];
        for (_, values) in &axes {
            combinations = combinations
                .into_iter()
                .flat_map(|prefix| {
                    (0..values.len()).map(move |index| {
                        let mut next = prefix.clone();
                        next.push(index);
                        next
                    })
                })
                .collect();
        }
        let mut instances = Vec::new();
        for combination in combinations {
            let mut parts = Vec::new();
            let mut item = Vec::new();
            for ((axis, values), &index) in axes.iter().zip(&combination) {
                let value = &values[index];
                // Plain values name the stage; lists and mappings by their axis and index.
                parts.push(match value {
                    Node::Scalar(text) => text.to_string(),
                    _ => format!("{axis}{index}"),
                });
                item.push((axis.as_str(), value.clone()));
            }
            let item: MarkedMappingNode = item.into_iter().collect();
            let locals: MarkedMappingNode = [("item", Node::Mapping(item))].into_iter().collect();
            instances.push(Instance {
                name: format!("{}@{}", name.as_str(), parts.join("-")),
                name_span: *name.span(),
                body,
                consumed: &["matrix"],
                scope: base.inner(Node::Mapping(locals)),
                locals: 1,
            });
        }
        instances
    }

    /// The items of a `foreach` or a `matrix` axis: written out, or `${name}` of a list or
    /// mapping from `vars` or `params.yaml`.
    fn iterable(&mut self, node: &Node, scope: &Scope, key: &str) -> Option<Node> {
        let Node::Scalar(text) = node else {
            return Some(node.clone());
        };
        let reference = text
            .trim()
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'));
        let found = reference
            .filter(|name| !name.contains("${"))
            .and_then(|name| scope.lookup(name.trim()));
        match found {
            Some(found @ (Node::Sequence(_) | Node::Mapping(_))) => Some(found.clone()),
            _ => {
                self.error(
                    format!(
                        "`{key}` must be a list, a mapping, or `${{name}}` of one, found `{}`",
                        text.as_str()
                    ),
                    text.span(),
                    Some("`${name}` can name a list or mapping in `vars` or `params.yaml`"),
                );
                None
            }
        }
    }

    /// A scalar with its `${...}` replaced; `None` (and a diagnostic) when a name is unknown.
    fn text(&mut self, node: &Node, scope: &Scope, what: &str) -> Option<String> {
        let Node::Scalar(text) = node else {
            self.error(
                format!("`{what}` must be a single value here"),
                node.span(),
                None,
            );
            return None;
        };
        match scope.interpolate(text.as_str()) {
            Ok(value) => Some(value),
            Err(error) => {
                let (message, hint) = match error {
                    InterpolationError::Unclosed => (
                        "`${` is not closed".to_string(),
                        "write `${name}`, or `\\${` for a literal `${`",
                    ),
                    InterpolationError::Unknown(name) => (
                        format!("unknown variable `${{{name}}}`"),
                        "`${...}` can name `item` (and `key`) inside `foreach`, `item` inside `matrix`, a key of `vars`, or a key of `params.yaml`",
                    ),
                    InterpolationError::NotScalar(name) => (
                        format!(
                            "`${{{name}}}` is a list or a mapping, which cannot be written into text"
                        ),
                        "name one of its values, e.g. `${item.field}` or `${list.0}`",
                    ),
                };
                self.error(message, text.span(), Some(hint));
                None
            }
        }
    }

    /// A path relative to `base`, checked to stay inside the project.
    fn path(&mut self, base: &RelPath, path: &str, span: &Span) -> Option<RelPath> {
        if path.trim().is_empty() {
            self.error("empty path", span, None);
            return None;
        }
        let resolved = RelPath::resolve(base, path);
        if resolved.is_none() {
            self.error(
                format!("`{path}` points outside the project"),
                span,
                Some("paths are relative to the stage's `wdir` (by default the folder of `dvc.yaml`) and must stay inside it"),
            );
        }
        resolved
    }

    fn stage(
        &mut self,
        model: &str,
        instance: &Instance<'_>,
        params: Option<&ParamsFile>,
    ) -> Option<Stage> {
        let body = instance.body;
        let name = instance.name.as_str();
        for (key, _) in body.iter() {
            if !STAGE_KEYS.contains(&key.as_str()) && !instance.consumed.contains(&key.as_str()) {
                self.unknown_key(key, &format!("in stage `{name}`"), STAGE_KEYS);
            }
        }
        let mut scope = instance.scope.clone();
        let workdir = match body.get_node("wdir") {
            Some(node) => {
                let text = self.text(node, &scope, "wdir")?;
                self.path(&RelPath::root(), &text, node.span())?
            }
            None => RelPath::root(),
        };
        if let Some(vars) = body.get_node("vars") {
            // Stage vars come before the file-wide ones, after `item` and `key`.
            let mut local = Scope::default();
            self.vars(vars, &workdir, &mut local);
            scope
                .layers
                .splice(instance.locals..instance.locals, local.layers);
        }

        let cmd_node = body.get_node("cmd");
        let cmd = match cmd_node {
            None => {
                self.error(
                    format!("stage `{name}` has no `cmd`"),
                    &instance.name_span,
                    Some("add the command the stage runs, e.g. `cmd: python src/train.py`"),
                );
                None
            }
            Some(Node::Sequence(commands)) => {
                let parts: Option<Vec<String>> = commands
                    .iter()
                    .map(|c| self.text(c, &scope, "cmd"))
                    .collect();
                parts.map(|parts| parts.join(" && "))
            }
            Some(node) => self.text(node, &scope, "cmd"),
        };
        if let (Some(cmd), Some(node)) = (&cmd, cmd_node)
            && cmd.trim().is_empty()
        {
            self.error(
                format!("stage `{name}` has an empty `cmd`"),
                node.span(),
                None,
            );
        }

        let mut locations = StageLocations {
            name: self.at(&instance.name_span),
            cmd: cmd_node.and_then(|node| self.at(node.span())),
            ..Default::default()
        };
        let mut deps = Vec::new();
        for (path, location) in self.deps(body.get_node("deps"), &scope, &workdir) {
            deps.push(path);
            locations.deps.push(location);
        }
        let mut outs = Vec::new();
        let mut metrics = Vec::new();
        let kinds: [(&str, &[&str]); 3] =
            [("outs", &[]), ("metrics", &[]), ("plots", PLOT_OPTIONS)];
        for (key, extra) in kinds {
            for (path, location) in self.outs(key, body.get_node(key), &scope, &workdir, extra) {
                if key == "metrics" && !metrics.contains(&path) {
                    metrics.push(path.clone());
                }
                if !outs.contains(&path) {
                    outs.push(path);
                    locations.outs.push(location);
                }
            }
        }
        let mut stage_params = Vec::new();
        for (key, location, span) in self.params(name, body.get_node("params"), &scope, &workdir) {
            match params {
                // A malformed `params.yaml` was reported already.
                None if self.params_unreadable => {}
                None => self.error(
                    format!("stage `{name}` reads param `{key}`, but there is no `{PARAMS_FILE}` at the project root"),
                    &span,
                    Some("create `params.yaml` next to `dvc.yaml`"),
                ),
                Some(file) if values::select(&file.values, &key).next().is_none() => self.error(
                    format!("param `{key}` is not in `{}`", file.path),
                    &span,
                    Some("name a key or a section of the params file, e.g. `train` or `train.seed`"),
                ),
                Some(_) => {}
            }
            if !stage_params.contains(&key) {
                stage_params.push(key);
                locations.params.push(location);
            }
        }
        Some(Stage {
            id: StageId::new(model, name),
            cmd: cmd?,
            workdir,
            deps,
            outs,
            metrics,
            params: stage_params,
            checks: Vec::new(),
            env: BTreeMap::new(),
            locations,
        })
    }

    fn deps(
        &mut self,
        node: Option<&Node>,
        scope: &Scope,
        workdir: &RelPath,
    ) -> Vec<(RelPath, Option<Location>)> {
        let mut deps = Vec::new();
        for entry in self.list(node, "deps") {
            let Some(text) = self.text(entry, scope, "deps") else {
                continue;
            };
            if text.contains("://") || text.starts_with("remote:") {
                self.error(
                    format!("external dependency `{text}` is not supported yet"),
                    entry.span(),
                    Some("download it in a stage of its own and depend on the local copy"),
                );
                continue;
            }
            if let Some(path) = self.path(workdir, &text, entry.span()) {
                deps.push((path, self.at(entry.span())));
            }
        }
        deps
    }

    /// Entries of `outs`, `metrics` or `plots`: a path, or a path with options
    /// (`- model.pkl: {cache: false}`).
    fn outs(
        &mut self,
        key: &str,
        node: Option<&Node>,
        scope: &Scope,
        workdir: &RelPath,
        extra: &[&str],
    ) -> Vec<(RelPath, Option<Location>)> {
        let mut outs = Vec::new();
        for entry in self.list(node, key) {
            let single = entry
                .as_mapping()
                .filter(|map| map.len() == 1)
                .and_then(|map| map.iter().next());
            let (path_node, options) = match (entry, single) {
                (Node::Scalar(_), _) => (entry.clone(), None),
                (_, Some((path, options))) => (Node::Scalar(path.clone()), Some(options)),
                _ => {
                    self.error(
                        format!("each entry of `{key}` is a path, or a path with options (`- model.pkl: {{cache: false}}`)"),
                        entry.span(),
                        None,
                    );
                    continue;
                }
            };
            match options {
                Some(Node::Mapping(options)) => {
                    for (option, _) in options.iter() {
                        if !OUT_OPTIONS.contains(&option.as_str())
                            && !extra.contains(&option.as_str())
                        {
                            let expected: Vec<&str> =
                                OUT_OPTIONS.iter().chain(extra).copied().collect();
                            self.unknown_key(option, &format!("on an entry of `{key}`"), &expected);
                        }
                    }
                }
                // `- path:` with nothing after it: no options.
                Some(Node::Scalar(empty)) if empty.is_empty() => {}
                Some(other) => self.error(
                    format!("the options of an entry of `{key}` must be a mapping"),
                    other.span(),
                    None,
                ),
                None => {}
            }
            let Some(text) = self.text(&path_node, scope, key) else {
                continue;
            };
            if let Some(path) = self.path(workdir, &text, path_node.span()) {
                outs.push((path, self.at(path_node.span())));
            }
        }
        outs
    }

    /// Param keys a stage reads, with where each was written. Keys live in `params.yaml` unless
    /// an entry names another file (`- other.yaml: [key]`), which Kiln does not support yet.
    fn params(
        &mut self,
        stage: &str,
        node: Option<&Node>,
        scope: &Scope,
        workdir: &RelPath,
    ) -> Vec<(String, Option<Location>, Span)> {
        let mut keys = Vec::new();
        let supported = RelPath::resolve(&RelPath::root(), PARAMS_FILE);
        for entry in self.list(node, "params") {
            match entry {
                Node::Scalar(key) => {
                    // A plain key is read from `params.yaml` in the stage's `wdir`.
                    if RelPath::resolve(workdir, PARAMS_FILE) != supported {
                        self.error(
                            format!("stage `{stage}` reads param `{}` from `{workdir}/{PARAMS_FILE}`, which is not supported yet", key.as_str()),
                            key.span(),
                            Some("Kiln reads params from the `params.yaml` next to `dvc.yaml`: write `- ../params.yaml: [key]` style entries that point at it, or move the keys there"),
                        );
                        continue;
                    }
                    if let Some(key_text) = self.text(entry, scope, "params") {
                        keys.push((key_text, self.at(key.span()), *key.span()));
                    }
                }
                Node::Mapping(files) => {
                    for (file, file_keys) in files.iter() {
                        let Some(file_text) =
                            self.text(&Node::Scalar(file.clone()), scope, "params")
                        else {
                            continue;
                        };
                        if RelPath::resolve(workdir, &file_text) != supported {
                            self.error(
                                format!("params from `{file_text}` are not supported yet"),
                                file.span(),
                                Some("Kiln reads params from the `params.yaml` next to `dvc.yaml`: move these keys there and list them as plain keys"),
                            );
                            continue;
                        }
                        match file_keys {
                            // `- params.yaml:` alone tracks the whole file: every top-level section.
                            Node::Scalar(empty) if empty.is_empty() => keys.extend(
                                self.all_params()
                                    .into_iter()
                                    .map(|key| (key, self.at(file.span()), *file.span())),
                            ),
                            Node::Sequence(list) if list.is_empty() => keys.extend(
                                self.all_params()
                                    .into_iter()
                                    .map(|key| (key, self.at(file.span()), *file.span())),
                            ),
                            Node::Sequence(list) => {
                                for key in list.iter() {
                                    if let Some(key_text) = self.text(key, scope, "params") {
                                        keys.push((key_text, self.at(key.span()), *key.span()));
                                    }
                                }
                            }
                            other => self.error(
                                format!("the keys read from `{file_text}` must be a list"),
                                other.span(),
                                None,
                            ),
                        }
                    }
                }
                Node::Sequence(_) => self.error(
                    "each entry of `params` is a key, or a file with a list of keys",
                    entry.span(),
                    None,
                ),
            }
        }
        keys
    }

    /// The top-level sections of `params.yaml`.
    fn all_params(&self) -> Vec<String> {
        let Ok(values) = values::read_flat(&self.root.join(PARAMS_FILE)) else {
            return Vec::new();
        };
        let sections: BTreeSet<String> = values
            .keys()
            .map(|key| key.split('.').next().unwrap_or(key).to_string())
            .collect();
        sections.into_iter().collect()
    }

    /// The entries of a list-valued key (`deps`, `outs`, ...); a diagnostic when it is not a list.
    fn list<'n>(&mut self, node: Option<&'n Node>, key: &str) -> Vec<&'n Node> {
        match node {
            None => Vec::new(),
            Some(Node::Sequence(entries)) => entries.iter().collect(),
            // `deps:` with nothing after it.
            Some(Node::Scalar(empty)) if empty.is_empty() => Vec::new(),
            Some(other) => {
                self.error(
                    format!("`{key}` must be a list"),
                    other.span(),
                    Some(&format!("write `{key}:` then one `- entry` per line")),
                );
                Vec::new()
            }
        }
    }
}

/// The values `${...}` can name, innermost first: `item` and `key`, stage `vars`, file `vars`,
/// `params.yaml`. DVC rejects a name defined twice; Kiln takes the innermost.
#[derive(Clone, Default)]
struct Scope {
    layers: Vec<Layer>,
}

/// One source of values: a mapping, limited to some of its keys for `vars: [file.yaml:a,b]`.
#[derive(Clone)]
struct Layer {
    node: Node,
    only: Option<Vec<String>>,
}

enum InterpolationError {
    Unclosed,
    Unknown(String),
    NotScalar(String),
}

impl Scope {
    /// This scope with `locals` in front of it.
    fn inner(&self, locals: Node) -> Scope {
        let mut layers = vec![Layer {
            node: locals,
            only: None,
        }];
        layers.extend(self.layers.iter().cloned());
        Scope { layers }
    }

    /// The value at a dotted name (`item.lr`, `train.layers.0`, `train.layers[0]`).
    fn lookup(&self, name: &str) -> Option<&Node> {
        let normalised = name.replace('[', ".").replace(']', "");
        let parts: Vec<&str> = normalised.split('.').collect();
        self.layers.iter().find_map(|layer| {
            if let Some(only) = &layer.only
                && !only
                    .iter()
                    .any(|key| normalised == *key || normalised.starts_with(&format!("{key}.")))
            {
                return None;
            }
            let mut node = &layer.node;
            for part in &parts {
                node = match node {
                    Node::Mapping(map) => map.get_node(part)?,
                    Node::Sequence(list) => list.get_node(part.parse().ok()?)?,
                    Node::Scalar(_) => return None,
                };
            }
            Some(node)
        })
    }

    /// `text` with every `${name}` replaced by its value; `\${` stays a literal `${`.
    fn interpolate(&self, text: &str) -> Result<String, InterpolationError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('\\') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(InterpolationError::Unclosed)?;
            let name = after[..end].trim();
            match self.lookup(name) {
                Some(Node::Scalar(value)) => out.push_str(value.as_str()),
                Some(_) => return Err(InterpolationError::NotScalar(name.to_string())),
                None => return Err(InterpolationError::Unknown(name.to_string())),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project folder holding `files` (path, contents); returns it with the parse of `dvc_yaml`.
    fn parse(
        files: &[(&str, &str)],
        dvc_yaml: &str,
    ) -> (tempfile::TempDir, Result<Project, Vec<Diagnostic>>) {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        std::fs::write(dir.path().join(DVC_FILE), dvc_yaml).unwrap();
        let parsed = parse_dvc(dir.path(), SourceFile::new(DVC_FILE, dvc_yaml));
        (dir, parsed)
    }

    fn strings(paths: &[RelPath]) -> Vec<&str> {
        paths.iter().map(RelPath::as_str).collect()
    }

    /// Each diagnostic as `file:line:column: message`, to compare in one assertion.
    fn positions(diagnostics: &[Diagnostic]) -> Vec<String> {
        diagnostics.iter().map(ToString::to_string).collect()
    }

    const GET_STARTED_PARAMS: &str = "prepare:\n  split: 0.20\n  seed: 20170428\nfeaturize:\n  max_features: 100\n  ngrams: 1\ntrain:\n  seed: 20170428\n  n_est: 50\n  min_split: 0.01\n";

    const GET_STARTED: &str = "\
stages:
  prepare:
    cmd: python src/prepare.py data/data.xml
    deps:
      - data/data.xml
      - src/prepare.py
    params:
      - prepare.seed
      - prepare.split
    outs:
      - data/prepared
  featurize:
    cmd:
      - python src/featurization.py data/prepared data/features
      - echo done
    deps: [data/prepared, src/featurization.py]
    params:
      - featurize
    outs:
      - data/features:
          cache: false
  train:
    cmd: python src/train.py data/features model.pkl --trees ${train.n_est}
    desc: fits the forest
    deps:
      - data/features
      - src/train.py
    params:
      - params.yaml:
          - train.seed
          - train.n_est
    outs:
      - model.pkl
  evaluate:
    cmd: python src/evaluate.py model.pkl data/features
    always_changed: false
    deps:
      - data/features
      - model.pkl
      - src/evaluate.py
    outs:
      - eval/live
    metrics:
      - eval/scores.json:
          cache: false
    plots:
      - eval/prc.json:
          x: recall
          y: precision
metrics:
  - eval/live/metrics.json
plots:
  - ROC:
      template: simple
      x: fpr
      y:
        eval/plots/roc.json: tpr
artifacts:
  forest:
    path: model.pkl
    type: model
";

    fn get_started_files() -> Vec<(&'static str, &'static str)> {
        vec![
            ("params.yaml", GET_STARTED_PARAMS),
            ("data/data.xml", "<posts/>"),
            ("src/prepare.py", ""),
            ("src/featurization.py", ""),
            ("src/train.py", ""),
            ("src/evaluate.py", ""),
        ]
    }

    #[test]
    fn get_started_pipeline_maps_to_one_model() {
        let (dir, parsed) = parse(&get_started_files(), GET_STARTED);
        let project = parsed.unwrap_or_else(|d| panic!("{:#?}", positions(&d)));
        assert_eq!(project.format, ProjectFormat::Dvc);
        assert_eq!(project.file, PathBuf::from("dvc.yaml"));
        let [model] = project.models.as_slice() else {
            panic!("one model")
        };
        assert_eq!(model.name, model_name_for(dir.path()));
        assert_eq!(model.dir, RelPath::root());
        assert_eq!(
            model.params_file.as_ref().map(RelPath::as_str),
            Some("params.yaml")
        );
        assert_eq!(
            model.artifact.as_ref().map(RelPath::as_str),
            Some("model.pkl")
        );
        let names: Vec<&str> = model.stages.iter().map(|s| s.id.stage.as_str()).collect();
        assert_eq!(names, ["prepare", "featurize", "train", "evaluate"]);

        let [prepare, featurize, train, evaluate] = model.stages.as_slice() else {
            unreachable!()
        };
        assert_eq!(prepare.cmd, "python src/prepare.py data/data.xml");
        assert_eq!(strings(&prepare.deps), ["data/data.xml", "src/prepare.py"]);
        assert_eq!(prepare.params, ["prepare.seed", "prepare.split"]);
        assert_eq!(strings(&prepare.outs), ["data/prepared"]);
        assert_eq!(prepare.workdir, RelPath::root());
        // A list of commands runs as one, stopping at the first failure, as DVC does.
        assert_eq!(
            featurize.cmd,
            "python src/featurization.py data/prepared data/features && echo done"
        );
        assert_eq!(featurize.params, ["featurize"]);
        assert_eq!(strings(&featurize.outs), ["data/features"]);
        // `params.yaml` values can be written into the command.
        assert_eq!(
            train.cmd,
            "python src/train.py data/features model.pkl --trees 50"
        );
        assert_eq!(train.params, ["train.seed", "train.n_est"]);
        // Metrics and plots are outs too; top-level metrics join the stage that writes them.
        assert_eq!(
            strings(&evaluate.outs),
            ["eval/live", "eval/scores.json", "eval/prc.json"]
        );
        assert_eq!(
            strings(&evaluate.metrics),
            ["eval/scores.json", "eval/live/metrics.json"]
        );
        // Every dep and out keeps its place in the file, so graph errors can point at it.
        let (line, column) = evaluate.locations.deps[1].as_ref().unwrap().line_column();
        assert_eq!((line, column), (39, 9));
        assert_eq!(evaluate.locations.outs.len(), evaluate.outs.len());
        assert_eq!(train.locations.params.len(), 2);
    }

    #[test]
    fn foreach_and_matrix_expand_like_dvc() {
        let params = "models:\n  small: {size: 10}\n  large: {size: 1000}\n";
        let yaml = "\
vars:
  - seeds: [1, 2]
stages:
  download:
    foreach: [cats, dogs]
    do:
      cmd: python fetch.py ${item}
      deps: [fetch.py]
      outs:
        - data/${item}
  train:
    foreach: ${models}
    do:
      cmd: python train.py --size ${item.size} --name ${key}
      deps: [train.py, data/cats, data/dogs]
      outs:
        - model-${key}.pkl
  shards:
    foreach:
      - {part: a, rows: 5}
      - {part: b, rows: 6}
    do:
      cmd: split --rows ${item.rows} \\${HOME}
      outs:
        - shard-${item.part}
  sweep:
    matrix:
      seed: ${seeds}
      opt: [adam, sgd]
    cmd: python sweep.py --seed ${item.seed} --opt ${item.opt} --first-seed ${seeds[0]}
    outs:
      - sweep/${item.opt}-${item.seed}
";
        let files = [("params.yaml", params), ("fetch.py", ""), ("train.py", "")];
        let (_dir, parsed) = parse(&files, yaml);
        let project = parsed.unwrap_or_else(|d| panic!("{:#?}", positions(&d)));
        let names: Vec<&str> = project.stages().map(|s| s.id.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "download@cats",
                "download@dogs",
                "train@small",
                "train@large",
                "shards@0",
                "shards@1",
                "sweep@1-adam",
                "sweep@1-sgd",
                "sweep@2-adam",
                "sweep@2-sgd",
            ]
        );
        let stage = |name: &str| project.stages().find(|s| s.id.stage == name).unwrap();
        assert_eq!(stage("download@dogs").cmd, "python fetch.py dogs");
        assert_eq!(strings(&stage("download@dogs").outs), ["data/dogs"]);
        assert_eq!(
            stage("train@large").cmd,
            "python train.py --size 1000 --name large"
        );
        assert_eq!(strings(&stage("train@large").outs), ["model-large.pkl"]);
        assert_eq!(stage("shards@1").cmd, "split --rows 6 ${HOME}");
        assert_eq!(strings(&stage("shards@1").outs), ["shard-b"]);
        assert_eq!(
            stage("sweep@2-sgd").cmd,
            "python sweep.py --seed 2 --opt sgd --first-seed 1"
        );
        // Every instance points back at the template's name.
        let (line, column) = stage("train@small")
            .locations
            .name
            .as_ref()
            .unwrap()
            .line_column();
        assert_eq!((line, column), (11, 3));
    }

    #[test]
    fn wdir_moves_paths_and_stage_vars_fill_templates() {
        let yaml = "\
stages:
  build:
    wdir: sub
    vars:
      - {target: app}
    cmd: make ${target}
    deps: [Makefile, ../shared.h]
    outs: ['${target}']
    params:
      - ../params.yaml: [build]
";
        let files = [
            ("sub/Makefile", ""),
            ("shared.h", ""),
            ("params.yaml", "build: {jobs: 2}\n"),
        ];
        let (_dir, parsed) = parse(&files, yaml);
        let project = parsed.unwrap_or_else(|d| panic!("{:#?}", positions(&d)));
        let stage = project.stages().next().unwrap();
        assert_eq!(stage.workdir.as_str(), "sub");
        assert_eq!(stage.cmd, "make app");
        assert_eq!(strings(&stage.deps), ["sub/Makefile", "shared.h"]);
        assert_eq!(strings(&stage.outs), ["sub/app"]);
        assert_eq!(stage.params, ["build"]);
    }

    #[test]
    fn mistakes_point_at_their_line_and_column() {
        let yaml = "\
stages:
  prepare:
    cmd: python prepare.py
    dep: [prepare.py]
    outs: [data]
  train:
    deps: [data]
    outs: [model.pkl]
  evaluate:
    cmd: python evaluate.py ${item}
    params:
      - config/train.yaml: [lr]
      - missing.key
    outs:
      - scores.json: {cach: false}
  report:
    foreach: [a]
    cmd: echo
";
        let files = [("prepare.py", ""), ("params.yaml", "train: {lr: 0.1}\n")];
        let (_dir, parsed) = parse(&files, yaml);
        let diagnostics = parsed.unwrap_err();
        assert_eq!(
            positions(&diagnostics),
            [
                "dvc.yaml:4:5: unknown key `dep` in stage `prepare`",
                "dvc.yaml:6:3: stage `train` has no `cmd`",
                "dvc.yaml:10:10: unknown variable `${item}`",
                "dvc.yaml:15:23: unknown key `cach` on an entry of `outs`",
                "dvc.yaml:12:9: params from `config/train.yaml` are not supported yet",
                "dvc.yaml:13:9: param `missing.key` is not in `params.yaml`",
                "dvc.yaml:18:5: `cmd` must go under `do` when the stage uses `foreach`",
                "dvc.yaml:16:3: stage `report` has `foreach` but no `do`",
            ]
        );
        let unsupported = &diagnostics[4];
        assert!(
            unsupported
                .hint
                .as_deref()
                .unwrap()
                .contains("move these keys")
        );
        assert!(diagnostics[0].hint.as_deref().unwrap().contains("deps"));
    }

    #[test]
    fn graph_errors_point_into_dvc_yaml() {
        let yaml =
            "stages:\n  train:\n    cmd: python train.py\n    deps: [train.py, data/missing.csv]\n";
        let (dir, parsed) = parse(&[("train.py", "")], yaml);
        let model = model_name_for(dir.path());
        assert_eq!(
            positions(&parsed.unwrap_err()),
            [format!(
                "dvc.yaml:4:22: stage `{model}/train` depends on `data/missing.csv`, which no stage produces and which does not exist"
            )]
        );
    }

    #[test]
    fn yaml_and_shape_errors_are_located() {
        let (_dir, parsed) = parse(&[], "stages:\n  a:\n    cmd: [x\n");
        let diagnostics = parsed.unwrap_err();
        assert!(
            diagnostics[0].message.starts_with("invalid YAML"),
            "{diagnostics:?}"
        );
        let (_dir, parsed) = parse(&[], "stage:\n  a: {cmd: x}\n");
        assert_eq!(
            positions(&parsed.unwrap_err()),
            [
                "dvc.yaml:1:1: unknown key `stage` at the top level of `dvc.yaml`",
                "`dvc.yaml` has no `stages`"
            ]
        );
        for empty in ["", "# nothing yet\n", "stages:\n"] {
            let (_dir, parsed) = parse(&[], empty);
            let diagnostics = parsed.unwrap_err();
            assert_eq!(
                diagnostics.len(),
                1,
                "{empty:?}: {:?}",
                positions(&diagnostics)
            );
        }
    }

    #[test]
    fn model_names_come_from_the_folder() {
        assert_eq!(
            model_name_for(Path::new("/repos/fraud-detector")),
            "fraud-detector"
        );
        assert_eq!(
            model_name_for(Path::new("/repos/My Project!")),
            "My-Project"
        );
        assert_eq!(model_name_for(Path::new("/repos/.tmpX1")), "tmpX1");
        assert_eq!(model_name_for(Path::new("/")), "default");
    }

    #[test]
    fn anchors_and_merge_keys_work_in_dvc_yaml_and_params() {
        let (_dir, parsed) = parse(
            &[
                ("src/train.py", ""),
                ("data.csv", ""),
                (
                    "params.yaml",
                    "base: &base {lr: 0.1, epochs: 3}\ntrain:\n  <<: *base\n  epochs: 10\n",
                ),
            ],
            "stages:\n  prepare: &py\n    cmd: python src/train.py\n    deps: [src/train.py, data.csv]\n    outs: [prepared]\n  train:\n    <<: *py\n    cmd: python src/train.py ${train.epochs}\n    params: [train.lr]\n    outs: [model]\n",
        );
        let project = parsed.unwrap_or_else(|d| panic!("{:#?}", positions(&d)));
        let train = project.stages().find(|s| s.id.stage == "train").unwrap();
        assert_eq!(train.cmd, "python src/train.py 10");
        assert_eq!(strings(&train.deps), ["src/train.py", "data.csv"]);
        assert_eq!(strings(&train.outs), ["model"]);
        assert_eq!(train.params, ["train.lr"]);
    }

    #[test]
    fn a_malformed_params_file_is_located_in_it() {
        let (_dir, parsed) = parse(
            &[("params.yaml", "train:\n  lr: 0.1\n lr2: [\n")],
            "stages:\n  train: {cmd: echo, params: [train.lr]}\n",
        );
        let diagnostics = parsed.unwrap_err();
        let [diagnostic] = diagnostics.as_slice() else {
            panic!("{:#?}", positions(&diagnostics))
        };
        assert!(
            diagnostic.to_string().starts_with("params.yaml:3:"),
            "{diagnostic}"
        );
        let (_dir, parsed) = parse(
            &[("config.yaml", "size: 1\n\tdepth: 2\n")],
            "vars: [config.yaml]\nstages:\n  a:\n    cmd: echo ${size}\n",
        );
        assert_eq!(
            positions(&parsed.unwrap_err())[0],
            "config.yaml:2:1: a tab is used for indentation"
        );
    }
}
