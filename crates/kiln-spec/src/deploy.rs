//! `deploy:` of a model in kiln.yaml: its environments, in promotion order, and how a version
//! reaches each. The first environment takes green runs (`auto`); each later one is promoted to
//! from the one before (`approve: auto` once that one is healthy, `manual` by `kiln promote`).
//!
//! An environment's name is the registry alias that holds the version it serves
//! (`iris@production`), so it follows the alias rules.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use marked_yaml::{Span, Spanned};
use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, Location, SourceFile};
use crate::schema::KilnFile;
use crate::validate::locate;

/// The alias every registration moves: never an environment.
const LATEST: &str = "latest";
/// The longest alias the registry takes.
const MAX_NAME_LEN: usize = 64;

/// How a later environment is promoted to from the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approve {
    /// As soon as the environment before it serves the version and is healthy.
    Auto,
    /// By `kiln promote`; the default.
    Manual,
}

/// Where an environment's serving processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Processes on this machine, kept up by Kiln's supervisor; the default.
    Local,
    /// A Deployment in a Kubernetes cluster (`k8s` for short).
    #[serde(alias = "k8s")]
    Kubernetes,
}

impl TargetKind {
    /// As kiln.yaml writes it, and as a deployment's status names its target.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Local => "local",
            TargetKind::Kubernetes => "kubernetes",
        }
    }
}

/// One environment as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub auto: Option<Spanned<bool>>,
    pub approve: Option<Spanned<Approve>>,
    pub target: Option<TargetKind>,
    /// Read wide, so that an out-of-range number gets its own message.
    pub port: Option<Spanned<i64>>,
    /// The settings below apply to `target: kubernetes` only.
    pub namespace: Option<Spanned<String>>,
    pub replicas: Option<Spanned<i64>>,
    pub autoscale: Option<Spanned<AutoscaleSpec>>,
    pub resources: Option<Spanned<ResourcesSpec>>,
    pub pull_secret: Option<Spanned<String>>,
    pub rollout_timeout: Option<Spanned<String>>,
}

/// `autoscale:` of a Kubernetes environment, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    pub min: Option<Spanned<i64>>,
    pub max: Spanned<i64>,
    /// Target average CPU utilisation, in percent of the requests.
    pub cpu: Option<Spanned<i64>>,
}

/// `resources:` of a Kubernetes environment, as written: Kubernetes quantities.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    pub cpu: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    pub cpu_limit: Option<Spanned<String>>,
    pub memory_limit: Option<Spanned<String>>,
}

/// `deploy:` as written: environment name to its settings (`staging:` alone takes the defaults).
pub type DeploySpec = Spanned<IndexMap<Spanned<String>, Option<EnvironmentSpec>>>;

/// A model's environments, in promotion order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deploy {
    /// Never empty, in file order.
    pub environments: Vec<Environment>,
}

/// One environment of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    pub name: String,
    /// Every new version is deployed here. Only the first environment may have it (default
    /// true there); later ones are always false.
    pub auto: bool,
    /// How this environment is promoted to from the one before. Meaningless on the first
    /// environment, where it is always [`Approve::Manual`].
    pub approve: Approve,
    pub target: TargetKind,
    /// The port it serves on (local environments); `None` leaves the choice to Kiln.
    pub port: Option<u16>,
    /// How it runs on Kubernetes; `Some` exactly when `target` is [`TargetKind::Kubernetes`].
    pub kubernetes: Option<Kubernetes>,
}

/// A Kubernetes environment's settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kubernetes {
    pub namespace: String,
    /// Pods when there is no autoscaler (with one, the autoscaler owns the count).
    pub replicas: u32,
    pub autoscale: Option<Autoscale>,
    pub resources: Resources,
    /// The Secret the cluster pulls the image with (`imagePullSecrets`).
    pub pull_secret: Option<String>,
    /// How long a rollout may go without progress before it is rolled back.
    pub rollout_timeout_secs: u64,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            namespace: "default".into(),
            replicas: 1,
            autoscale: None,
            resources: Resources::default(),
            pull_secret: None,
            rollout_timeout_secs: 120,
        }
    }
}

/// A HorizontalPodAutoscaler's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    /// Target average CPU utilisation, in percent of the CPU request.
    pub cpu_percent: u32,
}

/// Requests and limits of the serving container, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
    /// None: no CPU limit (it would throttle latency spikes for nothing).
    pub cpu_limit: Option<String>,
    /// None: the memory request (a pod never uses more than it reserved).
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: "100m".into(),
            memory: "256Mi".into(),
            cpu_limit: None,
            memory_limit: None,
        }
    }
}

impl Deploy {
    /// What a model without `deploy:` gets: `staging` takes every green run, `production` is
    /// promoted to by `kiln promote`; both local, no fixed port.
    pub fn default_for_model() -> Deploy {
        Deploy {
            environments: vec![
                Environment {
                    name: "staging".into(),
                    auto: true,
                    approve: Approve::Manual,
                    target: TargetKind::Local,
                    port: None,
                    kubernetes: None,
                },
                Environment {
                    name: "production".into(),
                    auto: false,
                    approve: Approve::Manual,
                    target: TargetKind::Local,
                    port: None,
                    kubernetes: None,
                },
            ],
        }
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|env| env.name == name)
    }

    /// The environment promoted to from `name` (the next one), if any.
    pub fn next_after(&self, name: &str) -> Option<&Environment> {
        let position = self.position(name)?;
        self.environments.get(position + 1)
    }

    /// The environment `name` is promoted to from (the one before), if any.
    pub fn previous_before(&self, name: &str) -> Option<&Environment> {
        let position = self.position(name)?;
        position
            .checked_sub(1)
            .and_then(|before| self.environments.get(before))
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.environments.iter().position(|env| env.name == name)
    }
}

/// Why `name` cannot name an environment, with a hint, if it cannot. The rules are the
/// registry's for aliases, since the environment's version is held by the alias of that name.
fn check_name(name: &str) -> Result<(), (String, String)> {
    let version = name
        .strip_prefix('v')
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    let well_formed = crate::valid_name(name)
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if name == LATEST {
        Err((
            format!("`{LATEST}` cannot be an environment"),
            format!(
                "`{LATEST}` moves by itself to every registered version: name the environment otherwise, e.g. `staging`"
            ),
        ))
    } else if let Some(digits) = version {
        Err((
            format!("`{name}` cannot be an environment: it names version {digits}"),
            "name the environment otherwise, e.g. `staging` or `production`".into(),
        ))
    } else if !well_formed {
        Err((
            format!("`{name}` is not a valid environment name"),
            format!(
                "an environment is named as an alias: lowercase letters, digits, `-` and `_`, starting with a letter, at most {MAX_NAME_LEN} characters"
            ),
        ))
    } else {
        Ok(())
    }
}

/// The port of `port`, when it is one (1 to 65535).
fn port_number(port: &Spanned<i64>) -> Option<u16> {
    u16::try_from(**port).ok().filter(|&port| port > 0)
}

/// Validates the `deploy:` of model `model`, reporting each problem at its place in the file.
/// `key` is where the `deploy` key stands; `has_artifact`, whether the model has something to
/// deploy.
pub(crate) fn read(
    model: &str,
    spec: &DeploySpec,
    key: Option<Location>,
    has_artifact: bool,
    source: &SourceFile,
) -> (Deploy, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    // Where `deploy` is written: a value that is null or an empty mapping has no place of its
    // own worth underlining.
    let key = key.or_else(|| locate(source, spec.span()));
    if !has_artifact {
        diagnostics.push(
            Diagnostic::new(format!("model `{model}` has `deploy` but no `artifact`"))
                .at(key.clone())
                .hint("there is nothing to deploy: name what a stage writes and Kiln serves under `artifact`, or remove `deploy`"),
        );
    }
    let mut error = |message: String, span: &Span, hint: String| {
        diagnostics.push(Diagnostic::new(message).at(locate(source, span)).hint(hint));
    };
    if spec.is_empty() {
        diagnostics.push(
            Diagnostic::new(format!("`deploy` of model `{model}` lists no environment"))
                .at(key)
                .hint("list environments in promotion order, e.g. `staging: {auto: true}` then `production: {approve: manual}`, or remove `deploy` for that default"),
        );
        return (Deploy::default_for_model(), diagnostics);
    }
    let default = EnvironmentSpec::default();
    let first = spec.keys().next().map(|name| name.as_str()).unwrap_or("");
    let mut environments = Vec::new();
    for (index, (name, env)) in spec.iter().enumerate() {
        let env = env.as_ref().unwrap_or(&default);
        if let Err((message, hint)) = check_name(name) {
            error(message, name.span(), hint);
        }
        let is_first = index == 0;
        if let (false, Some(auto)) = (is_first, &env.auto) {
            error(
                format!("`auto` applies only to the first environment, `{first}`"),
                auto.span(),
                format!(
                    "`{}` is promoted to from the environment before it: write `approve: auto` to promote once that one is healthy, or `approve: manual` to wait for `kiln promote`",
                    name.as_str()
                ),
            );
        }
        if let (true, Some(approve)) = (is_first, &env.approve) {
            error(
                format!("`approve` does not apply to `{first}`, the first environment"),
                approve.span(),
                "the first environment takes green runs: write `auto: true` (the default) to deploy every new version there, or `auto: false` to deploy only by `kiln deploy`".into(),
            );
        }
        let port = env
            .port
            .as_ref()
            .filter(|_| env.target != Some(TargetKind::Kubernetes))
            .and_then(|port| {
                let number = port_number(port);
                if number.is_none() {
                    error(
                        format!("port `{}` is out of range", **port),
                        port.span(),
                        "a port is a number from 1 to 65535".into(),
                    );
                }
                number
            });
        let target = env.target.unwrap_or(TargetKind::Local);
        let kubernetes = match target {
            TargetKind::Kubernetes => {
                if let Some(port) = &env.port {
                    error(
                        "`port` applies only to environments on this machine".into(),
                        port.span(),
                        format!(
                            "environment `{}` is served by a Kubernetes Service on port 80 in the cluster: remove `port`",
                            name.as_str()
                        ),
                    );
                }
                Some(kubernetes(env, &mut error))
            }
            TargetKind::Local => {
                for (setting, span) in env.kubernetes_settings() {
                    error(
                        format!("`{setting}` applies only to `target: kubernetes`"),
                        span,
                        format!(
                            "environment `{}` runs on this machine: add `target: kubernetes`, or remove `{setting}`",
                            name.as_str()
                        ),
                    );
                }
                None
            }
        };
        environments.push(Environment {
            name: name.to_string(),
            auto: is_first && env.auto.as_ref().is_none_or(|auto| **auto),
            approve: match &env.approve {
                Some(approve) if !is_first => **approve,
                _ => Approve::Manual,
            },
            target,
            port,
            kubernetes,
        });
    }
    (Deploy { environments }, diagnostics)
}

impl EnvironmentSpec {
    /// The Kubernetes-only settings written, with their places.
    fn kubernetes_settings(&self) -> Vec<(&'static str, &Span)> {
        let mut written = [
            ("namespace", self.namespace.as_ref().map(|v| v.span())),
            ("replicas", self.replicas.as_ref().map(|v| v.span())),
            ("autoscale", self.autoscale.as_ref().map(|v| v.span())),
            ("resources", self.resources.as_ref().map(|v| v.span())),
            ("pull_secret", self.pull_secret.as_ref().map(|v| v.span())),
            (
                "rollout_timeout",
                self.rollout_timeout.as_ref().map(|v| v.span()),
            ),
        ]
        .into_iter()
        .filter_map(|(setting, span)| Some((setting, span?)))
        .collect::<Vec<_>>();
        // In the order they are written.
        written.sort_by_key(|(_, span)| span.start().map(|at| (at.line(), at.column())));
        written
    }
}

/// Reports a bad value: what is wrong, where, and a hint.
type Report<'a> = dyn FnMut(String, &Span, String) + 'a;

/// The Kubernetes settings of `env`, defaults filled in; each bad value is reported and replaced
/// by its default.
fn kubernetes(env: &EnvironmentSpec, error: &mut Report) -> Kubernetes {
    let defaults = Kubernetes::default();
    let namespace =
        kubernetes_name(&env.namespace, "namespace", error).unwrap_or(defaults.namespace);
    let replicas = env
        .replicas
        .as_ref()
        .and_then(|replicas| count(replicas, "`replicas`", 1, error))
        .unwrap_or(defaults.replicas);
    let autoscale = env
        .autoscale
        .as_ref()
        .and_then(|autoscale| read_autoscale(autoscale, error));
    let resources = match &env.resources {
        Some(resources) => {
            let fallback = Resources::default();
            Resources {
                cpu: quantity(&resources.cpu, true, error).unwrap_or(fallback.cpu),
                memory: quantity(&resources.memory, false, error).unwrap_or(fallback.memory),
                cpu_limit: quantity(&resources.cpu_limit, true, error),
                memory_limit: quantity(&resources.memory_limit, false, error),
            }
        }
        None => defaults.resources,
    };
    let pull_secret = kubernetes_name(&env.pull_secret, "secret name", error);
    let rollout_timeout_secs = env
        .rollout_timeout
        .as_ref()
        .and_then(|timeout| match crate::parse_duration(timeout) {
            Ok(duration) if duration.as_secs() > 0 => Some(duration.as_secs()),
            Ok(_) => {
                error(
                    format!("`rollout_timeout` `{}` is under a second", timeout.as_str()),
                    timeout.span(),
                    "Kubernetes counts progress deadlines in seconds: write e.g. `120s` or `5m`"
                        .into(),
                );
                None
            }
            Err(message) => {
                error(message, timeout.span(), "write e.g. `120s` or `5m`".into());
                None
            }
        })
        .unwrap_or(defaults.rollout_timeout_secs);
    Kubernetes {
        namespace,
        replicas,
        autoscale,
        resources,
        pull_secret,
        rollout_timeout_secs,
    }
}

/// The most pods Kiln lets an environment ask for: a guard against a typo.
const MAX_PODS: i64 = 1000;

/// A count of pods (or a percentage) from `min` to [`MAX_PODS`].
fn count(value: &Spanned<i64>, what: &str, min: i64, error: &mut Report) -> Option<u32> {
    let number = **value;
    if (min..=MAX_PODS).contains(&number) {
        u32::try_from(number).ok()
    } else {
        error(
            format!("{what} `{number}` is out of range"),
            value.span(),
            format!("write a whole number from {min} to {MAX_PODS}"),
        );
        None
    }
}

fn read_autoscale(autoscale: &AutoscaleSpec, error: &mut Report) -> Option<Autoscale> {
    let min = match &autoscale.min {
        Some(min) => count(min, "`autoscale.min`", 1, error)?,
        None => 1,
    };
    let max = count(&autoscale.max, "`autoscale.max`", 1, error)?;
    let cpu_percent = match &autoscale.cpu {
        Some(cpu) => count(cpu, "`autoscale.cpu`", 1, error)?,
        None => 80,
    };
    if max < min {
        error(
            format!("`autoscale.max` ({max}) is below `autoscale.min` ({min})"),
            autoscale.max.span(),
            "the autoscaler keeps the pods between `min` and `max`: make `max` at least `min`"
                .into(),
        );
        return None;
    }
    Some(Autoscale {
        min,
        max,
        cpu_percent,
    })
}

fn kubernetes_name(
    value: &Option<Spanned<String>>,
    what: &str,
    error: &mut Report,
) -> Option<String> {
    let value = value.as_ref()?;
    if dns_label(value) {
        Some(value.to_string())
    } else {
        error(
            format!("`{}` is not a valid {what}", value.as_str()),
            value.span(),
            "Kubernetes names are lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters".into(),
        );
        None
    }
}

fn quantity(value: &Option<Spanned<String>>, cpu: bool, error: &mut Report) -> Option<String> {
    let value = value.as_ref()?;
    if is_quantity(value, cpu) {
        Some(value.to_string())
    } else {
        let example = if cpu {
            "`500m` or `2`"
        } else {
            "`512Mi` or `2Gi`"
        };
        error(
            format!("`{}` is not a Kubernetes quantity", value.as_str()),
            value.span(),
            format!("write a quantity such as {example}"),
        );
        None
    }
}

/// Why `repository` cannot name a registry repository (`host[:port]/path`, no tag or digest),
/// as a hint, if it cannot.
pub(crate) fn check_repository(repository: &str) -> Result<(), String> {
    let example = "write the registry host and the repository path, e.g. `registry.example.com/team/iris` or `127.0.0.1:5000/iris`";
    if repository.contains("://") {
        return Err(format!("leave out the scheme: {example}"));
    }
    let Some((host, path)) = repository.split_once('/') else {
        return Err(example.into());
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    let path_ok = path.split('/').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    });
    if !host_ok {
        Err(example.into())
    } else if !path_ok {
        Err("a repository path is lowercase letters, digits, `.`, `_` and `-`, parts separated by `/`, with no tag or digest (Kiln tags the images itself)".into())
    } else {
        Ok(())
    }
}

/// A Kubernetes DNS label (RFC 1123): what namespaces and most object names must be.
fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A Kubernetes quantity as Kiln accepts it: a decimal number with, for CPU, an optional `m`
/// (millicores) and, for memory, an optional binary or decimal suffix.
fn is_quantity(text: &str, cpu: bool) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number_ok = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    let suffixes: &[&str] = if cpu {
        &["", "m"]
    } else {
        &["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]
    };
    number_ok && suffixes.contains(&suffix)
}

/// Each port is served by one environment of one model: a port given twice is reported where it
/// is given the second time.
pub(crate) fn check_ports(file: &KilnFile, source: &SourceFile) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut taken: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
    for (model, spec) in &file.models {
        let environments = spec.deploy.iter().flat_map(|deploy| deploy.iter());
        for (env, settings) in environments {
            let local = settings
                .as_ref()
                .is_none_or(|s| s.target != Some(TargetKind::Kubernetes));
            let Some(port) = settings
                .as_ref()
                .and_then(|s| s.port.as_ref())
                .filter(|_| local)
            else {
                continue;
            };
            let Some(number) = port_number(port) else {
                continue;
            };
            match taken.get(&number) {
                Some((first_model, first_env)) => diagnostics.push(
                    Diagnostic::new(format!(
                        "port `{number}` of environment `{}` of model `{}` is already taken by environment `{first_env}` of model `{first_model}`",
                        env.as_str(),
                        model.as_str(),
                    ))
                    .at(locate(source, port.span()))
                    .hint("each environment serves on its own port: choose another one, or leave `port` out for Kiln to choose"),
                ),
                None => {
                    taken.insert(number, (model.as_str(), env.as_str()));
                }
            }
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A model `m` with an artifact, then `deploy` as given (indented under the model).
    fn model(deploy: &str) -> String {
        format!(
            "models:\n  m:\n    stages:\n      train: {{cmd: 'true', outs: [model.onnx]}}\n    artifact: model.onnx\n{deploy}"
        )
    }

    /// The project's models' deploys, or each problem as `line:column: message (hint)
    /// [underlined text]`.
    fn load(text: &str) -> Result<Vec<Deploy>, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kiln.yaml"), text).unwrap();
        match crate::load(dir.path()) {
            Ok(project) => Ok(project.models.into_iter().map(|m| m.deploy).collect()),
            Err(Error::Invalid { diagnostics, .. }) => Err(diagnostics
                .iter()
                .map(|d| {
                    let location = d.location.as_ref().expect("every problem is located");
                    let (line, column) = location.line_column();
                    format!(
                        "{line}:{column}: {} ({}) [{}]",
                        d.message,
                        d.hint.as_deref().unwrap_or(""),
                        text.get(location.range.clone()).unwrap_or("")
                    )
                })
                .collect()),
            Err(other) => panic!("{other}"),
        }
    }

    fn environment(name: &str, auto: bool, approve: Approve, port: Option<u16>) -> Environment {
        Environment {
            name: name.into(),
            auto,
            approve,
            target: TargetKind::Local,
            port,
            kubernetes: None,
        }
    }

    #[test]
    fn the_documented_form_reads() {
        let deploys = load(&model(
            "    deploy:\n      staging: {auto: true, port: 8100}\n      production: {approve: manual, port: 8101}\n",
        ))
        .unwrap();
        assert_eq!(
            deploys[0].environments,
            [
                environment("staging", true, Approve::Manual, Some(8100)),
                environment("production", false, Approve::Manual, Some(8101)),
            ]
        );
    }

    #[test]
    fn a_model_without_deploy_gets_staging_then_production() {
        let deploys = load(&model("")).unwrap();
        assert_eq!(deploys[0], Deploy::default_for_model());
        assert_eq!(
            deploys[0].environments,
            [
                environment("staging", true, Approve::Manual, None),
                environment("production", false, Approve::Manual, None),
            ]
        );
        // A model with nothing to deploy has the default too; nothing uses it.
        let text = "models:\n  m:\n    stages:\n      train: {cmd: 'true'}\n";
        assert_eq!(load(text).unwrap()[0], Deploy::default_for_model());
    }

    #[test]
    fn defaults_fill_what_an_environment_leaves_out() {
        let deploys = load(&model(
            "    image: {repository: registry.example.com/m}\n    deploy:\n      dev:\n      qa: {auto: false}\n      canary: {approve: auto, target: kubernetes}\n      prod: {}\n",
        ))
        .unwrap_err();
        // `auto` is refused on a later environment; the rest reads.
        assert_eq!(deploys.len(), 1, "{deploys:?}");
        let deploys = load(&model(
            "    image: {repository: registry.example.com/m}\n    deploy:\n      dev:\n      canary: {approve: auto, target: kubernetes}\n      prod: {target: local}\n",
        ))
        .unwrap();
        let deploy = &deploys[0];
        assert_eq!(
            deploy.environments[0],
            environment("dev", true, Approve::Manual, None)
        );
        assert_eq!(
            deploy.environments[1],
            Environment {
                target: TargetKind::Kubernetes,
                kubernetes: Some(Kubernetes::default()),
                ..environment("canary", false, Approve::Auto, None)
            }
        );
        assert_eq!(
            deploy.environments[2],
            environment("prod", false, Approve::Manual, None)
        );
        let only = load(&model(
            "    deploy:\n      live: {auto: false, port: 65535}\n",
        ))
        .unwrap();
        assert_eq!(
            only[0].environments,
            [environment("live", false, Approve::Manual, Some(65535))]
        );
    }

    #[test]
    fn neighbours_follow_the_promotion_order() {
        let deploys = load(&model(
            "    deploy:\n      dev: {}\n      staging: {approve: auto}\n      production: {}\n",
        ))
        .unwrap();
        let deploy = &deploys[0];
        let name = |env: Option<&Environment>| env.map(|e| e.name.clone());
        assert_eq!(
            name(deploy.environment("staging")).as_deref(),
            Some("staging")
        );
        assert_eq!(deploy.environment("qa"), None);
        assert_eq!(name(deploy.next_after("dev")).as_deref(), Some("staging"));
        assert_eq!(
            name(deploy.next_after("staging")).as_deref(),
            Some("production")
        );
        assert_eq!(deploy.next_after("production"), None);
        assert_eq!(deploy.next_after("qa"), None);
        assert_eq!(deploy.previous_before("dev"), None);
        assert_eq!(
            name(deploy.previous_before("production")).as_deref(),
            Some("staging")
        );
        assert_eq!(deploy.previous_before("qa"), None);
    }

    #[test]
    fn auto_and_approve_belong_to_their_places() {
        let problems = load(&model(
            "    deploy:\n      staging: {approve: auto}\n      production: {auto: true}\n",
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "7:26: `approve` does not apply to `staging`, the first environment (the first environment takes green runs: write `auto: true` (the default) to deploy every new version there, or `auto: false` to deploy only by `kiln deploy`) [auto]",
                "8:26: `auto` applies only to the first environment, `staging` (`production` is promoted to from the environment before it: write `approve: auto` to promote once that one is healthy, or `approve: manual` to wait for `kiln promote`) [true]",
            ]
        );
    }

    #[test]
    fn environment_names_are_alias_names() {
        let problems = load(&model(
            "    deploy:\n      latest: {}\n      v2: {}\n      Prod: {}\n      eu.prod: {}\n      v: {}\n      v2-canary: {}\n",
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "7:7: `latest` cannot be an environment (`latest` moves by itself to every registered version: name the environment otherwise, e.g. `staging`) [latest]",
                "8:7: `v2` cannot be an environment: it names version 2 (name the environment otherwise, e.g. `staging` or `production`) [v2]",
                "9:7: `Prod` is not a valid environment name (an environment is named as an alias: lowercase letters, digits, `-` and `_`, starting with a letter, at most 64 characters) [Prod]",
                "10:7: `eu.prod` is not a valid environment name (an environment is named as an alias: lowercase letters, digits, `-` and `_`, starting with a letter, at most 64 characters) [eu.prod]",
            ]
        );
        let long = "a".repeat(65);
        let problems = load(&model(&format!("    deploy:\n      {long}: {{}}\n"))).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("is not a valid environment name"),
            "{problems:?}"
        );
    }

    #[test]
    fn ports_are_in_range_and_unique_across_the_project() {
        let text = "models:\n  a:\n    stages:\n      train: {cmd: 'true', outs: [a.onnx]}\n    artifact: a.onnx\n    deploy:\n      staging: {port: 8100}\n      production: {port: 0}\n      canary: {port: 70000}\n  b:\n    stages:\n      train: {cmd: 'true', outs: [b.onnx]}\n    artifact: b.onnx\n    deploy:\n      staging: {port: 8101}\n      production: {port: 8100}\n";
        assert_eq!(
            load(text).unwrap_err(),
            [
                "8:26: port `0` is out of range (a port is a number from 1 to 65535) [0]",
                "9:22: port `70000` is out of range (a port is a number from 1 to 65535) [70000]",
                "16:26: port `8100` of environment `production` of model `b` is already taken by environment `staging` of model `a` (each environment serves on its own port: choose another one, or leave `port` out for Kiln to choose) [8100]",
            ]
        );
        let problems = load(&model("    deploy:\n      staging: {port: http}\n")).unwrap_err();
        assert_eq!(problems, ["7:23: expected a number here () [http]"]);
    }

    #[test]
    fn an_empty_deploy_and_one_without_artifact_are_refused() {
        for empty in [
            "    deploy: {}\n",
            "    deploy:\n",
            "    deploy: # none yet\n",
        ] {
            let problems = load(&model(empty)).unwrap_err();
            assert_eq!(
                problems,
                [
                    "6:5: `deploy` of model `m` lists no environment (list environments in promotion order, e.g. `staging: {auto: true}` then `production: {approve: manual}`, or remove `deploy` for that default) [deploy]"
                ]
            );
        }
        let text = "models:\n  m:\n    stages:\n      train: {cmd: 'true'}\n    deploy:\n      staging: {}\n";
        assert_eq!(
            load(text).unwrap_err(),
            [
                "5:5: model `m` has `deploy` but no `artifact` (there is nothing to deploy: name what a stage writes and Kiln serves under `artifact`, or remove `deploy`) [deploy]"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_values_are_refused_with_what_is_known() {
        let problems = load(&model("    deploy:\n      staging: {aut: true}\n")).unwrap_err();
        assert_eq!(
            problems,
            [
                "7:17: unknown key `aut` (did you mean `auto`? expected one of: auto, approve, target, port, namespace, replicas, autoscale, resources, pull_secret, rollout_timeout) [aut]"
            ]
        );
        let problems = load(&model(
            "    deploy:\n      staging: {}\n      production: {approve: sometimes}\n",
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("sometimes") && problems[0].contains("manual"),
            "{problems:?}"
        );
        let problems = load(&model("    deploy:\n      staging: {target: docker}\n")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("docker") && problems[0].contains("kubernetes"),
            "{problems:?}"
        );
        let problems =
            load(&model("    deploy:\n      staging: {auto: yes please}\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("expected `true` or `false` here"),
            "{problems:?}"
        );
        let problems = load(&model("    deploy: [staging, production]\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("6:13: wrong type"), "{problems:?}");
    }

    #[test]
    fn kubernetes_environments_read_their_settings() {
        let text = model(concat!(
            "    image: {repository: 127.0.0.1:5000/team/m}\n",
            "    deploy:\n",
            "      staging:\n",
            "      production:\n",
            "        target: k8s\n",
            "        namespace: ml-prod\n",
            "        replicas: 3\n",
            "        autoscale: {min: 2, max: 10, cpu: 50}\n",
            "        resources: {cpu: 500m, memory: 512Mi, cpu_limit: '2', memory_limit: 2Gi}\n",
            "        pull_secret: regcred\n",
            "        rollout_timeout: 5m\n",
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kiln.yaml"), &text).unwrap();
        let project = crate::load(dir.path()).unwrap();
        let model = &project.models[0];
        assert_eq!(
            model.image_repository.as_deref(),
            Some("127.0.0.1:5000/team/m")
        );
        let production = model.deploy.environment("production").unwrap();
        assert_eq!(production.target, TargetKind::Kubernetes);
        assert_eq!(
            production.kubernetes,
            Some(Kubernetes {
                namespace: "ml-prod".into(),
                replicas: 3,
                autoscale: Some(Autoscale {
                    min: 2,
                    max: 10,
                    cpu_percent: 50
                }),
                resources: Resources {
                    cpu: "500m".into(),
                    memory: "512Mi".into(),
                    cpu_limit: Some("2".into()),
                    memory_limit: Some("2Gi".into()),
                },
                pull_secret: Some("regcred".into()),
                rollout_timeout_secs: 300,
            })
        );
        assert_eq!(
            model.deploy.environment("staging").unwrap().kubernetes,
            None
        );
    }

    #[test]
    fn bad_kubernetes_settings_are_located() {
        let problems = load(&model(concat!(
            "    image: {repository: 127.0.0.1:5000/m}\n",
            "    deploy:\n",
            "      live:\n",
            "        target: kubernetes\n",
            "        namespace: Prod_NS\n",
            "        replicas: 0\n",
            "        autoscale: {min: 4, max: 2}\n",
            "        resources: {cpu: lots, memory: 1.5.2Gi}\n",
            "        rollout_timeout: '10'\n",
        )))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "10:20: `Prod_NS` is not a valid namespace (Kubernetes names are lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters) [Prod_NS]",
                "11:19: `replicas` `0` is out of range (write a whole number from 1 to 1000) [0]",
                "12:34: `autoscale.max` (2) is below `autoscale.min` (4) (the autoscaler keeps the pods between `min` and `max`: make `max` at least `min`) [2]",
                "13:26: `lots` is not a Kubernetes quantity (write a quantity such as `500m` or `2`) [lots]",
                "13:40: `1.5.2Gi` is not a Kubernetes quantity (write a quantity such as `512Mi` or `2Gi`) [1.5.2Gi]",
                "14:26: `10` has no unit: write `10s` (write e.g. `120s` or `5m`) ['10']",
            ]
        );
        let problems = load(&model(
            "    image: {repository: 127.0.0.1:5000/m}\n    deploy:\n      live: {target: k8s, port: 8080}\n",
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "8:33: `port` applies only to environments on this machine (environment `live` is served by a Kubernetes Service on port 80 in the cluster: remove `port`) [8080]"
            ]
        );
        let problems = load(&model(
            "    deploy:\n      staging: {replicas: 2, namespace: ml}\n",
        ))
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "7:27: `replicas` applies only to `target: kubernetes` (environment `staging` runs on this machine: add `target: kubernetes`, or remove `replicas`) [2]",
                "7:41: `namespace` applies only to `target: kubernetes` (environment `staging` runs on this machine: add `target: kubernetes`, or remove `namespace`) [ml]",
            ]
        );
    }

    #[test]
    fn a_kubernetes_environment_needs_an_image_repository() {
        let problems =
            load(&model("    deploy:\n      staging: {target: kubernetes}\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("7:7: environment `staging` of model `m` runs on Kubernetes, but the model has no `image.repository`"),
            "{problems:?}"
        );
        let problems = load(&model(
            "    image: {repository: 'https://registry.example.com/m'}\n",
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("leave out the scheme"), "{problems:?}");
        let problems = load(&model(
            "    image: {repository: registry.example.com/Team/m:v1}\n",
        ))
        .unwrap_err();
        assert!(problems[0].contains("no tag or digest"), "{problems:?}");
    }
}
