//! A sampled log of requests (inputs, outputs, model version, latency, request id, time) as JSON lines.
//!
//! Files are only appended to. `requests.jsonl` is rotated to `requests.1.jsonl` (and older ones shifted
//! up to `max_files`) before a line would make it exceed `max_file_bytes`, so the log is bounded at about
//! `(max_files + 1) * max_file_bytes`. Writing happens on a dedicated thread; when it falls behind,
//! entries are dropped and counted rather than slowing requests down.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde_json::Value;

use crate::config::RequestLogConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub const CURRENT_FILE: &str = "requests.jsonl";

pub struct RequestLog {
    entries: SyncSender<Value>,
    sample_rate: f64,
    metrics: Arc<Metrics>,
}

impl RequestLog {
    pub fn start(config: &RequestLogConfig, metrics: Arc<Metrics>) -> Result<RequestLog> {
        std::fs::create_dir_all(&config.dir).map_err(|source| Error::RequestLog {
            path: config.dir.clone(),
            source,
        })?;
        let (entries, receiver) = sync_channel(4096);
        let writer = Writer {
            dir: config.dir.clone(),
            max_file_bytes: config.max_file_bytes.max(1024),
            max_files: config.max_files,
            file: None,
            size: 0,
        };
        std::thread::Builder::new()
            .name("kiln-request-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok(RequestLog {
            entries,
            sample_rate: config.sample_rate.clamp(0.0, 1.0),
            metrics,
        })
    }

    /// Whether this request should be logged.
    pub fn sample(&self) -> bool {
        self.sample_rate >= 1.0
            || (self.sample_rate > 0.0 && rand::random::<f64>() < self.sample_rate)
    }

    pub fn record(&self, entry: Value) {
        if let Err(TrySendError::Full(_)) = self.entries.try_send(entry) {
            self.metrics.request_log_dropped();
        }
    }
}

struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl Writer {
    fn run(mut self, entries: Receiver<Value>) {
        while let Ok(entry) = entries.recv() {
            self.write(&entry);
            // Flush once the queue is empty, so bursts are written in few system calls.
            while let Ok(entry) = entries.try_recv() {
                self.write(&entry);
            }
            if let Some(file) = &mut self.file
                && let Err(e) = file.flush()
            {
                tracing::warn!("cannot write request log: {e}");
            }
        }
    }

    fn write(&mut self, entry: &Value) {
        let mut line = entry.to_string();
        line.push('\n');
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::warn!(dir = %self.dir.display(), "cannot write request log: {e}");
            self.file = None;
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let path = self.dir.join(CURRENT_FILE);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.size = file.metadata()?.len();
            self.file = Some(BufWriter::new(file));
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_file_bytes {
            self.rotate()?;
            return self.append(line);
        }
        if let Some(file) = &mut self.file {
            file.write_all(line)?;
        }
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        let numbered = |dir: &Path, n: usize| dir.join(format!("requests.{n}.jsonl"));
        if self.max_files == 0 {
            std::fs::remove_file(self.dir.join(CURRENT_FILE))?;
        } else {
            let _ = std::fs::remove_file(numbered(&self.dir, self.max_files));
            for n in (1..self.max_files).rev() {
                let from = numbered(&self.dir, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.dir, n + 1))?;
                }
            }
            std::fs::rename(self.dir.join(CURRENT_FILE), numbered(&self.dir, 1))?;
        }
        self.size = 0;
        Ok(())
    }
}
