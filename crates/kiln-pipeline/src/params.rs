//! Params: the model's params file, flattened to dotted keys, with `--set key=value` overrides.
//!
//! `kiln run --set` writes each override into the params file itself before any stage runs, as
//! `dvc exp run --set-param` does, so that scripts reading `params.yaml` directly see it; only
//! the value's text changes (see `kiln_spec::edit`), and the write is atomic. `kiln status
//! --set` plans the same edits without writing them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_spec::edit::{Format, set_value};
use kiln_spec::values::{FlatValues, Scalar, parse_flat, read_flat};
use kiln_spec::{Model, RelPath};
use serde_json::{Map, Value};

use crate::Error;
use crate::run::{Event, Observer};

/// One `--set key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: Scalar,
}

impl Override {
    /// Parses `key=value`; the value is typed as YAML would type it (`0.5` is a number).
    pub fn parse(text: &str) -> Result<Override, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!("`{text}` is not of the form `key=value`"));
        };
        let key = key.trim();
        if key.is_empty() || key.starts_with('.') || key.ends_with('.') {
            return Err(format!(
                "`{key}` is not a param key (expected a dotted key such as `train.C`)"
            ));
        }
        Ok(Override {
            key: key.to_string(),
            value: Scalar::from_yaml(value.trim()),
        })
    }
}

/// The model's params file, flattened (empty when the model has none).
pub fn model_params(root: &Path, model: &Model) -> Result<FlatValues, Error> {
    match &model.params_file {
        Some(file) => read_flat(&file.to_path(root)).map_err(Error::Params),
        None => Ok(FlatValues::new()),
    }
}

/// One value that `--set` writes into a params file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamWrite {
    /// The params file, relative to the project root.
    pub file: RelPath,
    pub key: String,
    pub previous: Scalar,
    /// The value as the file now reads.
    pub value: Scalar,
}

impl std::fmt::Display for ParamWrite {
    /// `params.yaml: train.C = 0.5 (was 1.0)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} = {}", self.file, self.key, self.value)?;
        if self.previous == self.value {
            f.write_str(" (unchanged)")
        } else {
            write!(f, " (was {})", self.previous)
        }
    }
}

/// The params files as a set of overrides leaves them, before anything is written.
#[derive(Debug, Default)]
pub struct ParamsPlan {
    /// Each edited file: its path, its new text, and whether the text changed.
    files: BTreeMap<RelPath, (PathBuf, String, bool)>,
    /// Each file's values after the edits.
    values: HashMap<RelPath, FlatValues>,
    pub writes: Vec<ParamWrite>,
}

impl ParamsPlan {
    /// The model's params as they will read once the plan is written.
    pub fn model_params(&self, root: &Path, model: &Model) -> Result<FlatValues, Error> {
        match model.params_file.as_ref().and_then(|f| self.values.get(f)) {
            Some(values) => Ok(values.clone()),
            None => model_params(root, model),
        }
    }

    /// Writes every changed file, each atomically.
    pub fn write(&self) -> Result<(), Error> {
        for (path, text, changed) in self.files.values() {
            if *changed {
                kiln_store::atomic::write(path, text.as_bytes())
                    .map_err(|source| Error::io("write", path, source))?;
            }
        }
        Ok(())
    }
}

/// Plans `overrides` as edits of the params files of `models`: each override goes into every
/// one of their files that has its key (as [`apply_overrides`] applies it to every model that
/// has it). Nothing is written; an override that no file has, or that names a whole section,
/// is an error before any file is touched.
pub fn plan_overrides(
    root: &Path,
    models: &[&Model],
    overrides: &[Override],
) -> Result<ParamsPlan, Error> {
    let mut plan = ParamsPlan::default();
    if overrides.is_empty() {
        return Ok(plan);
    }
    let mut texts: BTreeMap<RelPath, (PathBuf, String, String)> = BTreeMap::new();
    for file in models.iter().filter_map(|m| m.params_file.as_ref()) {
        if texts.contains_key(file) {
            continue;
        }
        let path = file.to_path(root);
        let text = std::fs::read_to_string(&path).map_err(|source| {
            Error::Params(kiln_spec::values::ValuesError::Read {
                path: path.clone(),
                source,
            })
        })?;
        texts.insert(file.clone(), (path, text.clone(), text));
    }
    require_declared(models, overrides, &texts)?;
    for set in overrides {
        let section = format!("{}.", set.key);
        for (file, (path, _, text)) in texts.iter_mut() {
            let values = parse_flat(text).map_err(|message| {
                Error::Params(kiln_spec::values::ValuesError::Parse {
                    path: path.clone(),
                    message,
                })
            })?;
            let has_key = values
                .keys()
                .any(|k| *k == set.key || k.starts_with(&section));
            if !has_key {
                continue;
            }
            let edit =
                set_value(text, &set.key, &set.value, Format::of_path(path)).map_err(|source| {
                    Error::SetParam {
                        file: file.to_string(),
                        source,
                    }
                })?;
            *text = edit.text;
            plan.writes.push(ParamWrite {
                file: file.clone(),
                key: set.key.clone(),
                previous: edit.previous,
                value: edit.value,
            });
        }
    }
    for (file, (path, original, text)) in texts {
        let values = parse_flat(&text).map_err(|message| {
            Error::Params(kiln_spec::values::ValuesError::Parse {
                path: path.clone(),
                message,
            })
        })?;
        plan.values.insert(file.clone(), values);
        let changed = original != text;
        plan.files.insert(file, (path, text, changed));
    }
    // An override that no model has is refused here, before anything is written.
    let mut params: HashMap<String, FlatValues> = HashMap::new();
    for model in models {
        params.insert(model.name.clone(), plan.model_params(root, model)?);
    }
    apply_overrides(models, &mut params, overrides)?;
    Ok(plan)
}

/// Refuses an override that no stage would see: among the models whose params file has the key,
/// some stage must declare it (`params: [train]` covers `train.C`) or depend on the params file
/// itself. Otherwise the file would change, every stage would stay cached, and the run would
/// record a value no stage trained with.
fn require_declared(
    models: &[&Model],
    overrides: &[Override],
    texts: &BTreeMap<RelPath, (PathBuf, String, String)>,
) -> Result<(), Error> {
    for set in overrides {
        let mut holders = Vec::new();
        for model in models {
            let Some(file) = &model.params_file else {
                continue;
            };
            let Some((path, text, _)) = texts.get(file) else {
                continue;
            };
            let values = parse_flat(text).map_err(|message| {
                Error::Params(kiln_spec::values::ValuesError::Parse {
                    path: path.clone(),
                    message,
                })
            })?;
            if values.contains_key(&set.key) {
                holders.push((model, file));
            }
        }
        if holders.is_empty() {
            // Not in any file: `apply_overrides` names the known keys.
            continue;
        }
        let declared = holders.iter().any(|(model, file)| {
            model.stages.iter().any(|stage| {
                stage.deps.iter().any(|dep| dep == *file)
                    || stage
                        .params
                        .iter()
                        .any(|param| set.key == *param || set.key.starts_with(&format!("{param}.")))
            })
        });
        if !declared {
            let (model, file) = holders[0];
            let section = set.key.split('.').next().unwrap_or(&set.key).to_string();
            return Err(Error::UndeclaredParam {
                key: set.key.clone(),
                model: model.name.clone(),
                file: file.to_string(),
                section,
            });
        }
    }
    Ok(())
}

/// Writes `overrides` into the params files of `models` (see [`plan_overrides`]) and tells the
/// observer each value written. Called before any stage runs, under the run lock.
pub fn write_overrides(
    root: &Path,
    models: &[&Model],
    overrides: &[Override],
    observer: &dyn Observer,
) -> Result<(), Error> {
    let plan = plan_overrides(root, models, overrides)?;
    plan.write()?;
    for write in &plan.writes {
        observer.on_event(Event::ParamWritten { write });
    }
    Ok(())
}

/// Applies each override to the models whose params have its key (a model without the key is
/// left alone: `--set train.C=…` must not touch an upstream model with other params). An
/// override that no model has is an error, so that a typo does not silently train with the
/// default. Returns, per model, the overrides it took.
pub fn apply_overrides(
    models: &[&Model],
    params: &mut HashMap<String, FlatValues>,
    overrides: &[Override],
) -> Result<HashMap<String, Vec<Override>>, Error> {
    let mut applied: HashMap<String, Vec<Override>> = HashMap::new();
    for set in overrides {
        let mut taken = false;
        for model in models {
            if let Some(slot) = params
                .get_mut(&model.name)
                .and_then(|values| values.get_mut(&set.key))
            {
                *slot = set.value.clone();
                applied
                    .entry(model.name.clone())
                    .or_default()
                    .push(set.clone());
                taken = true;
            }
        }
        if !taken {
            let model = models.first().copied();
            let file = model
                .and_then(|m| m.params_file.as_ref())
                .map_or("(no params file)".to_string(), |f| f.to_string());
            let known = model
                .and_then(|m| params.get(&m.name))
                .map(|v| v.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            return Err(Error::UnknownParam {
                key: set.key.clone(),
                model: model.map(|m| m.name.clone()).unwrap_or_default(),
                file,
                known,
            });
        }
    }
    Ok(applied)
}

/// The params as a nested JSON document (what `KILN_PARAMS` points to; JSON is also YAML, so
/// `yaml.safe_load` reads it).
pub fn nested_json(values: &FlatValues) -> Value {
    let mut root = Map::new();
    for (key, value) in values {
        let mut node = &mut root;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.insert(part.to_string(), scalar_json(value));
            } else {
                let child = node
                    .entry(part.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !child.is_object() {
                    *child = Value::Object(Map::new());
                }
                node = child.as_object_mut().expect("just made an object");
            }
        }
    }
    Value::Object(root)
}

fn scalar_json(value: &Scalar) -> Value {
    match value {
        Scalar::Int(i) => Value::from(*i),
        Scalar::Number(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Text(t) => Value::String(t.clone()),
        Scalar::Null => Value::Null,
    }
}

/// The params as a flat JSON object (for the run record).
pub fn flat_json(values: &FlatValues) -> Value {
    Value::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), scalar_json(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_spec::values::parse_flat;

    #[test]
    fn overrides_are_typed_and_nested_back() {
        let set = Override::parse("train.C=0.5").unwrap();
        assert_eq!(set.value, Scalar::Number(0.5));
        assert!(Override::parse("train.C").is_err());
        assert!(Override::parse("=3").is_err());
        let values = parse_flat("train: {C: 1, solver: lbfgs}\nseed: 7\n").unwrap();
        assert_eq!(
            nested_json(&values),
            serde_json::json!({"seed": 7, "train": {"C": 1, "solver": "lbfgs"}})
        );
    }
}
