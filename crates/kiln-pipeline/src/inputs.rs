//! A stage's inputs (command, environment, dep digests, param values, declared outs) and the
//! cache key derived from them with an explicit, versioned encoding.

use std::collections::BTreeMap;

use kiln_spec::values::{FlatValues, Scalar, select};
use kiln_spec::{RelPath, Stage};
use kiln_store::Digest;
use serde_json::{Value, json};

/// Version tag of the cache-key encoding: bump it whenever [`StageInputs::key`] changes, so that
/// old cache entries are never mistaken for new ones (v3: floats in `ryu`'s shortest form rather
/// than Rust's `Debug`). The golden test below fails on any accidental change.
const KEY_ENCODING: &[u8] = b"kiln-stage-key-v3\0";

/// Everything that decides what a stage produces.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInputs {
    pub cmd: String,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    /// Digest of the Python environment's definition, when the model has one.
    pub python: Option<String>,
    /// Each dep with its digest (`None`: it does not exist).
    pub deps: Vec<(RelPath, Option<Digest>)>,
    pub params: Vec<(String, Scalar)>,
    pub outs: Vec<RelPath>,
}

impl StageInputs {
    pub fn new(
        stage: &Stage,
        python: Option<String>,
        deps: Vec<(RelPath, Option<Digest>)>,
        params: &FlatValues,
    ) -> StageInputs {
        let mut selected: Vec<(String, Scalar)> = Vec::new();
        for selector in &stage.params {
            for (key, value) in select(params, selector) {
                if !selected.iter().any(|(k, _)| k == key) {
                    selected.push((key.clone(), value.clone()));
                }
            }
        }
        selected.sort_by(|a, b| a.0.cmp(&b.0));
        StageInputs {
            cmd: stage.cmd.clone(),
            workdir: stage.workdir.to_string(),
            env: stage.env.clone(),
            python,
            deps,
            params: selected,
            outs: stage.outs.clone(),
        }
    }

    /// The cache key: BLAKE3 over length-prefixed fields in a fixed order.
    pub fn key(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_ENCODING);
        let mut field = |tag: &str, value: &[u8]| {
            hasher.update(tag.as_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        };
        field("cmd", self.cmd.as_bytes());
        field("workdir", self.workdir.as_bytes());
        for (name, value) in &self.env {
            field("env.name", name.as_bytes());
            field("env.value", value.as_bytes());
        }
        field("python", self.python.as_deref().unwrap_or("").as_bytes());
        for (path, digest) in &self.deps {
            field("dep.path", path.as_str().as_bytes());
            field(
                "dep.digest",
                digest.map(|d| d.0).as_ref().map_or(&[][..], |d| &d[..]),
            );
        }
        for (key, value) in &self.params {
            field("param.key", key.as_bytes());
            field("param.value", value.canonical().as_bytes());
        }
        for out in &self.outs {
            field("out", out.as_str().as_bytes());
        }
        Digest(*hasher.finalize().as_bytes())
    }

    /// A JSON record of the inputs, kept so that `kiln status` can say what changed.
    pub fn to_json(&self) -> Value {
        json!({
            "cmd": self.cmd,
            "env": self.env,
            "python": self.python,
            "deps": self.deps.iter().map(|(p, d)| (p.to_string(), d.map(|d| d.to_hex()))).collect::<BTreeMap<_, _>>(),
            "params": self.params.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "outs": self.outs.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        })
    }

    /// Why these inputs differ from `previous` (a record made by [`StageInputs::to_json`]).
    pub fn changes_since(&self, previous: &Value) -> Vec<String> {
        let mut reasons = Vec::new();
        let current = self.to_json();
        if current["cmd"] != previous["cmd"] {
            reasons.push("command changed".to_string());
        }
        if current["env"] != previous["env"] {
            reasons.push("environment variables changed".to_string());
        }
        if current["python"] != previous["python"] {
            reasons.push("python environment changed".to_string());
        }
        if current["outs"] != previous["outs"] {
            reasons.push("declared outs changed".to_string());
        }
        for (path, digest) in current["deps"].as_object().into_iter().flatten() {
            match previous["deps"].get(path) {
                None => reasons.push(format!("new dep `{path}`")),
                Some(old) if old != digest => reasons.push(if digest.is_null() {
                    format!("dep `{path}` is missing")
                } else {
                    format!("dep `{path}` changed")
                }),
                _ => {}
            }
        }
        for path in previous["deps"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(p, _)| p)
        {
            if current["deps"].get(path).is_none() {
                reasons.push(format!("dep `{path}` was removed"));
            }
        }
        let empty = serde_json::Map::new();
        let old_params = previous["params"].as_object().unwrap_or(&empty);
        for (key, value) in current["params"].as_object().into_iter().flatten() {
            match old_params.get(key) {
                None => reasons.push(format!(
                    "new param `{key}` = {}",
                    value.as_str().unwrap_or_default()
                )),
                Some(old) if old != value => reasons.push(format!(
                    "param `{key}` changed: {} -> {}",
                    old.as_str().unwrap_or_default(),
                    value.as_str().unwrap_or_default()
                )),
                _ => {}
            }
        }
        for key in old_params.keys() {
            if current["params"].get(key).is_none() {
                reasons.push(format!("param `{key}` was removed"));
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> RelPath {
        RelPath::resolve(&RelPath::root(), text).unwrap()
    }

    /// Fixed inputs, every field used once.
    fn golden_inputs() -> StageInputs {
        StageInputs {
            cmd: "python train.py".to_string(),
            workdir: "models/iris".to_string(),
            env: BTreeMap::from([("SEED".to_string(), "7".to_string())]),
            python: Some("0f".repeat(32)),
            deps: vec![
                (
                    path("data/train.csv"),
                    Some(Digest::of_bytes(b"x,y\n1,2\n")),
                ),
                (path("data/missing.csv"), None),
            ],
            params: vec![
                ("train.C".to_string(), Scalar::Number(0.1)),
                ("train.max_iter".to_string(), Scalar::Int(200)),
                (
                    "train.solver".to_string(),
                    Scalar::Text("lbfgs".to_string()),
                ),
                ("train.tol".to_string(), Scalar::Number(1e-7)),
            ],
            outs: vec![path("models/iris/model.onnx")],
        }
    }

    /// The key of fixed inputs, pinned: a change of encoding (field order, tags, the canonical
    /// form of a value) must come with a new `KEY_ENCODING` tag and a new digest here. The
    /// digest was computed independently of this code (the documented encoding, fed to `b3sum`).
    #[test]
    fn the_stage_key_encoding_is_pinned() {
        assert_eq!(
            golden_inputs().key().to_hex(),
            "35473697c0834275a3cd32f877b270d29ec413cbddfb3df683b8f9d191e9366f"
        );
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = golden_inputs();
        let key = base.key();
        let mut changed = Vec::new();
        let mut variant = base.clone();
        variant.cmd.push(' ');
        changed.push(variant);
        let mut variant = base.clone();
        variant.params[0].1 = Scalar::Number(0.1 + 1e-17 + 1e-16);
        changed.push(variant);
        let mut variant = base.clone();
        variant.params[1].1 = Scalar::Number(200.0);
        changed.push(variant);
        let mut variant = base.clone();
        variant.deps[1].1 = Some(Digest::of_bytes(b""));
        changed.push(variant);
        let mut variant = base.clone();
        variant.python = None;
        changed.push(variant);
        for variant in changed {
            assert_ne!(variant.key(), key, "{variant:?}");
        }
    }
}
