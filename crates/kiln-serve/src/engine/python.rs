//! Python models in a pool of worker processes speaking JSON lines over stdin/stdout: a folder with a
//! `predict.py`, or an MLflow model folder (an `MLmodel` file with the `python_function` flavor).
//!
//! Each worker runs one batch at a time. A worker that dies fails the batch it was running with
//! [`InferError::WorkerCrashed`] and is replaced; the pool and the server stay up. What the model's
//! `predict` takes is declared by the model ([`InputKind`]); the worker protocol is described at the top
//! of `worker.py`.
//!
//! The `predict.py` contract:
//!
//! ```python
//! import os
//! import joblib
//!
//! # What `predict` takes: "arrays" (default; a dict of numpy arrays, one per input tensor),
//! # "dataframe" (a pandas DataFrame, one named column per feature) or "records" (a list of dicts).
//! INPUT = "dataframe"
//! # Optional; requests are checked against it. Datatypes FP32, FP64, INT32, INT64, BOOL, BYTES;
//! # -1 is any size. Either one 1-D input per column, or one 2-D input and "feature_names".
//! SIGNATURE = {
//!     "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
//!     "feature_names": ["height", "weight"],
//!     "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
//! }
//!
//! def load(model_dir):                 # optional; its result is predict's second argument
//!     return joblib.load(os.path.join(model_dir, "model.joblib"))
//!
//! def predict(frame, model):           # frame has columns "height" and "weight"
//!     return model.predict(frame)      # dict, DataFrame, Series, numpy array or list
//! ```
//!
//! A returned dict or DataFrame gives one output per key or column; anything else is one output, named
//! after the only declared output, else `predictions`. Columns of a 2-D input without feature names are
//! numbered `0, 1, ...` (`x_0, x_1, ...` when there are several inputs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::engine::{InferError, ModelFailure, NamedTensors};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::tensor::{
    DataType, Signature, Tensor, TensorSpec, flatten_json, infer_dtype, json_to_data,
};

const WORKER_SOURCE: &str = include_str!("worker.py");
const START_TIMEOUT: Duration = Duration::from_secs(120);

struct Job {
    inputs: NamedTensors,
    reply: oneshot::Sender<Result<NamedTensors, InferError>>,
}

/// How the model folder is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonKind {
    /// `predict.py` with `predict(inputs)`, optional `load(model_dir)`, `SIGNATURE` and `INPUT`.
    PredictPy,
    /// An MLflow model folder, loaded with `mlflow.pyfunc.load_model`; its signature comes from `MLmodel`.
    Mlflow,
}

impl PythonKind {
    fn worker_arg(self) -> &'static str {
        match self {
            PythonKind::PredictPy => "predict.py",
            PythonKind::Mlflow => "mlflow",
        }
    }

    /// The platform string of the v2 model metadata.
    pub fn platform(self) -> &'static str {
        match self {
            PythonKind::PredictPy => "kiln_python",
            PythonKind::Mlflow => "mlflow_pyfunc",
        }
    }
}

/// What `predict` is called with (`INPUT = "..."` in predict.py; a DataFrame for MLflow column signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A dict of numpy arrays, one per input tensor (the default).
    Arrays,
    /// A pandas DataFrame with one named column per feature.
    Dataframe,
    /// A list of dicts, one per row, keyed by column name.
    Records,
}

pub struct PythonEngine {
    jobs: mpsc::Sender<Job>,
    workers: usize,
    pub kind: PythonKind,
    pub signature: Signature,
}

#[derive(Clone)]
struct WorkerContext {
    model: String,
    kind: PythonKind,
    python: PathBuf,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

/// What a worker announced once its model was loaded.
struct Hello {
    signature: Option<Value>,
    input: Option<String>,
}

struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl PythonEngine {
    /// Starts `workers` processes and waits until each has loaded the model.
    pub async fn start(
        model: &str,
        kind: PythonKind,
        dir: &Path,
        python: &Path,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<PythonEngine> {
        let context = WorkerContext {
            model: model.to_string(),
            kind,
            python: python.to_path_buf(),
            dir: dir.to_path_buf(),
            metrics,
        };
        let workers = workers.max(1);
        let mut starting = Vec::new();
        for _ in 0..workers {
            let context = context.clone();
            starting.push(tokio::spawn(async move { spawn_worker(&context).await }));
        }
        let mut processes = Vec::new();
        let mut hello = None;
        for task in starting {
            let (process, announced) = task.await.map_err(|e| Error::PythonWorkerStart {
                model: model.to_string(),
                message: e.to_string(),
                traceback: None,
            })??;
            hello = Some(announced);
            processes.push(process);
        }
        let hello = hello.unwrap_or(Hello {
            signature: None,
            input: None,
        });
        let declaration_error = |message: String| Error::PythonWorkerStart {
            model: model.to_string(),
            message,
            traceback: None,
        };
        let signature = parse_signature(hello.signature.as_ref()).map_err(declaration_error)?;
        let input = match hello.input.as_deref() {
            None | Some("arrays") => InputKind::Arrays,
            Some("dataframe") => InputKind::Dataframe,
            Some("records") => InputKind::Records,
            Some(other) => {
                return Err(declaration_error(format!(
                    "unknown input kind `{other}`; expected `arrays`, `dataframe` or `records`"
                )));
            }
        };
        let (jobs, receiver) = mpsc::channel::<Job>(1024);
        let receiver = Arc::new(Mutex::new(receiver));
        let encoder = Arc::new(RequestEncoder {
            input,
            feature_names: signature.feature_names.clone(),
        });
        for process in processes {
            tokio::spawn(worker_loop(
                process,
                Arc::clone(&receiver),
                context.clone(),
                Arc::clone(&encoder),
            ));
        }
        Ok(PythonEngine {
            jobs,
            workers,
            kind,
            signature,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub async fn infer(&self, inputs: NamedTensors) -> Result<NamedTensors, InferError> {
        let (reply, response) = oneshot::channel();
        self.jobs
            .send(Job { inputs, reply })
            .await
            .map_err(|_| InferError::ShuttingDown)?;
        response.await.unwrap_or(Err(InferError::ShuttingDown))
    }
}

async fn spawn_worker(context: &WorkerContext) -> Result<(WorkerProcess, Hello)> {
    let start_error = |message: String| Error::PythonWorkerStart {
        model: context.model.clone(),
        message,
        traceback: None,
    };
    let mut child = Command::new(&context.python)
        .arg("-u")
        .arg("-c")
        .arg(WORKER_SOURCE)
        .arg(&context.dir)
        .arg(context.kind.worker_arg())
        .current_dir(&context.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::PythonSpawn {
            python: context.python.clone(),
            source,
        })?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| start_error("no stdin".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| start_error("no stdout".into()))?;
    if let Some(stderr) = child.stderr.take() {
        let model = context.model.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(model = %model, "predict.py: {line}");
            }
        });
    }
    let mut stdout = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
        .await
        .map_err(|_| start_error(format!("not ready after {}s", START_TIMEOUT.as_secs())))?
        .map_err(|e| start_error(e.to_string()))?;
    let Some(first) = first else {
        let status = child.wait().await.ok();
        return Err(start_error(format!(
            "the worker exited before it was ready ({})",
            describe_status(status)
        )));
    };
    let hello: Value = serde_json::from_str(&first)
        .map_err(|_| start_error(format!("unexpected worker output `{first}`")))?;
    if hello["ready"] != Value::Bool(true) {
        let failure = model_failure(&hello["error"]);
        return Err(Error::PythonWorkerStart {
            model: context.model.clone(),
            message: failure.error,
            traceback: failure.traceback,
        });
    }
    let announced = Hello {
        signature: Some(hello["signature"].clone()).filter(|s| !s.is_null()),
        input: hello["input"].as_str().map(str::to_string),
    };
    Ok((
        WorkerProcess {
            child,
            stdin,
            stdout,
            next_id: 0,
        },
        announced,
    ))
}

fn describe_status(status: Option<std::process::ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_string(), |s| s.to_string())
}

/// The model's error as the worker reported it: `{"type", "message", "traceback"}`.
fn model_failure(error: &Value) -> ModelFailure {
    let text = |key: &str| error[key].as_str().map(|s| s.trim_end().to_string());
    let message = text("message").unwrap_or_default();
    let error_text = match (text("type"), message.is_empty()) {
        (Some(kind), true) => kind,
        (Some(kind), false) => format!("{kind}: {message}"),
        (None, _) => error
            .as_str()
            .unwrap_or("unknown error")
            .trim_end()
            .to_string(),
    };
    ModelFailure {
        error: error_text,
        traceback: text("traceback"),
    }
}

async fn worker_loop(
    mut process: WorkerProcess,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    context: WorkerContext,
    encoder: Arc<RequestEncoder>,
) {
    loop {
        let job = { jobs.lock().await.recv().await };
        let Some(job) = job else {
            // The model was unloaded or swapped: the pool drains, then its processes end.
            let _ = process.child.kill().await;
            return;
        };
        match call(&mut process, &encoder, &job.inputs).await {
            Ok(result) => {
                let _ = job.reply.send(result);
            }
            Err(reason) => {
                let status = process.child.wait().await.ok();
                let message = format!(
                    "the python worker of model `{}` crashed while running this request ({}; {reason}); it is being restarted",
                    context.model,
                    describe_status(status)
                );
                tracing::error!(model = %context.model, "{message}");
                let _ = job.reply.send(Err(InferError::WorkerCrashed(message)));
                context.metrics.worker_restarted(&context.model);
                process = loop {
                    match spawn_worker(&context).await {
                        Ok((process, _)) => break process,
                        Err(e) => {
                            tracing::error!(model = %context.model, "cannot restart python worker: {e}");
                            if jobs.lock().await.is_closed() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
            }
        }
    }
}

/// Sends one batch; `Err` means the worker is gone.
async fn call(
    process: &mut WorkerProcess,
    encoder: &RequestEncoder,
    inputs: &NamedTensors,
) -> Result<Result<NamedTensors, InferError>, String> {
    process.next_id += 1;
    let id = process.next_id;
    let request = match encoder.encode(id, inputs) {
        Ok(request) => request,
        Err(message) => return Ok(Err(InferError::BadOutput(message))),
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    process
        .stdin
        .write_all(&line)
        .await
        .map_err(|e| format!("write: {e}"))?;
    process
        .stdin
        .flush()
        .await
        .map_err(|e| format!("write: {e}"))?;
    let answer = match process.stdout.next_line().await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err("its output closed".into()),
        Err(e) => return Err(format!("read: {e}")),
    };
    let answer: Value =
        serde_json::from_str(&answer).map_err(|_| format!("unexpected output `{answer}`"))?;
    if let Some(error) = answer.get("error") {
        return Ok(Err(InferError::Model(model_failure(error))));
    }
    let Some(outputs) = answer.get("outputs").and_then(Value::as_object) else {
        return Ok(Err(InferError::BadOutput(
            "the python worker answered without outputs".into(),
        )));
    };
    let rows = inputs.first().map_or(0, |(_, t)| t.rows());
    let mut result = Vec::with_capacity(outputs.len());
    for (name, output) in outputs {
        let tensor = match decode_output(name, output) {
            Ok(t) => t,
            Err(message) => return Ok(Err(InferError::BadOutput(message))),
        };
        if tensor.rows() != rows || tensor.shape.is_empty() {
            return Ok(Err(InferError::BadOutput(format!(
                "the model returned {} rows in output `{name}` for {rows} input rows",
                tensor.rows()
            ))));
        }
        result.push((name.clone(), tensor));
    }
    Ok(Ok(result))
}

/// Turns a batch into the worker's request line, in the form the model takes.
struct RequestEncoder {
    input: InputKind,
    /// Column names of a single 2-D input.
    feature_names: Option<Vec<String>>,
}

impl RequestEncoder {
    fn encode(&self, id: u64, inputs: &NamedTensors) -> Result<Value, String> {
        if self.input == InputKind::Arrays {
            let encoded: serde_json::Map<String, Value> = inputs
                .iter()
                .map(|(name, t)| {
                    (
                        name.clone(),
                        json!({"datatype": t.dtype().as_str(), "shape": t.shape, "data": t.flat_json()}),
                    )
                })
                .collect();
            return Ok(json!({"id": id, "inputs": encoded}));
        }
        let columns: Vec<Value> = self
            .columns(inputs)?
            .into_iter()
            .map(|(name, t)| json!([name, {"datatype": t.dtype().as_str(), "data": t.flat_json()}]))
            .collect();
        Ok(json!({"id": id, "columns": columns}))
    }

    /// The inputs as named columns: a 1-D (or `[N, 1]`) input is one column under its own name; the
    /// columns of a 2-D input are named by the model's feature names when it is the only input, else
    /// numbered (`0, 1, ...` for a single input, as `pandas.DataFrame(array)` does; `x_0, x_1, ...` for
    /// input `x` among several).
    fn columns(&self, inputs: &NamedTensors) -> Result<Vec<(Value, Tensor)>, String> {
        let single = inputs.len() == 1;
        let mut columns = Vec::new();
        for (name, tensor) in inputs {
            match tensor.shape.as_slice() {
                [] | [_] | [_, 1] => {
                    let rows = tensor.rows();
                    let mut column = tensor.clone();
                    column.shape = vec![rows];
                    columns.push((Value::String(name.clone()), column));
                }
                [_, width] => {
                    let names: Vec<Value> = match &self.feature_names {
                        Some(features) if single && features.len() == *width => {
                            features.iter().cloned().map(Value::String).collect()
                        }
                        _ if single => (0..*width).map(Value::from).collect(),
                        _ => (0..*width)
                            .map(|j| Value::String(format!("{name}_{j}")))
                            .collect(),
                    };
                    for (j, column_name) in names.into_iter().enumerate() {
                        columns.push((column_name, tensor.column(j)));
                    }
                }
                shape => {
                    return Err(format!(
                        "input `{name}` has shape {shape:?}; a model that takes a table takes 1-D or 2-D inputs"
                    ));
                }
            }
        }
        Ok(columns)
    }
}

fn decode_output(name: &str, output: &Value) -> Result<Tensor, String> {
    let field = format!("output `{name}`");
    if let Some(value) = output.get("value") {
        let (shape, flat) = flatten_json(value, &field).map_err(|e| e.message)?;
        let dtype = infer_dtype(&flat);
        let data = json_to_data(&flat, dtype, &field, true).map_err(|e| e.message)?;
        return Ok(Tensor { shape, data });
    }
    let dtype = output["datatype"]
        .as_str()
        .and_then(DataType::parse)
        .ok_or_else(|| format!("{field} has no datatype"))?;
    let shape: Vec<usize> = serde_json::from_value(output["shape"].clone())
        .map_err(|_| format!("{field} has no shape"))?;
    let flat: Vec<&Value> = output["data"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let data = json_to_data(&flat, dtype, &field, true).map_err(|e| e.message)?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "{field}: shape {shape:?} does not match {} values",
            data.len()
        ));
    }
    Ok(Tensor { shape, data })
}

/// `SIGNATURE = {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}` from predict.py, if declared.
fn parse_signature(declared: Option<&Value>) -> std::result::Result<Signature, String> {
    let Some(declared) = declared else {
        return Ok(Signature::default());
    };
    let specs = |key: &str| -> std::result::Result<Option<Vec<TensorSpec>>, String> {
        let Some(list) = declared.get(key) else {
            return Ok(None);
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("SIGNATURE[\"{key}\"] must be a list"))?;
        list.iter()
            .map(|spec| {
                let name = spec["name"].as_str().ok_or_else(|| format!("a SIGNATURE[\"{key}\"] entry has no `name`"))?;
                let dtype = spec["datatype"]
                    .as_str()
                    .and_then(DataType::parse)
                    .ok_or_else(|| format!("SIGNATURE entry `{name}` needs a `datatype` (FP32, FP64, INT64, INT32, BOOL or BYTES)"))?;
                let shape: Vec<i64> = serde_json::from_value(spec["shape"].clone()).map_err(|_| format!("SIGNATURE entry `{name}` needs a `shape` list"))?;
                Ok(TensorSpec { name: name.to_string(), dtype, shape })
            })
            .collect::<std::result::Result<Vec<_>, String>>()
            .map(Some)
    };
    let feature_names = declared
        .get("feature_names")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    Ok(Signature {
        inputs: specs("inputs")?,
        outputs: specs("outputs")?.unwrap_or_default(),
        feature_names,
        class_labels: None,
        probability_output: None,
    })
}
