//! `kiln init`: the text of a commented `kiln.yaml`, guessed from the repository layout.
//!
//! Two layouts are recognised: the monorepo (`models/<name>/src/train.py`, one model per
//! folder, with shared `data/raw` and `data/processed`) and a single model at the root
//! (`train.py` or `src/train.py`). The guess only names files that exist, so the result passes
//! [`crate::parse_kiln`] as written; the comments say what to check and teach the format.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::values;

/// Why no `kiln.yaml` could be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("found no training script to build a pipeline around in `{}`", root.display())]
    NothingRecognised { root: PathBuf, has_dvc: bool },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl InitError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            InitError::NothingRecognised { has_dvc: true, .. } => {
                Some("Kiln runs the `dvc.yaml` of this repository as it is: try `kiln check`".into())
            }
            InitError::NothingRecognised { has_dvc: false, .. } => Some(
                "`kiln init` looks for `models/<name>/src/train.py` (one model per folder) or a `train.py` at the root; \
                 add one, or write `kiln.yaml` by hand"
                    .into(),
            ),
            InitError::Read { .. } => None,
        }
    }
}

/// One model found in the layout; every path is relative to `dir`.
struct Found {
    name: String,
    /// The model folder relative to the root (`.` for the root itself).
    dir: String,
    /// Where the scripts live relative to `dir`: `src/` or the folder itself.
    src: &'static str,
    /// `../../` from a `models/<name>` folder back to the root; empty at the root.
    up: &'static str,
    has: Scripts,
    requirements: Option<String>,
    params: Option<values::FlatValues>,
}

#[derive(Default)]
struct Scripts {
    prepare: bool,
    predict: bool,
    evaluate: bool,
}

/// The text of a commented `kiln.yaml` for the repository at `root`.
pub fn scaffold(root: &Path) -> Result<String, InitError> {
    let mut skipped = Vec::new();
    let mut found = Vec::new();
    let models_dir = root.join("models");
    if models_dir.is_dir() {
        let entries = std::fs::read_dir(&models_dir).map_err(|source| InitError::Read {
            path: models_dir.clone(),
            source,
        })?;
        let mut folders: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with(['.', '_']))
            .collect();
        folders.sort();
        for folder in folders {
            let dir = format!("models/{folder}");
            match find_model(root, &dir, name_from(&folder), "../../") {
                Some(model) => found.push(model),
                None => skipped.push(dir),
            }
        }
    }
    if found.is_empty()
        && let Some(model) = find_model(root, ".", crate::dvc::model_name_for(root), "")
    {
        found.push(model);
    }
    if found.is_empty() {
        return Err(InitError::NothingRecognised {
            root: root.to_path_buf(),
            has_dvc: root.join(crate::DVC_FILE).is_file(),
        });
    }
    // Two folders can clean up to the same model name (`a b`, `a-b`): keep the keys unique.
    for index in 1..found.len() {
        let taken =
            |name: &str, found: &[Found]| found[..index].iter().any(|other| other.name == name);
        let mut name = found[index].name.clone();
        let mut counter = 2;
        while taken(&name, &found) {
            name = format!("{}-{counter}", found[index].name);
            counter += 1;
        }
        found[index].name = name;
    }
    let mut out = String::new();
    write_header(&mut out, &skipped);
    for model in &found {
        write_model(&mut out, root, model);
    }
    Ok(out)
}

/// A model folder's layout, or `None` when it has no training script.
fn find_model(root: &Path, dir: &str, name: String, up: &'static str) -> Option<Found> {
    let base = if dir == "." {
        root.to_path_buf()
    } else {
        root.join(dir)
    };
    let src = ["src/", ""]
        .into_iter()
        .find(|src| base.join(format!("{src}train.py")).is_file())?;
    let script = |name: &str| base.join(format!("{src}{name}.py")).is_file();
    let has = Scripts {
        prepare: script("prepare"),
        predict: script("predict"),
        evaluate: script("evaluate"),
    };
    let requirements = [
        format!("{src}requirements.txt"),
        "requirements.txt".to_string(),
    ]
    .into_iter()
    .find(|path| base.join(path).is_file());
    let params_path = base.join("params.yaml");
    let params = params_path
        .is_file()
        .then(|| values::read_flat(&params_path).unwrap_or_default());
    Some(Found {
        name,
        dir: dir.to_string(),
        src,
        up,
        has,
        requirements,
        params,
    })
}

/// A model name from a folder name: letters, digits, `_`, `-` and `.`.
fn name_from(folder: &str) -> String {
    crate::project::name_from_folder(folder, "model")
}

/// `text` as a YAML scalar: plain when that reads back as the same string, quoted otherwise.
fn yaml(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    let plain = text.chars().all(safe)
        && !text.starts_with('-')
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off"
        );
    if plain {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// `[a, b]` with each item a YAML scalar.
fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|item| yaml(item)).collect();
    format!("[{}]", items.join(", "))
}

fn write_header(out: &mut String, skipped: &[String]) {
    out.push_str(
        "# kiln.yaml: how Kiln trains, checks and ships the models of this repository.\n\
         # Written by `kiln init` from the folder layout: check each command and path against what\n\
         # the scripts really read and write, then run `kiln check`.\n\
         #\n\
         # A model is a pipeline of stages. A stage is a command (`cmd`) with the files it reads\n\
         # (`deps`), the params it reads (`params`) and the files it writes (`outs`, `metrics`).\n\
         # Kiln runs stages in dependency order, in parallel where it can, and skips a stage whose\n\
         # deps, params, command and environment are unchanged, restoring its outs from the cache.\n\
         # Paths inside a model are relative to its `dir`, and commands run there.\n",
    );
    for dir in skipped {
        let _ = writeln!(
            out,
            "#\n# `{dir}` was left out: it has no `src/train.py` (or `train.py`)."
        );
    }
    out.push_str("\nmodels:\n");
}

fn write_model(out: &mut String, root: &Path, model: &Found) {
    let Found { src, up, has, .. } = model;
    let data = |sub: &str| root.join("data").join(sub).is_dir();
    let _ = writeln!(out, "  {}:", yaml(&model.name));
    let _ = writeln!(out, "    dir: {}", yaml(&model.dir));
    match &model.requirements {
        Some(requirements) => {
            out.push_str(
                "    # Stages run in a virtualenv built from this file, cached by its hash.\n",
            );
            let _ = writeln!(out, "    python: {{requirements: {}}}", yaml(requirements));
        }
        None => out.push_str(
            "    # Add a requirements file to run the stages in a cached virtualenv:\n    \
             # python: {requirements: src/requirements.txt}\n",
        ),
    }
    if model.params.is_some() {
        out.push_str(
            "    # Values the stages read; changing one re-runs only the stages that list it.\n",
        );
        out.push_str("    params: params.yaml\n");
    }
    out.push_str("    stages:\n");

    let raw = data("raw").then(|| format!("{up}data/raw"));
    let mut train_inputs: Vec<String> = raw.iter().cloned().collect();
    if has.prepare {
        // In a monorepo every model writes its own folder of the shared `data/processed`, so that
        // two models never write the same path; without a shared one, `data/processed` inside
        // `dir` (the root's own in a single-model repository).
        let shared = !up.is_empty() && data("processed");
        let processed = if shared {
            format!("{up}data/processed/{}", model.name)
        } else {
            "data/processed".to_string()
        };
        let mut deps = vec![format!("{src}prepare.py")];
        deps.extend(raw.iter().cloned());
        out.push_str("      prepare:\n");
        let _ = writeln!(out, "        cmd: python {src}prepare.py");
        let _ = writeln!(out, "        deps: {}", list(&deps));
        write_params(out, model, "prepare");
        if shared {
            out.push_str("        # One folder per model in the shared data/processed, so that models never collide.\n");
        }
        let _ = writeln!(
            out,
            "        outs: {}",
            list(std::slice::from_ref(&processed))
        );
        out.push_str(
            "        # Data checks on a CSV file this stage writes; a failing check stops the run:\n        \
             # checks:\n",
        );
        let _ = writeln!(out, "        #   {processed}/train.csv:");
        out.push_str(
            "        #     rows: {min: 100}\n        \
             #     columns:\n        \
             #       label: {type: string, missing: 0}\n",
        );
        train_inputs = vec![processed];
    }

    // With predict.py Kiln serves the script with the files training saved next to it; without
    // it, a single ONNX file that Kiln serves itself.
    let artifact = if has.predict { "model" } else { "model.onnx" };
    let mut deps = vec![format!("{src}train.py")];
    deps.extend(train_inputs.iter().cloned());
    out.push_str("      train:\n");
    let _ = writeln!(out, "        cmd: python {src}train.py");
    let _ = writeln!(out, "        deps: {}", list(&deps));
    write_params(out, model, "train");
    if has.predict {
        let _ = writeln!(
            out,
            "        # `{src}predict.py` serves the model, so training saves its files in the folder `model`\n        \
             # for predict.py to load (without predict.py, Kiln serves one ONNX file: `model.onnx`)."
        );
    } else {
        let _ = writeln!(
            out,
            "        # Kiln serves an ONNX file itself (add `{src}predict.py` to serve a Python model instead,\n        \
             # with its files saved in a folder such as `model`)."
        );
    }
    let _ = writeln!(out, "        outs: [{artifact}]");
    if has.evaluate {
        let mut deps = vec![format!("{src}evaluate.py"), artifact.to_string()];
        deps.extend(train_inputs.iter().cloned());
        out.push_str("      evaluate:\n");
        let _ = writeln!(out, "        cmd: python {src}evaluate.py");
        let _ = writeln!(out, "        deps: {}", list(&deps));
        write_params(out, model, "evaluate");
        out.push_str(
            "        # A JSON or YAML file of numbers: gates and `kiln models diff` read it.\n",
        );
        out.push_str("        metrics: [metrics.json]\n");
    } else {
        out.push_str(
            "        # If training writes its scores, list the file so that gates can read it:\n",
        );
        out.push_str("        # metrics: [metrics.json]\n");
    }
    out.push_str("    # What Kiln versions, registers and serves.\n");
    let _ = writeln!(out, "    artifact: {artifact}");
    out.push_str(
        "    # Quality gates over the metrics: a model that fails one is not registered or deployed.\n    \
         # gates: [\"accuracy >= 0.9\", \"accuracy >= production.accuracy - 0.01\"]\n",
    );
}

/// `params: [stage]` when the params file has a section named after the stage.
fn write_params(out: &mut String, model: &Found, section: &str) {
    if let Some(values) = &model.params
        && values::select(values, section).next().is_some()
    {
        let _ = writeln!(out, "        params: [{section}]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Project, SourceFile, parse_kiln};

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let path = dir.path().join(file);
            if file.ends_with('/') {
                std::fs::create_dir_all(path).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let contents = if file.ends_with("params.yaml") {
                    "train: {C: 1.0}\n"
                } else {
                    ""
                };
                std::fs::write(path, contents).unwrap();
            }
        }
        dir
    }

    /// Scaffolds, writes `kiln.yaml` and reads it back as `kiln check` would.
    fn scaffold_and_parse(root: &Path) -> (String, Project) {
        let text = scaffold(root).unwrap();
        std::fs::write(root.join(crate::KILN_FILE), &text).unwrap();
        let project = parse_kiln(root, SourceFile::new(crate::KILN_FILE, text.as_str()))
            .unwrap_or_else(|d| {
                panic!(
                    "{text}\n{:#?}",
                    d.iter().map(ToString::to_string).collect::<Vec<_>>()
                )
            });
        (text, project)
    }

    fn paths(paths: &[crate::RelPath]) -> Vec<&str> {
        paths.iter().map(crate::RelPath::as_str).collect()
    }

    #[test]
    fn monorepo_with_two_models_parses_back() {
        let root = tree(&[
            "models/iris/src/prepare.py",
            "models/iris/src/train.py",
            "models/iris/src/predict.py",
            "models/iris/src/evaluate.py",
            "models/iris/src/requirements.txt",
            "models/iris/params.yaml",
            "models/churn/src/train.py",
            "models/notes/README.md",
            "data/raw/iris.csv",
            "data/processed/",
        ]);
        let (text, project) = scaffold_and_parse(root.path());
        assert!(text.contains("`models/notes` was left out"), "{text}");
        let names: Vec<&str> = project.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["churn", "iris"]);

        let iris = project.model("iris").unwrap();
        assert_eq!(iris.dir.as_str(), "models/iris");
        assert_eq!(
            iris.python.as_ref().unwrap().requirements.as_str(),
            "models/iris/src/requirements.txt"
        );
        assert_eq!(
            iris.params_file.as_ref().unwrap().as_str(),
            "models/iris/params.yaml"
        );
        let stages: Vec<&str> = iris.stages.iter().map(|s| s.id.stage.as_str()).collect();
        assert_eq!(stages, ["prepare", "train", "evaluate"]);
        let [prepare, train, evaluate] = iris.stages.as_slice() else {
            unreachable!()
        };
        assert_eq!(prepare.cmd, "python src/prepare.py");
        assert_eq!(
            paths(&prepare.deps),
            ["models/iris/src/prepare.py", "data/raw"]
        );
        assert_eq!(paths(&prepare.outs), ["data/processed/iris"]);
        assert_eq!(
            paths(&train.deps),
            ["models/iris/src/train.py", "data/processed/iris"]
        );
        assert_eq!(train.params, ["train"]);
        // predict.py serves the model from the folder training writes.
        assert_eq!(paths(&train.outs), ["models/iris/model"]);
        assert_eq!(
            iris.artifact.as_ref().unwrap().as_str(),
            "models/iris/model"
        );
        assert_eq!(paths(&evaluate.metrics), ["models/iris/metrics.json"]);

        let churn = project.model("churn").unwrap();
        assert!(churn.python.is_none());
        let [train] = churn.stages.as_slice() else {
            panic!("churn has only `train`")
        };
        assert_eq!(
            paths(&train.deps),
            ["models/churn/src/train.py", "data/raw"]
        );
        assert_eq!(paths(&train.outs), ["models/churn/model.onnx"]);
        assert!(text.contains("# gates: ["), "{text}");
    }

    #[test]
    fn single_model_at_the_root() {
        let root = tree(&[
            "train.py",
            "prepare.py",
            "requirements.txt",
            "data/raw/rows.csv",
        ]);
        let (_text, project) = scaffold_and_parse(root.path());
        let [model] = project.models.as_slice() else {
            panic!("one model")
        };
        assert_eq!(model.name, crate::dvc::model_name_for(root.path()));
        assert_eq!(model.dir.as_str(), ".");
        assert_eq!(
            model.python.as_ref().unwrap().requirements.as_str(),
            "requirements.txt"
        );
        let [prepare, train] = model.stages.as_slice() else {
            panic!("prepare and train")
        };
        assert_eq!(prepare.cmd, "python prepare.py");
        assert_eq!(paths(&prepare.outs), ["data/processed"]);
        assert_eq!(paths(&train.deps), ["train.py", "data/processed"]);
        assert_eq!(model.artifact.as_ref().unwrap().as_str(), "model.onnx");
    }

    #[test]
    fn odd_folder_names_are_quoted_and_cleaned() {
        let root = tree(&["models/my model/src/train.py", "models/true/src/train.py"]);
        let (text, project) = scaffold_and_parse(root.path());
        assert!(text.contains("dir: \"models/my model\""), "{text}");
        let names: Vec<&str> = project.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["my-model", "true"]);
    }

    #[test]
    fn nothing_recognisable_is_an_error_with_a_hint() {
        let root = tree(&["README.md", "models/empty/"]);
        let error = scaffold(root.path()).unwrap_err();
        assert!(
            error.to_string().starts_with("found no training script"),
            "{error}"
        );
        assert!(error.hint().unwrap().contains("models/<name>/src/train.py"));
        std::fs::write(root.path().join("dvc.yaml"), "stages: {}\n").unwrap();
        assert!(
            scaffold(root.path())
                .unwrap_err()
                .hint()
                .unwrap()
                .contains("dvc.yaml")
        );
    }
}
