//! Progress for people: a live view of the stages on a terminal, plain lines otherwise.
//! Everything here goes to stderr; stdout is kept for data (`--json`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use crate::printer::errln;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_pipeline::run::Failure;
use kiln_pipeline::{Event, Observer, Outcome};

/// Whether stderr may use colour (a terminal, and `NO_COLOR` unset).
pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Seconds with two decimals, or minutes past a minute.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        format!("{}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    } else {
        format!("{secs:.2}s")
    }
}

fn symbol(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ran => "✓",
        Outcome::Cached | Outcome::Restored => "·",
        Outcome::Failed(_) => "✗",
        Outcome::Cancelled | Outcome::NotRun => "-",
    }
}

/// Draws pipeline progress.
pub enum Progress {
    Live {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
        /// One line per environment being prepared: elapsed time and the installer's last line.
        environments: Mutex<HashMap<String, ProgressBar>>,
    },
    Plain,
    Quiet,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
                environments: Mutex::new(HashMap::new()),
            }
        } else {
            Progress::Plain
        }
    }

    /// A line above the live view (or a plain line).
    pub fn line(&self, text: &str) {
        match self {
            Progress::Live { multi, .. } => {
                let _ = multi.println(text);
            }
            Progress::Plain => errln!("{text}"),
            Progress::Quiet => {}
        }
    }

    /// The text after an environment's spinner (nothing without a terminal).
    fn environment_status(&self, model: &str, text: &str) {
        if let Progress::Live { environments, .. } = self
            && let Some(bar) = environments
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(model)
        {
            bar.set_message(text.to_string());
        }
    }

    fn finished_line(outcome: &Outcome, id: &str, elapsed: Duration) -> String {
        let what = match outcome {
            Outcome::Ran => format!("ran in {}", duration(elapsed)),
            Outcome::Cached => "cached (inputs unchanged)".to_string(),
            Outcome::Restored => "restored from the cache".to_string(),
            Outcome::Failed(Failure::Checks) => {
                format!("failed its data checks after {}", duration(elapsed))
            }
            Outcome::Failed(failure) => {
                format!("failed: {} after {}", failure.describe(), duration(elapsed))
            }
            Outcome::Cancelled => "cancelled".to_string(),
            Outcome::NotRun => "not run (an upstream stage did not succeed)".to_string(),
        };
        format!("{} {id}  {what}", symbol(outcome))
    }
}

impl Observer for Progress {
    fn on_event(&self, event: Event<'_>) {
        match (self, event) {
            (Progress::Quiet, _) => {}
            (_, Event::ParamWritten { write }) => self.line(&write.to_string()),
            (_, Event::Warning { message }) => self.line(&format!("warning: {message}")),
            (
                Progress::Live {
                    multi,
                    environments,
                    ..
                },
                Event::EnvironmentStarted { model },
            ) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix} {elapsed}  {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("python environment of `{model}`"));
                bar.set_message("checking");
                bar.enable_steady_tick(Duration::from_millis(120));
                environments
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(model.to_string(), bar);
            }
            (_, Event::EnvironmentStarted { model }) => self.line(&format!(
                "  preparing the python environment of `{model}`..."
            )),
            (_, Event::EnvironmentStep { model, step }) => {
                self.line(&format!("  {step}"));
                self.environment_status(model, step);
            }
            // Only on a terminal: without one, the installer's lines stay in its log.
            (_, Event::InstallerOutput { model, line }) => self.environment_status(model, line),
            (_, Event::EnvironmentReady { model, duration: d }) => {
                if let Progress::Live { environments, .. } = self
                    && let Some(bar) = environments
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(model)
                {
                    bar.finish_and_clear();
                }
                self.line(&format!(
                    "  python environment of `{model}` ready ({})",
                    duration(d)
                ));
            }
            (Progress::Live { multi, bars, .. }, Event::Planned { stages }) => {
                let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
                for id in stages {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("◦ {id}  waiting"));
                    bars.insert(id.to_string(), bar);
                }
            }
            (Progress::Plain, Event::Planned { stages }) => errln!(
                "{} stage{} to check",
                stages.len(),
                if stages.len() == 1 { "" } else { "s" }
            ),
            (Progress::Live { bars, .. }, Event::StageStarted { id }) => {
                if let Some(bar) = bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id.to_string())
                {
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("{id}  running"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
            }
            (Progress::Plain, Event::StageStarted { .. }) => {}
            (Progress::Live { bars, .. }, Event::StageFinished { report }) => {
                if let Some(bar) = bars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&report.id.to_string())
                {
                    bar.set_style(
                        ProgressStyle::with_template("{msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!(
                        "  {}",
                        Self::finished_line(
                            &report.outcome,
                            &report.id.to_string(),
                            report.duration
                        )
                    ));
                }
            }
            (_, Event::ServableCheckStarted { model }) => {
                self.line(&format!("  servable check of `{model}`..."))
            }
            (_, Event::ServableCheckFinished { model, result }) => self.line(&format!(
                "  servable check of `{model}` {}: {} ({})",
                if result.passed { "passed" } else { "FAILED" },
                result.message,
                duration(Duration::from_millis(result.duration_ms as u64))
            )),
            (Progress::Plain, Event::StageFinished { report }) => {
                errln!(
                    "{}",
                    Self::finished_line(&report.outcome, &report.id.to_string(), report.duration)
                );
            }
        }
    }
}
