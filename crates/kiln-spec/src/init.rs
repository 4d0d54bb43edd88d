//! `kiln init`: the text of a commented `kiln.yaml`, guessed from the repository layout.
//!
//! Two layouts are recognised: the monorepo (`models/<name>/src/train.py`, one model per
//! folder, with shared `data/raw` and `data/processed`, preprocessing scripts in `scripts/` and
//! unit tests in `tests/`) and a single model at the root (`train.py` or `src/train.py`). The
//! scripts are read ([`script`]) for what they write: the model file `train.py` saves, its
//! metrics file, what `predict.py` loads. The guess only names files that exist or that a stage
//! writes, so the result passes [`crate::parse_kiln`] as written; the comments say what to check
//! and teach the format.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::project::RelPath;
use crate::values;

mod script;

use script::{Base, Facts};

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

/// File extensions of saved models.
const MODEL_EXTENSIONS: &[&str] = &[
    "pkl",
    "pickle",
    "joblib",
    "onnx",
    "pt",
    "pth",
    "h5",
    "keras",
    "cbm",
    "ubj",
    "skops",
    "safetensors",
];
/// How pytest runs as a stage: without bytecode or cache files, which would change the folders
/// the stage depends on.
const PYTEST: &str = "python -B -m pytest -q -p no:cacheprovider";

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
    /// `pytest` is in the requirements.
    pytest: bool,
    params: Option<values::FlatValues>,
    train: Facts,
    predict: Option<Facts>,
    evaluate: Option<Facts>,
}

#[derive(Default)]
struct Scripts {
    prepare: bool,
    predict: bool,
    evaluate: bool,
}

/// A preprocessing script of `scripts/`, run from the root.
struct Preprocess {
    /// The stage name: the script's file stem.
    name: String,
    /// The script, relative to the root.
    script: String,
    /// What it writes, relative to the root.
    outs: Vec<String>,
}

/// What the whole repository offers besides its models.
struct Shared {
    preprocess: Vec<Preprocess>,
    /// `scripts/*.py` that were not recognised as preprocessing (listed in a comment).
    other_scripts: Vec<String>,
    /// `tests/` at the root.
    tests: bool,
    /// Some model runs the root's `tests/` (its requirements have pytest).
    tests_run: bool,
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
    let mut shared = find_shared(root);
    // Shared stages (preprocessing, the root's tests) belong to one model: the first, and for
    // tests the first whose requirements have pytest.
    let tests_owner = shared
        .tests
        .then(|| found.iter().position(|model| model.pytest))
        .flatten();
    shared.tests_run = tests_owner.is_some();
    let mut out = String::new();
    write_header(&mut out, &skipped, &shared);
    for (index, model) in found.iter().enumerate() {
        let mine = Mine {
            preprocess: if index == 0 { &shared.preprocess } else { &[] },
            tests: tests_owner == Some(index),
        };
        write_model(&mut out, root, model, &shared, &mine);
    }
    Ok(out)
}

/// The shared stages a model carries in its pipeline.
struct Mine<'a> {
    preprocess: &'a [Preprocess],
    tests: bool,
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
    let facts = |name: &str| {
        std::fs::read_to_string(base.join(format!("{src}{name}.py")))
            .ok()
            .map(|text| script::analyse(&text))
    };
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
    let pytest = requirements.as_ref().is_some_and(|path| {
        std::fs::read_to_string(base.join(path))
            .unwrap_or_default()
            .lines()
            .any(|line| {
                let line = line.trim().to_ascii_lowercase();
                line.strip_prefix("pytest").is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with(['=', '<', '>', '!', '~', '[', ' ', ';'])
                })
            })
    });
    let params_path = base.join("params.yaml");
    let params = params_path
        .is_file()
        .then(|| values::read_flat(&params_path).unwrap_or_default());
    Some(Found {
        name,
        dir: dir.to_string(),
        src,
        up,
        train: facts("train").unwrap_or_default(),
        predict: facts("predict"),
        evaluate: facts("evaluate"),
        has,
        requirements,
        pytest,
        params,
    })
}

/// Preprocessing scripts in `scripts/` (those that name `processed` data) and `tests/`.
fn find_shared(root: &Path) -> Shared {
    let mut scripts: Vec<String> = std::fs::read_dir(root.join("scripts"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".py") && !name.starts_with(['_', '.']))
        .filter(|name| !name.starts_with("test_"))
        .collect();
    scripts.sort();
    let mut preprocess = Vec::new();
    let mut other_scripts = Vec::new();
    let candidates: Vec<(String, Facts)> = scripts
        .into_iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(root.join("scripts").join(&name)).ok()?;
            if text.contains("processed") {
                Some((name, script::analyse(&text)))
            } else {
                other_scripts.push(format!("scripts/{name}"));
                None
            }
        })
        .collect();
    let scripts_dir = RelPath::resolve(&RelPath::root(), "scripts").unwrap_or_else(RelPath::root);
    let single = candidates.len() == 1;
    for (name, facts) in candidates {
        // One script owns `data/processed`; several each own the files they write there.
        let outs = if single {
            vec!["data/processed".to_string()]
        } else {
            facts
                .writes
                .iter()
                .filter_map(|path| resolve(path, &RelPath::root(), &scripts_dir))
                .filter(|path| path.as_str().starts_with("data/processed/"))
                .map(|path| path.as_str().to_string())
                .collect()
        };
        if outs.is_empty() {
            other_scripts.push(format!("scripts/{name}"));
            continue;
        }
        // The stage is named after the script, unless that is taken by a model's own stages.
        let mut stage =
            crate::project::name_from_folder(name.trim_end_matches(".py"), "preprocess");
        while ["prepare", "train", "evaluate", "package", "test"].contains(&stage.as_str())
            || preprocess.iter().any(|p: &Preprocess| p.name == stage)
        {
            stage = format!("script-{stage}");
        }
        preprocess.push(Preprocess {
            name: stage,
            script: format!("scripts/{name}"),
            outs,
        });
    }
    Shared {
        preprocess,
        other_scripts,
        tests: root.join("tests").is_dir(),
        tests_run: false,
    }
}

/// A path a script names, relative to the root: `cwd` is where the script runs, `script_dir`
/// where it lies.
fn resolve(path: &script::FoundPath, cwd: &RelPath, script_dir: &RelPath) -> Option<RelPath> {
    let base = match path.base {
        Base::WorkingDir => cwd.clone(),
        Base::ScriptDir(up) => {
            let mut base = script_dir.clone();
            for _ in 0..up {
                base = RelPath::resolve(&base, "..")?;
            }
            base
        }
    };
    RelPath::resolve(&base, &path.rel)
}

/// `path` (relative to the root) as written in a model whose folder is `dir`.
fn relative_to(dir: &RelPath, path: &RelPath) -> String {
    let dir_parts: Vec<&str> = dir.as_str().split('/').filter(|p| *p != ".").collect();
    let path_parts: Vec<&str> = path.as_str().split('/').filter(|p| *p != ".").collect();
    let common = dir_parts
        .iter()
        .zip(&path_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<&str> = vec![".."; dir_parts.len() - common];
    parts.extend(&path_parts[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

fn is_model_file(path: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(_, ext)| MODEL_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn is_metrics_file(path: &str) -> bool {
    path.ends_with(".json")
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

/// A shell word: quoted when it holds anything but plain path characters.
fn shell(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn write_header(out: &mut String, skipped: &[String], shared: &Shared) {
    out.push_str(
        "# kiln.yaml: how Kiln trains, checks and ships the models of this repository.\n\
         # Written by `kiln init` from the folder layout and what the scripts name: check each command\n\
         # and path against what the scripts really read and write, then run `kiln check`.\n\
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
    if shared.tests && !shared.tests_run {
        out.push_str(
            "#\n# `tests` was left out: add `pytest` to a model's requirements to run it as a stage.\n",
        );
    }
    for script in &shared.other_scripts {
        let _ = writeln!(
            out,
            "#\n# `{script}` was left out: it names no `processed` data Kiln could tie it to; add a stage\n\
             # for it if the pipeline needs it."
        );
    }
    out.push_str("\nmodels:\n");
}

/// What a model's training writes, relative to the root.
struct TrainOutputs {
    models: Vec<RelPath>,
    metrics: Vec<RelPath>,
}

fn write_model(out: &mut String, root: &Path, model: &Found, shared: &Shared, mine: &Mine) {
    let Found { src, up, has, .. } = model;
    let dir = RelPath::resolve(&RelPath::root(), &model.dir).unwrap_or_else(RelPath::root);
    let src_dir = RelPath::resolve(&dir, src).unwrap_or_else(|| dir.clone());
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

    // Preprocessing scripts of `scripts/` run from the root, as they are written to.
    let cd_root = if up.is_empty() {
        String::new()
    } else {
        format!("cd {} && ", up.trim_end_matches('/'))
    };
    for stage in mine.preprocess {
        let mut deps = vec![format!("{up}{}", stage.script)];
        if data("raw") {
            deps.push(format!("{up}data/raw"));
        }
        let outs: Vec<String> = stage.outs.iter().map(|o| format!("{up}{o}")).collect();
        let _ = writeln!(out, "      {}:", yaml(&stage.name));
        if !up.is_empty() {
            out.push_str(
                "        # Runs from the repository root, where the script expects to be.\n",
            );
        }
        let _ = writeln!(out, "        cmd: {cd_root}python {}", shell(&stage.script));
        let _ = writeln!(out, "        deps: {}", list(&deps));
        let _ = writeln!(out, "        outs: {}", list(&outs));
    }

    let raw = data("raw").then(|| format!("{up}data/raw"));
    let shared_processed = !shared.preprocess.is_empty();
    let mut train_inputs: Vec<String> = if shared_processed {
        vec![format!("{up}data/processed")]
    } else {
        raw.iter().cloned().collect()
    };
    if has.prepare {
        // In a monorepo every model writes its own folder of the shared `data/processed`, so that
        // two models never write the same path; without a shared one, `data/processed` inside
        // `dir` (the root's own in a single-model repository).
        let shared = !up.is_empty() && data("processed") && !shared_processed;
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

    // Where train.py runs: a script that names `data/...` without building the path from its own
    // location expects the repository root as its working folder.
    let from_root = !up.is_empty()
        && !dir.to_path(root).join("data").exists()
        && model
            .train
            .working_dir_paths()
            .any(|path| path.starts_with("data/") || path.starts_with("models/"));
    let cwd = if from_root {
        RelPath::root()
    } else {
        dir.clone()
    };
    let written: Vec<RelPath> = model
        .train
        .writes
        .iter()
        .filter_map(|path| resolve(path, &cwd, &src_dir))
        .filter(|path| path.is_within(&RelPath::root()) && path.as_str() != ".")
        .collect();
    let mut trained = TrainOutputs {
        models: written
            .iter()
            .filter(|p| is_model_file(p.as_str()))
            .cloned()
            .collect(),
        metrics: written
            .iter()
            .filter(|p| is_metrics_file(p.as_str()))
            .cloned()
            .collect(),
    };
    // Metrics that evaluate.py writes belong to that stage.
    let evaluate_metrics: Vec<RelPath> = model
        .evaluate
        .iter()
        .flat_map(|facts| &facts.writes)
        .filter_map(|path| resolve(path, &dir, &src_dir))
        .filter(|p| is_metrics_file(p.as_str()))
        .collect();
    if has.evaluate {
        trained.metrics.retain(|m| !evaluate_metrics.contains(m));
    }

    let train_script = format!("{src}train.py");
    let train_cmd = if from_root {
        format!(
            "{cd_root}python {}",
            shell(&format!("{}/{train_script}", model.dir))
        )
    } else {
        format!("python {train_script}")
    };
    let mut deps = vec![train_script.clone()];
    deps.extend(sibling_modules(root, &src_dir, &model.train, src));
    deps.extend(train_inputs.iter().cloned());
    out.push_str("      train:\n");
    if from_root {
        out.push_str(
            "        # train.py names its files from the repository root: it runs there.\n",
        );
    }
    let _ = writeln!(out, "        cmd: {train_cmd}");
    let _ = writeln!(out, "        deps: {}", list(&deps));
    write_params(out, model, "train");

    let artifact = if trained.models.is_empty() {
        // Nothing recognisable: the conventions Kiln serves directly.
        let artifact = if has.predict { "model" } else { "model.onnx" };
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
        write_metrics(out, &dir, &trained.metrics, has.evaluate);
        artifact.to_string()
    } else {
        let outs: Vec<String> = trained
            .models
            .iter()
            .map(|p| relative_to(&dir, p))
            .collect();
        out.push_str("        # The model file(s) train.py saves.\n");
        let _ = writeln!(out, "        outs: {}", list(&outs));
        write_metrics(out, &dir, &trained.metrics, has.evaluate);
        match &model.predict {
            Some(predict) => write_package(out, root, model, &dir, &src_dir, predict, &trained),
            None => outs[0].clone(),
        }
    };

    if has.evaluate {
        let mut deps = vec![format!("{src}evaluate.py"), artifact.clone()];
        deps.extend(train_inputs.iter().cloned());
        out.push_str("      evaluate:\n");
        let _ = writeln!(out, "        cmd: python {src}evaluate.py");
        let _ = writeln!(out, "        deps: {}", list(&deps));
        write_params(out, model, "evaluate");
        out.push_str(
            "        # A JSON or YAML file of numbers: gates and `kiln metrics diff` read it.\n",
        );
        let metrics: Vec<String> = if evaluate_metrics.is_empty() {
            vec!["metrics.json".to_string()]
        } else {
            evaluate_metrics
                .iter()
                .map(|p| relative_to(&dir, p))
                .collect()
        };
        let _ = writeln!(out, "        metrics: {}", list(&metrics));
    }

    if mine.tests || dir.to_path(root).join("tests").is_dir() && model.pytest && !up.is_empty() {
        write_tests(out, root, model, &src_dir, mine.tests);
    }

    out.push_str("    # What Kiln versions, registers and serves.\n");
    if model.predict.is_some() || artifact.ends_with(".onnx") {
        let _ = writeln!(out, "    artifact: {}", yaml(&artifact));
    } else {
        // A green run must be servable, and Kiln serves an ONNX file or a folder with
        // predict.py: a pickle on its own would fail every run.
        out.push_str(
            "    # Kiln serves an ONNX file, or a folder with predict.py (and what it loads): add\n    \
             # src/predict.py or export the model to ONNX, then declare what to serve.\n",
        );
        let _ = writeln!(out, "    # artifact: {}", yaml(&artifact));
    }
    out.push_str(
        "    # Quality gates over the metrics: a model that fails one is not registered or deployed.\n    \
         # gates: [\"accuracy >= 0.9\", \"accuracy >= production.accuracy - 0.01\"]\n    \
         # Where versions are served, in promotion order (without `deploy`, this default). The\n    \
         # first environment takes every green run (`auto: false` to deploy by `kiln deploy`); a\n    \
         # later one is promoted to from the one before: `approve: auto` once that one is healthy,\n    \
         # `manual` by `kiln promote`. `port: 8100` fixes an environment's port.\n    \
         # deploy:\n    \
         #   staging: {auto: true}\n    \
         #   production: {approve: manual}\n",
    );
}

/// `metrics: [...]` for what training writes, or a commented hint.
fn write_metrics(out: &mut String, dir: &RelPath, metrics: &[RelPath], evaluated: bool) {
    if !metrics.is_empty() {
        let metrics: Vec<String> = metrics.iter().map(|p| relative_to(dir, p)).collect();
        out.push_str(
            "        # The scores train.py writes: gates and `kiln metrics diff` read them.\n",
        );
        let _ = writeln!(out, "        metrics: {}", list(&metrics));
    } else if !evaluated {
        out.push_str(
            "        # If training writes its scores, list the file so that gates can read it:\n",
        );
        out.push_str("        # metrics: [metrics.json]\n");
    }
}

/// The `package` stage: `predict.py` with the model files it loads (and the modules it imports),
/// copied into one folder, which is what Kiln serves. Returns the folder.
fn write_package(
    out: &mut String,
    root: &Path,
    model: &Found,
    dir: &RelPath,
    src_dir: &RelPath,
    predict: &Facts,
    trained: &TrainOutputs,
) -> String {
    let loads: Vec<&str> = predict
        .reads
        .iter()
        .map(|path| path.rel.rsplit('/').next().unwrap_or(&path.rel))
        .collect();
    let name_of = |path: &RelPath| {
        path.as_str()
            .rsplit('/')
            .next()
            .unwrap_or(path.as_str())
            .to_string()
    };
    let mut files: Vec<&RelPath> = trained
        .models
        .iter()
        .filter(|path| loads.contains(&name_of(path).as_str()))
        .collect();
    if files.is_empty() {
        files = trained.models.iter().collect();
    }
    let taken = |folder: &str| {
        trained
            .models
            .iter()
            .chain(&trained.metrics)
            .any(|p| relative_to(dir, p).split('/').next() == Some(folder))
    };
    let folder = ["model", "artifact", "serving"]
        .into_iter()
        .find(|f| !taken(f) && !dir.to_path(root).join(f).exists())
        .unwrap_or("serving");
    let mut copied = vec![format!("{}predict.py", model.src)];
    copied.extend(sibling_modules(root, src_dir, predict, model.src));
    copied.extend(files.iter().map(|p| relative_to(dir, p)));
    let words: Vec<String> = copied.iter().map(|w| shell(w)).collect();
    out.push_str("      package:\n");
    let _ = writeln!(
        out,
        "        # The artifact: predict.py with the files it loads, in one folder that Kiln serves.\n        \
         # predict.py must find them next to itself (or in the folder `load(model_dir)` is given)."
    );
    let _ = writeln!(
        out,
        "        cmd: mkdir -p {folder} && cp {} {folder}/",
        words.join(" ")
    );
    let _ = writeln!(out, "        deps: {}", list(&copied));
    let _ = writeln!(out, "        outs: [{folder}]");
    folder.to_string()
}

/// The `test` stage: pytest over `tests/` (the root's when `root_tests`, else the model's).
fn write_tests(out: &mut String, root: &Path, model: &Found, src_dir: &RelPath, root_tests: bool) {
    let up = model.up;
    let mut deps = Vec::new();
    let cmd = if root_tests {
        deps.push(format!("{up}tests"));
        if root.join("scripts").is_dir() {
            deps.push(format!("{up}scripts"));
        }
        if up.is_empty() {
            format!("{PYTEST} tests")
        } else {
            format!("cd {} && {PYTEST} tests", up.trim_end_matches('/'))
        }
    } else {
        deps.push("tests".to_string());
        format!("{PYTEST} tests")
    };
    // The model's own modules, one by one: a folder would also hold `__pycache__`.
    let mut modules: Vec<String> = std::fs::read_dir(src_dir.to_path(root))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".py"))
        .map(|name| format!("{}{name}", model.src))
        .collect();
    modules.sort();
    deps.extend(modules);
    out.push_str("      test:\n");
    out.push_str("        # The unit tests, with pytest from the model's requirements; a failure fails the run.\n");
    let _ = writeln!(out, "        cmd: {cmd}");
    let _ = writeln!(out, "        deps: {}", list(&deps));
}

/// Modules of the script's own folder that it imports (`from features import build`), as deps.
fn sibling_modules(root: &Path, src_dir: &RelPath, facts: &Facts, src: &str) -> Vec<String> {
    let mut modules: Vec<String> = facts
        .imports
        .iter()
        .filter(|module| !matches!(module.as_str(), "train" | "predict"))
        .filter(|module| src_dir.to_path(root).join(format!("{module}.py")).is_file())
        .map(|module| format!("{src}{module}.py"))
        .collect();
    modules.sort();
    modules.dedup();
    modules
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

        // The commented `deploy` is the default, and reads back as such once uncommented.
        let uncommented = text
            .replace("    # deploy:\n", "    deploy:\n")
            .replace("    #   staging:", "      staging:")
            .replace("    #   production:", "      production:");
        assert_ne!(uncommented, text);
        std::fs::write(root.path().join(crate::KILN_FILE), &uncommented).unwrap();
        let project = crate::load(root.path()).unwrap();
        for model in &project.models {
            assert_eq!(model.deploy, crate::Deploy::default_for_model());
        }
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
    fn a_pickle_without_predict_py_is_not_declared_as_the_artifact() {
        let root = tree(&["models/b/src/"]);
        std::fs::write(
            root.path().join("models/b/src/train.py"),
            "import pickle\nfrom pathlib import Path\nOUT = Path(__file__).parent.parent\npickle.dump(model, open(OUT / 'artifacts/model.pkl', 'wb'))\n",
        )
        .unwrap();
        let (text, project) = scaffold_and_parse(root.path());
        assert!(
            text.contains("    # artifact: artifacts/model.pkl"),
            "{text}"
        );
        assert!(
            text.contains("add\n    # src/predict.py or export the model to ONNX"),
            "{text}"
        );
        assert_eq!(project.models[0].artifact, None);
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

    #[test]
    fn design_layout_with_scripts_tests_and_two_models() {
        let root = tree(&[
            "models/b/src/train.py",
            "data/raw/rows.csv",
            "scripts/download.py",
        ]);
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "scripts/preprocess.py",
            "import pandas as pd\npd.read_csv('data/raw/rows.csv').to_csv('data/processed/rows.csv')\n",
        );
        write(
            "tests/test_preprocess.py",
            "def test_nothing():\n    pass\n",
        );
        write("models/a/src/requirements.txt", "scikit-learn\npytest>=8\n");
        write(
            "models/a/src/train.py",
            "import json, joblib\nfrom pathlib import Path\nOUT = Path(__file__).parent.parent\njoblib.dump(model, OUT / 'model.joblib')\nwith open(OUT / 'scores.json', 'w') as f:\n    json.dump({}, f)\n",
        );
        write(
            "models/a/src/predict.py",
            "import joblib\n\ndef load(model_dir):\n    return joblib.load(f'{model_dir}/model.joblib')\n",
        );
        let (text, project) = scaffold_and_parse(root.path());
        assert!(
            text.contains("`scripts/download.py` was left out"),
            "{text}"
        );
        let a = project.model("a").unwrap();
        let stages: Vec<&str> = a.stages.iter().map(|s| s.id.stage.as_str()).collect();
        assert_eq!(stages, ["preprocess", "train", "package", "test"], "{text}");
        let [preprocess, train, package, test] = a.stages.as_slice() else {
            unreachable!()
        };
        assert_eq!(preprocess.cmd, "cd ../.. && python scripts/preprocess.py");
        assert_eq!(
            paths(&preprocess.deps),
            ["scripts/preprocess.py", "data/raw"]
        );
        assert_eq!(paths(&preprocess.outs), ["data/processed"]);
        // Paths built from `__file__` keep train.py running in the model's folder.
        assert_eq!(train.cmd, "python src/train.py");
        assert_eq!(paths(&train.metrics), ["models/a/scores.json"]);
        assert_eq!(
            paths(&train.outs),
            ["models/a/model.joblib", "models/a/scores.json"]
        );
        assert_eq!(paths(&package.outs), ["models/a/model"]);
        assert_eq!(a.artifact.as_ref().unwrap().as_str(), "models/a/model");
        assert!(
            test.cmd.ends_with("pytest -q -p no:cacheprovider tests"),
            "{}",
            test.cmd
        );
        // The second model reads what the first one's preprocessing writes.
        let b = project.model("b").unwrap();
        assert_eq!(
            paths(&b.stages[0].deps),
            ["models/b/src/train.py", "data/processed"]
        );
        assert!(!text.contains("`tests` was left out"), "{text}");
    }

    #[test]
    fn several_preprocessing_scripts_each_own_what_they_write() {
        let root = tree(&["train.py", "data/raw/rows.csv"]);
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "scripts/clean.py",
            "import shutil\nshutil.copy('data/raw/rows.csv', 'data/processed/clean.csv')\n",
        );
        write(
            "scripts/train.py",
            "with open('data/processed/clean.csv') as source:\n    rows = source.read()\nwith open('data/processed/split.csv', 'w') as out:\n    out.write(rows)\n",
        );
        let (text, project) = scaffold_and_parse(root.path());
        let stages: Vec<(&str, Vec<&str>)> = project.models[0]
            .stages
            .iter()
            .map(|s| (s.id.stage.as_str(), paths(&s.outs)))
            .collect();
        assert_eq!(
            stages[..2],
            [
                ("clean", vec!["data/processed/clean.csv"]),
                ("script-train", vec!["data/processed/split.csv"]),
            ],
            "{text}"
        );
    }
}
