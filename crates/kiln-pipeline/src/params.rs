//! Params: the model's params file, flattened to dotted keys, with `--set key=value` overrides.

use std::collections::HashMap;
use std::path::Path;

use kiln_spec::Model;
use kiln_spec::values::{FlatValues, Scalar, read_flat};
use serde_json::{Map, Value};

use crate::Error;

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
