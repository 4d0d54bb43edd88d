//! `predict.py` models: a pool of python worker processes speaking JSON lines over stdin/stdout.
//!
//! Each worker runs one batch at a time. A worker that dies fails the batch it was running with
//! [`InferError::WorkerCrashed`] and is replaced; the pool and the server stay up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::engine::{InferError, NamedTensors};
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

pub struct PythonEngine {
    jobs: mpsc::Sender<Job>,
    workers: usize,
    pub signature: Signature,
}

#[derive(Clone)]
struct WorkerContext {
    model: String,
    python: PathBuf,
    dir: PathBuf,
    metrics: Arc<Metrics>,
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
        dir: &Path,
        python: &Path,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<PythonEngine> {
        let context = WorkerContext {
            model: model.to_string(),
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
        let mut signature = None;
        for task in starting {
            let (process, declared) = task.await.map_err(|e| Error::PythonWorkerStart {
                model: model.to_string(),
                message: e.to_string(),
            })??;
            signature = declared;
            processes.push(process);
        }
        let signature =
            parse_signature(signature.as_ref()).map_err(|message| Error::PythonWorkerStart {
                model: model.to_string(),
                message,
            })?;
        let (jobs, receiver) = mpsc::channel::<Job>(1024);
        let receiver = Arc::new(Mutex::new(receiver));
        for process in processes {
            tokio::spawn(worker_loop(process, Arc::clone(&receiver), context.clone()));
        }
        Ok(PythonEngine {
            jobs,
            workers,
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

async fn spawn_worker(context: &WorkerContext) -> Result<(WorkerProcess, Option<Value>)> {
    let start_error = |message: String| Error::PythonWorkerStart {
        model: context.model.clone(),
        message,
    };
    let mut child = Command::new(&context.python)
        .arg("-u")
        .arg("-c")
        .arg(WORKER_SOURCE)
        .arg(&context.dir)
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
        return Err(start_error(
            hello["error"]
                .as_str()
                .unwrap_or("unknown error")
                .trim_end()
                .to_string(),
        ));
    }
    let signature = Some(hello["signature"].clone()).filter(|s| !s.is_null());
    Ok((
        WorkerProcess {
            child,
            stdin,
            stdout,
            next_id: 0,
        },
        signature,
    ))
}

fn describe_status(status: Option<std::process::ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_string(), |s| s.to_string())
}

async fn worker_loop(
    mut process: WorkerProcess,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    context: WorkerContext,
) {
    loop {
        let job = { jobs.lock().await.recv().await };
        let Some(job) = job else {
            // The model was unloaded or swapped: the pool drains, then its processes end.
            let _ = process.child.kill().await;
            return;
        };
        match call(&mut process, &job.inputs).await {
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
    inputs: &NamedTensors,
) -> Result<Result<NamedTensors, InferError>, String> {
    process.next_id += 1;
    let id = process.next_id;
    let encoded: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                json!({"datatype": t.dtype().as_str(), "shape": t.shape, "data": t.flat_json()}),
            )
        })
        .collect();
    let mut line =
        serde_json::to_vec(&json!({"id": id, "inputs": encoded})).map_err(|e| e.to_string())?;
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
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Ok(Err(InferError::Failed(format!(
            "predict.py raised: {}",
            error.trim_end()
        ))));
    }
    let Some(outputs) = answer.get("outputs").and_then(Value::as_object) else {
        return Ok(Err(InferError::Failed(
            "predict.py worker answered without outputs".into(),
        )));
    };
    let rows = inputs.first().map_or(0, |(_, t)| t.rows());
    let mut result = Vec::with_capacity(outputs.len());
    for (name, output) in outputs {
        let tensor = match decode_output(name, output) {
            Ok(t) => t,
            Err(message) => return Ok(Err(InferError::Failed(message))),
        };
        if tensor.rows() != rows || tensor.shape.is_empty() {
            return Ok(Err(InferError::Failed(format!(
                "predict.py returned {} rows in output `{name}` for {rows} input rows",
                tensor.rows()
            ))));
        }
        result.push((name.clone(), tensor));
    }
    Ok(Ok(result))
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
