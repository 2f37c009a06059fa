//! What a Learner run shows: the run's [`Monitor`] as a burn-train [`MetricsRenderer`] —
//! its dashboard (burn-train's own), a progress bar over the run's optimizer steps, or
//! nothing.

use std::sync::Arc;

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::LearnerSummary;

use super::loader::StepPlan;
use crate::train::monitor::{styled_bar, Monitor, SharedRenderer};

/// The renderer burn-train draws a run with: see the [module documentation](self).
pub(crate) fn learner_renderer(
    monitor: &Monitor,
    plan: &StepPlan,
    devices: usize,
    start_step: usize,
) -> Boxed {
    Boxed(choose(monitor, plan, devices, start_step))
}

fn choose(
    monitor: &Monitor,
    plan: &StepPlan,
    devices: usize,
    start_step: usize,
) -> Box<dyn MetricsRenderer> {
    if let Some(shared) = monitor.shared_renderer() {
        return Box::new(Shared(shared));
    }
    if monitor.shows_bars() {
        let bar = styled_bar(
            plan.run_steps,
            "train",
            "{prefix:>5} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} < {eta})",
        );
        bar.set_position(start_step as u64);
        return Box::new(Bar {
            bar,
            window_steps: plan.window_steps,
            run_steps: plan.run_steps,
            devices: devices.max(1),
            loss: None,
            accuracy: None,
        });
    }
    Box::new(Silent)
}

/// A boxed renderer as the concrete renderer type burn-train's builder takes.
pub(crate) struct Boxed(Box<dyn MetricsRenderer>);

impl MetricsRendererTraining for Boxed {
    fn update_train(&mut self, state: MetricState) {
        self.0.update_train(state)
    }
    fn update_valid(&mut self, state: MetricState) {
        self.0.update_valid(state)
    }
    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.0.render_train(item, progress)
    }
    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.0.render_valid(item, progress)
    }
    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.0.on_train_end(summary)
    }
}

impl MetricsRendererEvaluation for Boxed {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.0.update_test(name, state)
    }
    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        self.0.render_test(item, progress)
    }
}

impl MetricsRenderer for Boxed {
    fn manual_close(&mut self) {
        self.0.manual_close()
    }
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.0.register_metric(definition)
    }
}

/// The monitor's own renderer (the dashboard), shared with the rest of the run. The end of
/// training is the monitor's to announce ([`Monitor::finish`]), once the pipeline is done.
struct Shared(SharedRenderer);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Box<dyn MetricsRenderer>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl MetricsRendererTraining for Shared {
    fn update_train(&mut self, state: MetricState) {
        self.with(|r| r.update_train(state))
    }
    fn update_valid(&mut self, state: MetricState) {
        self.with(|r| r.update_valid(state))
    }
    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.with(|r| r.render_train(item, progress))
    }
    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.with(|r| r.render_valid(item, progress))
    }
    fn on_train_end(
        &mut self,
        _: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for Shared {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.with(|r| r.update_test(name, state))
    }
    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        self.with(|r| r.render_test(item, progress))
    }
}

impl MetricsRenderer for Shared {
    fn manual_close(&mut self) {
        self.with(|r| r.manual_close())
    }
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.with(|r| r.register_metric(definition))
    }
}

/// A progress bar over the run's optimizer steps with the latest loss (and accuracy).
struct Bar {
    bar: indicatif::ProgressBar,
    window_steps: usize,
    run_steps: usize,
    devices: usize,
    loss: Option<f64>,
    accuracy: Option<f64>,
}

/// The id of the metric named `name`.
fn metric_id(name: &str) -> MetricId {
    MetricId::new(Arc::new(name.to_string()))
}

impl MetricsRendererTraining for Bar {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            if entry.metric_id == metric_id(super::LossMetric::NAME) {
                self.loss = Some(value.current());
            } else if entry.metric_id == metric_id(super::AccuracyMetric::NAME) {
                self.accuracy = Some(value.current());
            }
        }
    }
    fn update_valid(&mut self, _: MetricState) {}
    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        let window = item.global_progress.items_processed.max(1);
        let in_window = item
            .progress
            .as_ref()
            .map_or(0, |p| p.items_processed / self.devices);
        let step = ((window - 1) * self.window_steps + in_window).min(self.run_steps);
        self.bar.set_position(step as u64);
        let accuracy = self
            .accuracy
            .map(|a| format!(", accuracy {a:.1}%"))
            .unwrap_or_default();
        if let Some(loss) = self.loss {
            self.bar.set_message(format!("loss {loss:.4}{accuracy}"));
        }
    }
    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn on_train_end(
        &mut self,
        _: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.bar.finish();
        Ok(())
    }
}

impl MetricsRendererEvaluation for Bar {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for Bar {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: MetricDefinition) {}
}

/// Shows nothing.
struct Silent;

impl MetricsRendererTraining for Silent {
    fn update_train(&mut self, _: MetricState) {}
    fn update_valid(&mut self, _: MetricState) {}
    fn render_train(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn on_train_end(
        &mut self,
        _: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for Silent {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for Silent {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: MetricDefinition) {}
}
