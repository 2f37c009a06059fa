//! What a run shows while it trains, and how it is asked to stop.
//!
//! The training loop reports every optimizer step (loss, learning rate, accuracy where the
//! task classifies) and every validation to a [`Monitor`]. A monitor draws progress bars,
//! feeds any burn-train [`MetricsRenderer`] — burn-train's terminal dashboard
//! ([`Monitor::dashboard`], feature `tui`) or one of the caller's — or stays silent.
//!
//! It also carries burn-train's [`Interrupter`]: when the dashboard's "stop" is chosen, or
//! Ctrl-C is pressed where [`Monitor::stop_on_ctrl_c`] was called, the loop finishes the step
//! it is in, writes a checkpoint and returns, so `--resume` continues the run exactly.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::Progress;
use burn::train::metric::{
    MetricAttributes, MetricDefinition, MetricEntry, MetricId, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::renderer::{MetricState, MetricsRenderer, TrainingProgress};
use burn::train::Interrupter;

use super::checkpoint::StepRecord;
use crate::{Error, Result};

/// A metric the loop reports, with how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMetric {
    /// Mean loss of an optimizer step (train) or of a validation (valid).
    Loss,
    /// Learning rate of the step.
    LearningRate,
    /// Share of correct predictions, in percent.
    Accuracy,
}

impl RunMetric {
    const ALL: [RunMetric; 3] = [
        RunMetric::Loss,
        RunMetric::LearningRate,
        RunMetric::Accuracy,
    ];

    /// The name shown (and the id the renderer keys on).
    pub fn name(self) -> &'static str {
        match self {
            RunMetric::Loss => "Loss",
            RunMetric::LearningRate => "Learning Rate",
            RunMetric::Accuracy => "Accuracy",
        }
    }

    fn definition(self) -> MetricDefinition {
        let (unit, higher_is_better) = match self {
            RunMetric::Loss => (None, false),
            RunMetric::LearningRate => (None, false),
            RunMetric::Accuracy => (Some("%".to_string()), true),
        };
        MetricDefinition {
            metric_id: self.id(),
            name: self.name().to_string(),
            description: None,
            attributes: MetricAttributes::Numeric(NumericAttributes {
                unit,
                higher_is_better,
            }),
        }
    }

    fn id(self) -> MetricId {
        MetricId::new(Arc::new(self.name().to_string()))
    }

    fn state(self, value: f64) -> MetricState {
        let formatted = match self {
            RunMetric::Loss => format!("{value:.4}"),
            RunMetric::LearningRate => format!("{value:.3e}"),
            RunMetric::Accuracy => format!("{value:.2} %"),
        };
        let entry = MetricEntry::new(
            self.id(),
            SerializedEntry {
                formatted,
                serialized: value.to_string(),
            },
        );
        MetricState::Numeric(entry, NumericEntry::Value(value))
    }
}

/// A renderer shared between the monitor's clones.
pub(crate) type SharedRenderer = Arc<Mutex<Box<dyn MetricsRenderer>>>;

/// Where a run's progress goes: see the module documentation. Cloning shares the display, so
/// one monitor can follow several calls of the training loop (VTAB trains between
/// evaluations) and the evaluations in between.
#[derive(Clone, Default)]
pub struct Monitor {
    bars: bool,
    renderer: Option<SharedRenderer>,
    bar: Arc<Mutex<Option<indicatif::ProgressBar>>>,
    interrupter: Interrupter,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("bars", &self.bars)
            .field("renderer", &self.renderer.is_some())
            .field("stop_requested", &self.stop_requested())
            .finish()
    }
}

impl Monitor {
    /// Shows nothing.
    pub fn silent() -> Self {
        Self::default()
    }

    /// Progress bars on standard error (training steps with the running loss; fit and
    /// evaluation passes draw their own).
    pub fn bars() -> Self {
        Self {
            bars: true,
            ..Self::default()
        }
    }

    /// [`Monitor::bars`] when `show`, else [`Monitor::silent`].
    pub fn bars_if(show: bool) -> Self {
        if show {
            Self::bars()
        } else {
            Self::silent()
        }
    }

    /// Reports to a burn-train metrics renderer: train loss, learning rate and accuracy per
    /// optimizer step, validation loss and evaluation accuracy as the valid split.
    pub fn with_renderer(renderer: Box<dyn MetricsRenderer>) -> Self {
        Self::with_renderer_and_interrupter(renderer, Interrupter::new())
    }

    fn with_renderer_and_interrupter(
        mut renderer: Box<dyn MetricsRenderer>,
        interrupter: Interrupter,
    ) -> Self {
        for metric in RunMetric::ALL {
            renderer.register_metric(metric.definition());
        }
        Self {
            bars: false,
            renderer: Some(Arc::new(Mutex::new(renderer))),
            bar: Arc::default(),
            interrupter,
        }
    }

    /// burn-train's terminal dashboard: plots of the metrics, progress and ETA; `q` offers to
    /// stop (the loop checkpoints first). Needs standard output to be a terminal.
    ///
    /// burn-train 0.21's dashboard redraws from a thread that polls without pausing, so it
    /// keeps one CPU core busy: on a small CPU-only machine prefer [`Monitor::bars`].
    #[cfg(feature = "tui")]
    pub fn dashboard() -> Result<Self> {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() {
            return Err(Error::Config(
                "the dashboard (--tui) needs standard output to be a terminal".into(),
            ));
        }
        let interrupter = Interrupter::new();
        let renderer =
            burn::train::renderer::tui::TuiMetricsRendererWrapper::new(interrupter.clone(), None);
        Ok(Self::with_renderer_and_interrupter(
            Box::new(renderer),
            interrupter,
        ))
    }

    /// Without the `tui` feature there is no dashboard: an error that says so.
    #[cfg(not(feature = "tui"))]
    pub fn dashboard() -> Result<Self> {
        Err(Error::Config(
            "this build has no dashboard: rebuild with the `tui` feature".into(),
        ))
    }

    /// Makes Ctrl-C a stop request: the run checkpoints after the current step and returns
    /// (a second Ctrl-C exits at once, with status 130). Installs a process-wide handler; a
    /// second call (in the same process) keeps the first handler and returns an error.
    pub fn stop_on_ctrl_c(&self) -> Result<()> {
        let interrupter = self.interrupter.clone();
        ctrlc::set_handler(move || {
            if interrupter.should_stop() {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current training step (Ctrl-C again to quit at once)");
            interrupter.stop(Some("interrupted"));
        })
        .map_err(|e| Error::State(format!("cannot install the Ctrl-C handler: {e}")))
    }

    /// Asks the run to stop after its current step (as the dashboard's "stop" does).
    pub fn request_stop(&self) {
        self.interrupter.stop(Some("stop requested"));
    }

    /// The stop handle runs share (a Learner run stops through it).
    pub(crate) fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// The renderer (a dashboard), if the monitor has one.
    pub(crate) fn shared_renderer(&self) -> Option<SharedRenderer> {
        self.renderer.clone()
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.interrupter.should_stop()
    }

    /// Whether the stages around training (fit pass, evaluation) should draw progress bars:
    /// only when the monitor does — a dashboard owns the terminal.
    pub fn shows_bars(&self) -> bool {
        self.bars
    }

    /// The loop starts (or resumes) at optimizer step `start` of `run_steps`.
    pub(crate) fn begin(&self, start: usize, run_steps: usize) {
        if !self.bars {
            return;
        }
        let bar = styled_bar(
            run_steps,
            "train",
            "{prefix:>5} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} < {eta})",
        );
        bar.set_position(start as u64);
        *self.bar.lock().expect("monitor lock") = Some(bar);
    }

    /// An optimizer step is done; `steps_per_epoch` and `epochs` place it in the run.
    pub(crate) fn step(&self, record: &StepRecord, steps_per_epoch: usize, epochs: usize) {
        if let Some(bar) = self.bar.lock().expect("monitor lock").as_ref() {
            bar.set_position(record.step as u64);
            let accuracy = record
                .accuracy
                .map(|a| format!(", accuracy {:.1}%", 100.0 * a))
                .unwrap_or_default();
            bar.set_message(format!("loss {:.4}{accuracy}", record.loss));
        }
        if let Some(renderer) = &self.renderer {
            let mut renderer = renderer.lock().expect("monitor lock");
            renderer.update_train(RunMetric::Loss.state(record.loss));
            renderer.update_train(RunMetric::LearningRate.state(record.lr));
            if let Some(accuracy) = record.accuracy {
                renderer.update_train(RunMetric::Accuracy.state(100.0 * accuracy));
            }
            let in_epoch = (record.step - 1) % steps_per_epoch.max(1) + 1;
            renderer.render_train(
                TrainingProgress {
                    progress: Some(Progress {
                        items_processed: in_epoch,
                        items_total: steps_per_epoch,
                    }),
                    global_progress: Progress {
                        items_processed: record.epoch + 1,
                        items_total: epochs,
                    },
                    iteration: Some(record.step),
                },
                Vec::new(),
            );
        }
    }

    /// A validation or evaluation after optimizer step `step`: `metric` is its value (loss, or
    /// accuracy in percent).
    pub fn evaluated(&self, metric: RunMetric, value: f64, step: usize) {
        if let Some(renderer) = &self.renderer {
            let mut renderer = renderer.lock().expect("monitor lock");
            renderer.update_valid(metric.state(value));
            renderer.render_valid(
                TrainingProgress {
                    progress: None,
                    global_progress: Progress {
                        items_processed: 1,
                        items_total: 1,
                    },
                    iteration: Some(step),
                },
                Vec::new(),
            );
        }
    }

    /// The loop returns (done, stopped, or failed).
    pub(crate) fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("monitor lock").take() {
            bar.finish();
        }
    }

    /// The whole run is over: the renderer (a dashboard: the terminal) is released by the
    /// last clone's drop; this tells it training ended.
    pub fn finish(&self) {
        if let Some(renderer) = &self.renderer {
            let _ = renderer.lock().expect("monitor lock").on_train_end(None);
        }
    }
}

/// A progress bar on standard error in the crate's one style, with `template`'s fields.
pub(crate) fn styled_bar(len: usize, prefix: &str, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// A counting progress bar (fit and evaluation passes), or `None` when bars are off.
pub fn progress_bar(show: bool, len: usize, prefix: &str) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        styled_bar(
            len,
            prefix,
            "{prefix:>5} [{bar:30}] {pos}/{len} ({elapsed} < {eta})",
        )
    })
}
