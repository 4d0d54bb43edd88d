//! Every Prometheus metric the server exports, declared here and nowhere else.
//!
//! Names carry their unit (`_seconds`, `_bytes`); labels are bounded: model names come from the server's
//! configuration (requests for unknown models are counted under `model=""`), versions are the registry's
//! version numbers (`ModelConfig::version_file`) or else load counters, statuses are HTTP status codes.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    pub model: String,
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0,
    ])
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<ModelLabels>,
    queue_duration: HistogramFamily<ModelLabels>,
    inference_duration: HistogramFamily<ModelLabels>,
    batch_rows: HistogramFamily<ModelLabels>,
    in_flight: Family<ModelLabels, Gauge>,
    model_load_duration: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    model_loads: Family<LoadLabels, Counter>,
    worker_restarts: Family<ModelLabels, Counter>,
    request_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "kiln_requests",
            "Prediction requests by model, model version and HTTP status",
            requests.clone(),
        );
        let mut latency = |name: &str, help: &str| {
            let family: HistogramFamily<ModelLabels> =
                Family::new_with_constructor(latency_histogram);
            registry.register_with_unit(name, help, Unit::Seconds, family.clone());
            family
        };
        let request_duration = latency(
            "kiln_request_duration",
            "Time from receiving a prediction request to sending its response",
        );
        let queue_duration = latency(
            "kiln_queue_duration",
            "Time a request waited for its batch to start",
        );
        let inference_duration = latency(
            "kiln_inference_duration",
            "Time the model took to run one batch",
        );
        let batch_rows: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(batch_histogram);
        registry.register(
            "kiln_batch_rows",
            "Rows in each batch run by the model",
            batch_rows.clone(),
        );
        let in_flight = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "kiln_requests_in_flight",
            "Prediction requests being processed",
            in_flight.clone(),
        );
        let model_load_duration = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "kiln_model_load_duration",
            "Time the last successful load of the model took",
            Unit::Seconds,
            model_load_duration.clone(),
        );
        let model_loads = Family::<LoadLabels, Counter>::default();
        registry.register(
            "kiln_model_loads",
            "Model loads and reloads by result (`ok` or `error`)",
            model_loads.clone(),
        );
        let worker_restarts = Family::<ModelLabels, Counter>::default();
        registry.register(
            "kiln_worker_restarts",
            "predict.py worker processes replaced after a crash",
            worker_restarts.clone(),
        );
        let request_log_dropped = Counter::default();
        registry.register(
            "kiln_request_log_dropped",
            "Sampled requests not logged because the log writer fell behind",
            request_log_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            queue_duration,
            inference_duration,
            batch_rows,
            in_flight,
            model_load_duration,
            model_loads,
            worker_restarts,
            request_log_dropped,
        }
    }

    /// Handles on one model version's series, so the request path does no label lookups.
    pub fn for_model(&self, model: &str, version: &str) -> ModelMetrics {
        let labels = Self::model(model);
        ModelMetrics {
            queue: self.queue_duration.get_or_create(&labels).clone(),
            inference: self.inference_duration.get_or_create(&labels).clone(),
            batch_rows: self.batch_rows.get_or_create(&labels).clone(),
            request_duration: self.request_duration.get_or_create(&labels).clone(),
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            ok: self
                .requests
                .get_or_create(&RequestLabels {
                    model: model.to_string(),
                    version: version.to_string(),
                    status: 200,
                })
                .clone(),
            model: model.to_string(),
            version: version.to_string(),
        }
    }

    fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    pub fn request_done(&self, model: &str, version: &str, status: u16, total: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                version: version.to_string(),
                status,
            })
            .inc();
        if !model.is_empty() {
            self.request_duration
                .get_or_create(&Self::model(model))
                .observe(total.as_secs_f64());
        }
    }

    pub fn batch_ran(&self, model: &str, rows: usize, inference: Duration) {
        let labels = Self::model(model);
        self.batch_rows.get_or_create(&labels).observe(rows as f64);
        self.inference_duration
            .get_or_create(&labels)
            .observe(inference.as_secs_f64());
    }

    pub fn queued(&self, model: &str, waited: Duration) {
        self.queue_duration
            .get_or_create(&Self::model(model))
            .observe(waited.as_secs_f64());
    }

    pub fn in_flight(&self, model: &str) -> Gauge {
        self.in_flight.get_or_create(&Self::model(model)).clone()
    }

    pub fn model_loaded(&self, model: &str, took: Duration) {
        self.model_load_duration
            .get_or_create(&Self::model(model))
            .set(took.as_secs_f64());
        self.model_loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "ok",
            })
            .inc();
    }

    pub fn model_load_failed(&self, model: &str) {
        self.model_loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "error",
            })
            .inc();
    }

    pub fn worker_restarted(&self, model: &str) {
        self.worker_restarts
            .get_or_create(&Self::model(model))
            .inc();
    }

    pub fn request_log_dropped(&self) {
        self.request_log_dropped.inc();
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for OpenMetrics
    /// (`curl`, `promtool check metrics`): counter families are named with their `_total` suffix, and the
    /// OpenMetrics-only `# UNIT` and `# EOF` lines are left out.
    pub fn encode_prometheus_text(&self) -> String {
        let openmetrics = self.encode();
        let counters: std::collections::HashSet<&str> = openmetrics
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(openmetrics.len());
        for line in openmetrics.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One loaded model version's series (cheap to clone: every metric is an `Arc` inside).
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue: Histogram,
    pub inference: Histogram,
    pub batch_rows: Histogram,
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    ok: Counter,
    model: String,
    version: String,
}

impl ModelMetrics {
    pub fn request_done(&self, metrics: &Metrics, status: u16, total: Duration) {
        if status == 200 {
            self.ok.inc();
        } else {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    model: self.model.clone(),
                    version: self.version.clone(),
                    status,
                })
                .inc();
        }
        self.request_duration.observe(total.as_secs_f64());
    }

    pub fn batch_ran(&self, rows: usize, inference: Duration) {
        self.batch_rows.observe(rows as f64);
        self.inference.observe(inference.as_secs_f64());
    }
}
