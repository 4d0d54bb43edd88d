//! Adaptive batching: concurrent requests for one model are run as one batch.
//!
//! A batch starts as soon as the engine has a free slot (an ONNX session or a python worker). It takes every
//! request already queued, up to `max_batch_size` rows, waiting at most `max_batch_delay` for more. Under
//! light load requests therefore run alone with no added latency; under heavy load they queue while the
//! engine is busy and are coalesced.
//!
//! ONNX sessions are each driven by a dedicated OS thread that pulls from the queue (inference never runs on
//! the async runtime, and a request costs two thread hand-offs). Python workers are async (pipes to
//! processes), so their slots are tokio tasks.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use crate::config::BatchConfig;
use crate::engine::onnx::OnnxEngine;
use crate::engine::python::PythonEngine;
use crate::engine::{Engine, InferError, NamedTensors};
use crate::metrics::ModelMetrics;
use crate::tensor::Tensor;

struct Job {
    inputs: NamedTensors,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<NamedTensors, InferError>>,
}

/// The queue in front of one loaded model. Dropping it lets the queued work finish, then stops the engine.
pub struct Batcher {
    jobs: crossbeam_channel::Sender<Job>,
}

impl Batcher {
    pub fn start(
        model: &str,
        engine: Arc<Engine>,
        config: BatchConfig,
        metrics: ModelMetrics,
    ) -> Batcher {
        let (jobs, receiver) = crossbeam_channel::bounded(config.max_queue.max(1));
        let gather = Gatherer { config, metrics };
        match &*engine {
            Engine::Onnx(onnx) => {
                for session in 0..onnx.parallelism() {
                    let (onnx, receiver, gather) =
                        (Arc::clone(onnx), receiver.clone(), gather.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("kiln-onnx-{model}-{session}"))
                        .spawn(move || session_thread(&onnx, session, &receiver, &gather));
                    if let Err(e) = spawned {
                        tracing::error!(model = %model, "cannot start an inference thread: {e}");
                    }
                }
            }
            Engine::Python(_) => {
                tokio::spawn(python_loop(engine, receiver, gather));
            }
        }
        Batcher { jobs }
    }

    /// Queues the request's rows and waits for its share of the batch's outputs.
    pub async fn submit(&self, inputs: NamedTensors) -> Result<NamedTensors, InferError> {
        let rows = inputs.first().map_or(1, |(_, t)| t.rows());
        let (reply, response) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        // Never blocks: a full queue is answered at once (503), a closed one means the model is going away.
        self.jobs.try_send(job).map_err(|error| match error {
            crossbeam_channel::TrySendError::Full(_) => InferError::Overloaded,
            crossbeam_channel::TrySendError::Disconnected(_) => InferError::ShuttingDown,
        })?;
        response.await.unwrap_or(Err(InferError::ShuttingDown))
    }
}

#[derive(Clone)]
struct Gatherer {
    config: BatchConfig,
    metrics: ModelMetrics,
}

/// Jobs that run as one batch, and their total rows.
struct Batch {
    jobs: Vec<Job>,
    rows: usize,
}

impl Gatherer {
    /// Adds queued jobs to `first` (blocking at most `max_batch_delay`). A job that does not fit is
    /// returned in `held_back` for the next batch.
    fn gather(
        &self,
        first: Job,
        receiver: &crossbeam_channel::Receiver<Job>,
        held_back: &mut Option<Job>,
    ) -> Batch {
        let max_rows = self.config.max_batch_size.max(1);
        let deadline = Instant::now() + self.config.max_batch_delay;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < max_rows {
            let next = match receiver.try_recv() {
                Ok(job) => job,
                Err(_) if self.config.max_batch_delay.is_zero() => break,
                Err(_) => match receiver.recv_deadline(deadline) {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if rows + next.rows > max_rows || !compatible(&jobs[0], &next) {
                *held_back = Some(next);
                break;
            }
            rows += next.rows;
            jobs.push(next);
        }
        Batch { jobs, rows }
    }

    fn started(&self, batch: &Batch) -> Instant {
        let now = Instant::now();
        for job in &batch.jobs {
            self.metrics
                .queue
                .observe((now - job.enqueued).as_secs_f64());
        }
        now
    }
}

fn compatible(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs
            .iter()
            .zip(&b.inputs)
            .all(|((na, ta), (nb, tb))| na == nb && ta.concatenable(tb))
}

fn session_thread(
    engine: &OnnxEngine,
    session: usize,
    receiver: &crossbeam_channel::Receiver<Job>,
    gather: &Gatherer,
) {
    let mut held_back = None;
    loop {
        let first = match held_back.take() {
            Some(job) => job,
            // Ends once the model is swapped out or unloaded and its queue is empty.
            None => match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut batch = gather.gather(first, receiver, &mut held_back);
        let started = gather.started(&batch);
        let inputs = take_inputs(&mut batch);
        let names = engine.signature.outputs.iter().map(|s| s.name.clone());
        let result = engine
            .run(
                session,
                &inputs.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
            )
            .map(|outputs| names.zip(outputs).collect());
        gather.metrics.batch_ran(batch.rows, started.elapsed());
        reply(batch, result);
    }
}

async fn python_loop(
    engine: Arc<Engine>,
    receiver: crossbeam_channel::Receiver<Job>,
    gather: Gatherer,
) {
    let Engine::Python(python) = &*engine else {
        return;
    };
    let slots = python.workers().max(1);
    let permits = Arc::new(Semaphore::new(slots));
    let mut held_back: Option<Job> = None;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        // Waiting on the crossbeam queue (and for `max_batch_delay`) would block the runtime: gather the
        // batch on a blocking thread.
        let (queue, gatherer, mut pending) = (receiver.clone(), gather.clone(), held_back.take());
        let gathered = tokio::task::spawn_blocking(move || {
            let first = match pending.take() {
                Some(job) => job,
                None => queue.recv().ok()?,
            };
            let batch = gatherer.gather(first, &queue, &mut pending);
            Some((batch, pending))
        })
        .await;
        let Ok(Some((mut batch, pending))) = gathered else {
            break;
        };
        held_back = pending;
        let (engine, gather) = (Arc::clone(&engine), gather.clone());
        tokio::spawn(async move {
            let Engine::Python(python) = &*engine else {
                return;
            };
            run_python_batch(python, &gather, &mut batch).await;
            drop(permit);
        });
    }
    // Wait for running batches before the engine is dropped.
    let _ = permits.acquire_many(slots as u32).await;
}

async fn run_python_batch(engine: &PythonEngine, gather: &Gatherer, batch: &mut Batch) {
    let started = gather.started(batch);
    let inputs = take_inputs(batch);
    let result = engine.infer(inputs).await;
    gather.metrics.batch_ran(batch.rows, started.elapsed());
    reply(
        std::mem::replace(
            batch,
            Batch {
                jobs: Vec::new(),
                rows: 0,
            },
        ),
        result,
    );
}

fn take_inputs(batch: &mut Batch) -> NamedTensors {
    let jobs = &mut batch.jobs;
    if jobs.len() == 1 {
        return std::mem::take(&mut jobs[0].inputs);
    }
    (0..jobs[0].inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = jobs.iter().map(|job| &job.inputs[i].1).collect();
            (jobs[0].inputs[i].0.clone(), Tensor::concat(&parts))
        })
        .collect()
}

fn reply(batch: Batch, result: Result<NamedTensors, InferError>) {
    let Batch { mut jobs, rows } = batch;
    match result {
        Ok(outputs) if jobs.len() == 1 => {
            if let Some(job) = jobs.pop() {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Ok(outputs) => {
            if let Some((name, bad)) = outputs
                .iter()
                .find(|(_, t)| t.rows() != rows || t.shape.is_empty())
            {
                let error = InferError::BadOutput(format!(
                    "model output `{name}` has {} rows for a batch of {rows}",
                    bad.rows()
                ));
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
            let counts: Vec<usize> = jobs.iter().map(|job| job.rows).collect();
            let mut split: Vec<(String, std::vec::IntoIter<Tensor>)> = outputs
                .into_iter()
                .map(|(name, tensor)| (name, tensor.split_rows(&counts).into_iter()))
                .collect();
            for job in jobs {
                let share: NamedTensors = split
                    .iter_mut()
                    .filter_map(|(name, parts)| parts.next().map(|t| (name.clone(), t)))
                    .collect();
                let _ = job.reply.send(Ok(share));
            }
        }
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
