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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Processes on this machine, kept up by Kiln's supervisor; the default.
    Local,
    /// A Deployment in a Kubernetes cluster.
    Kubernetes,
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
    /// The port it serves on; `None` leaves the choice to Kiln.
    pub port: Option<u16>,
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
                },
                Environment {
                    name: "production".into(),
                    auto: false,
                    approve: Approve::Manual,
                    target: TargetKind::Local,
                    port: None,
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
        let port = env.port.as_ref().and_then(|port| {
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
        environments.push(Environment {
            name: name.to_string(),
            auto: is_first && env.auto.as_ref().is_none_or(|auto| **auto),
            approve: match &env.approve {
                Some(approve) if !is_first => **approve,
                _ => Approve::Manual,
            },
            target: env.target.unwrap_or(TargetKind::Local),
            port,
        });
    }
    (Deploy { environments }, diagnostics)
}

/// Each port is served by one environment of one model: a port given twice is reported where it
/// is given the second time.
pub(crate) fn check_ports(file: &KilnFile, source: &SourceFile) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut taken: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
    for (model, spec) in &file.models {
        let environments = spec.deploy.iter().flat_map(|deploy| deploy.iter());
        for (env, settings) in environments {
            let Some(port) = settings.as_ref().and_then(|s| s.port.as_ref()) else {
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
            "    deploy:\n      dev:\n      qa: {auto: false}\n      canary: {approve: auto, target: kubernetes}\n      prod: {}\n",
        ))
        .unwrap_err();
        // `auto` is refused on a later environment; the rest reads.
        assert_eq!(deploys.len(), 1, "{deploys:?}");
        let deploys = load(&model(
            "    deploy:\n      dev:\n      canary: {approve: auto, target: kubernetes}\n      prod: {target: local}\n",
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
                "7:17: unknown key `aut` (did you mean `auto`? expected one of: auto, approve, target, port) [aut]"
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
        let problems = load(&model("    deploy:\n      staging: {target: k8s}\n")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("k8s") && problems[0].contains("kubernetes"),
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
}
