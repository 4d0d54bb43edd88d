//! The served models: loading, atomic hot swap (arc-swap), unloading, and reloading when files change.
//!
//! Architecture invariant: a request holds an `Arc<LoadedModel>` from lookup to response. A swap only
//! replaces the pointer, so requests already in flight finish on the old model, whose batcher and engine
//! shut down when the last of them lets go. A load that fails leaves the current model serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::batcher::Batcher;
use crate::config::{ModelConfig, ServerConfig};
use crate::engine::onnx::OnnxEngine;
use crate::engine::python::{PythonEngine, PythonKind};
use crate::engine::{Engine, InferError, NamedTensors};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ModelMetrics};
use crate::ortlib;

/// A model that is loaded and serving.
pub struct LoadedModel {
    pub name: String,
    /// Increases by one with every successful load of this model name.
    pub version: String,
    pub engine: Arc<Engine>,
    pub metrics: ModelMetrics,
    batcher: Batcher,
}

impl LoadedModel {
    pub async fn infer(&self, inputs: NamedTensors) -> Result<NamedTensors, InferError> {
        self.batcher.submit(inputs).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelKind {
    Onnx,
    Python(PythonKind),
}

/// Files whose size and modification time identify one version of a model's source.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

struct Entry {
    config: ModelConfig,
    current: ArcSwapOption<LoadedModel>,
    loads: AtomicU64,
    /// Serialises loads of one model; the fingerprint is that of the source last tried.
    load_lock: tokio::sync::Mutex<Option<Fingerprint>>,
}

pub struct Repository {
    entries: HashMap<String, Arc<Entry>>,
    settings: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
}

impl Repository {
    pub fn new(settings: Arc<ServerConfig>, metrics: Arc<Metrics>) -> Result<Repository> {
        let mut entries = HashMap::new();
        for config in &settings.models {
            let entry = Entry {
                config: config.clone(),
                current: ArcSwapOption::empty(),
                loads: AtomicU64::new(0),
                load_lock: tokio::sync::Mutex::new(None),
            };
            if entries
                .insert(config.name.clone(), Arc::new(entry))
                .is_some()
            {
                return Err(Error::DuplicateModel {
                    name: config.name.clone(),
                });
            }
        }
        if entries.is_empty() {
            return Err(Error::NoModels);
        }
        Ok(Repository {
            entries,
            settings,
            metrics,
        })
    }

    /// Names of all configured models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The model serving now under `name`, if it is loaded.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.entries
            .get(name)
            .and_then(|entry| entry.current.load_full())
    }

    /// Whether every configured model is loaded.
    pub fn all_ready(&self) -> bool {
        self.entries.values().all(|e| e.current.load().is_some())
    }

    /// Loads (or reloads) `name` from its source and swaps it in; on failure the current model stays.
    pub async fn load(&self, name: &str) -> Result<Arc<LoadedModel>> {
        let entry = self.entries.get(name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
        })?;
        let mut last_seen = entry.load_lock.lock().await;
        let started = Instant::now();
        *last_seen = fingerprint(&entry.config);
        match self.build(entry).await {
            Ok(model) => {
                let model = Arc::new(model);
                entry.current.store(Some(Arc::clone(&model)));
                let took = started.elapsed();
                self.metrics.model_loaded(name, took);
                let took_ms = took.as_millis() as u64;
                // The first load is reported by the server's one startup line; swaps are news.
                if model.version == "1" {
                    tracing::debug!(model = %name, version = %model.version, took_ms, "model loaded");
                } else {
                    tracing::info!(model = %name, version = %model.version, took_ms, "model swapped in");
                }
                Ok(model)
            }
            Err(error) => {
                self.metrics.model_load_failed(name);
                Err(error)
            }
        }
    }

    /// Stops serving `name`; requests in flight finish on the unloaded model.
    pub fn unload(&self, name: &str) -> Result<()> {
        let entry = self.entries.get(name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
        })?;
        entry.current.store(None);
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Unloads every model (at shutdown).
    pub fn unload_all(&self) {
        for entry in self.entries.values() {
            entry.current.store(None);
        }
    }

    async fn build(&self, entry: &Entry) -> Result<LoadedModel> {
        let config = &entry.config;
        let (kind, path) = classify(&config.path)?;
        let engine = match kind {
            ModelKind::Onnx => {
                let settings = Arc::clone(&self.settings);
                let python = settings.python_executable();
                let engine = tokio::task::spawn_blocking(move || {
                    let env = ortlib::environment(settings.ort_library.as_deref(), Some(&python))?;
                    OnnxEngine::load(&path, &env, settings.onnx_sessions)
                })
                .await
                .map_err(|e| Error::ModelCheck {
                    model: config.name.clone(),
                    message: e.to_string(),
                })??;
                Engine::Onnx(Arc::new(engine))
            }
            ModelKind::Python(kind) => {
                let python = self.settings.python_executable();
                Engine::Python(
                    PythonEngine::start(
                        &config.name,
                        kind,
                        &path,
                        &python,
                        self.settings.python_workers,
                        Arc::clone(&self.metrics),
                    )
                    .await?,
                )
            }
        };
        let engine = Arc::new(engine);
        let loads = entry.loads.fetch_add(1, Ordering::SeqCst) + 1;
        let version = config
            .version_file
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file).ok())
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| loads.to_string());
        let metrics = self.metrics.for_model(&config.name, &version);
        let batcher = Batcher::start(
            &config.name,
            Arc::clone(&engine),
            self.settings.batch.clone(),
            metrics.clone(),
        );
        Ok(LoadedModel {
            name: config.name.clone(),
            version,
            engine,
            metrics,
            batcher,
        })
    }

    /// Polls the sources of loaded models and reloads those that changed. Runs until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for (name, entry) in &self.entries {
                if entry.current.load().is_none() {
                    continue;
                }
                let config = entry.config.clone();
                let now = tokio::task::spawn_blocking(move || fingerprint(&config))
                    .await
                    .ok()
                    .flatten();
                let changed = match entry.load_lock.try_lock() {
                    Ok(seen) => now.is_some() && *seen != now,
                    Err(_) => false,
                };
                if changed {
                    tracing::info!(model = %name, "model source changed, reloading");
                    let repository = Arc::clone(&self);
                    let name = name.clone();
                    tokio::spawn(async move {
                        if let Err(error) = repository.load(&name).await {
                            tracing::error!(model = %name, "reload failed, the previous version keeps serving: {}", crate::error_chain(&error));
                        }
                    });
                }
            }
        }
    }
}

/// The file that makes a folder an MLflow model.
const MLMODEL_FILE: &str = "MLmodel";

/// What kind of model `path` is, and the file or directory the engine loads.
fn classify(path: &Path) -> Result<(ModelKind, PathBuf)> {
    if !path.exists() {
        return Err(Error::ModelPathMissing {
            path: path.to_path_buf(),
        });
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "onnx") {
            return Ok((ModelKind::Onnx, path.to_path_buf()));
        }
        let parent = || path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if path.file_name().is_some_and(|n| n == "predict.py") {
            return Ok((ModelKind::Python(PythonKind::PredictPy), parent()));
        }
        if path.file_name().is_some_and(|n| n == MLMODEL_FILE) {
            return Ok((ModelKind::Python(PythonKind::Mlflow), parent()));
        }
        // Files of other frameworks are named as such rather than handed to ONNX Runtime, whose
        // protobuf error would not say what to do.
        if let Some(extension) = path.extension().and_then(|e| e.to_str())
            && NOT_ONNX.contains(&extension.to_ascii_lowercase().as_str())
        {
            return Err(Error::NotOnnx {
                path: path.to_path_buf(),
            });
        }
        // Any other file is taken for ONNX (stored artifacts may have no extension); ONNX Runtime
        // rejects it with a clear error if it is not.
        return Ok((ModelKind::Onnx, path.to_path_buf()));
    } else if path.join("predict.py").is_file() {
        return Ok((ModelKind::Python(PythonKind::PredictPy), path.to_path_buf()));
    } else if path.join("model.onnx").is_file() {
        return Ok((ModelKind::Onnx, path.join("model.onnx")));
    } else if path.join(MLMODEL_FILE).is_file() {
        return Ok((ModelKind::Python(PythonKind::Mlflow), path.to_path_buf()));
    }
    Err(Error::UnknownModelKind {
        path: path.to_path_buf(),
    })
}

/// Extensions of model and data files that are certainly not ONNX.
const NOT_ONNX: &[&str] = &[
    "pkl",
    "pickle",
    "joblib",
    "pt",
    "pth",
    "h5",
    "keras",
    "safetensors",
    "npy",
    "npz",
    "json",
    "csv",
    "txt",
    "py",
];

/// The model's source files and its version file, if it has one: a version moved to the same
/// content is a change too.
fn fingerprint(config: &ModelConfig) -> Option<Fingerprint> {
    let mut files = source_fingerprint(&config.path)?;
    if let Some(file) = &config.version_file
        && let Ok(metadata) = std::fs::metadata(file)
    {
        files.push((file.clone(), metadata.len(), metadata.modified().ok()));
    }
    Some(files)
}

fn source_fingerprint(path: &Path) -> Option<Fingerprint> {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (p.to_path_buf(), m.len(), m.modified().ok()))
    };
    if path.is_dir() {
        let mut files: Fingerprint = std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter_map(|p| stamp(&p))
            .collect();
        files.sort();
        Some(files)
    } else {
        stamp(path).map(|s| vec![s])
    }
}
