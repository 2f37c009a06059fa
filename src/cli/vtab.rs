//! `ipa vtab`: the VTAB-1k protocol on SigLIP-2 (fit, train, evaluate every N epochs, keep the
//! best adapter).

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::Backend;
use burn_ipa::backend::BackendJob;
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::pipelines::trainer::Trainer;
use burn_ipa::pipelines::vtab::{
    run_vtab_with, VtabReport, VtabRunConfig, VtabRunOptions, BEST_ADAPTER_DIR,
};
use burn_ipa::train::Monitor;
use burn_ipa::Result;
use clap::Args;

use super::instruct::MethodArg;
use super::{exit_code, BackendArgs};

/// Options of `ipa vtab`. Unset options take the protocol's values ([`VtabRunConfig::new`]).
#[derive(Args, Debug, Clone)]
pub struct VtabCmd {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// SigLIP model folder: config.json, model.safetensors (or shards) and tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// VTAB-1k root holding one folder per task (train800val200.txt, test.txt, images).
    #[arg(long)]
    pub data_root: PathBuf,
    /// Task, named like its folder (cifar100, caltech101, dtd, ...).
    #[arg(long)]
    pub task: String,
    /// Output folder: vtab_config.json, metrics.csv, eval.csv, report.json, best_adapter/,
    /// checkpoints/.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder with tokenizer.json when it is not in --model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Split to train on [default: train800val200].
    #[arg(long)]
    pub train_split: Option<String>,
    /// Split to evaluate [default: test].
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Adapter method: ipa (fitted projector) or lora (random projector).
    #[arg(long, value_enum, default_value = "ipa")]
    pub method: MethodArg,
    /// Adapter rank r [default: 8].
    #[arg(long)]
    pub rank: Option<usize>,
    /// LoRA: scale the update by alpha / r [default: alpha = r, the official script's; the
    /// paper's text says 2r].
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// IPA: the update's scaling factor [default: 0.05, the official script's; the paper's
    /// text says 0.5].
    #[arg(long, allow_negative_numbers = true)]
    pub scaling: Option<f64>,
    /// Dropout on the adapter input [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    pub dropout: Option<f64>,
    /// Train the projector (true/false) [default: true, for ipa too: the official script's
    /// pre_ipca_requires_grad].
    #[arg(long)]
    pub train_projector: Option<bool>,
    /// Vision linears to adapt in every encoder layer, comma-separated (q_proj, k_proj,
    /// v_proj, fc1; lora also out_proj, fc2) [default: q_proj,v_proj].
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Fit algorithm for ipa: ipca, rsvd, gha, covariance [default: ipca].
    #[arg(long)]
    pub fit_algorithm: Option<String>,
    /// Fraction of the training images the fit reads, in file order [default: 1.0].
    #[arg(long, allow_negative_numbers = true)]
    pub fit_fraction: Option<f64>,
    /// Images per fit forward pass [default: 64].
    #[arg(long)]
    pub fit_batch_size: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long, allow_negative_numbers = true)]
    pub learning_rate: Option<f64>,
    /// AdamW weight decay [default: 0, HF Trainer's].
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Epochs [default: 100].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per optimizer step [default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Images per forward/backward pass; gradients of batch-size / micro-batch-size passes
    /// are accumulated [default: the batch size].
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Linear warm-up steps, then linear decay [default: 0, HF Trainer's].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Stop after this many optimizer steps (the schedule still spans every epoch).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Also checkpoint every N optimizer steps (0: at evaluations only) [default: 0].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Evaluate every N epochs, and after the last step (0: at the end only) [default: 10].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Images per evaluation forward pass [default: 64].
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Tokens per class prompt, padded [default: 64].
    #[arg(long)]
    pub text_len: Option<usize>,
    /// Seeds the data order, dropout, the fit and LoRA's projectors [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Clip the global gradient norm to this value; 0: no clipping [default: 1.0, HF
    /// Trainer's].
    #[arg(long, allow_negative_numbers = true)]
    pub max_grad_norm: Option<f64>,
    /// Training loop: `loop` (the crate's step loop, trained one evaluation interval at a
    /// time; --checkpoint-every adds checkpoints between evaluations) or `learner`
    /// (burn-train's SupervisedTraining and Learner: one burn-train epoch per evaluation
    /// interval with the evaluation split as its validation, checkpointed by its file
    /// checkpointer with the adapters only; a stop ends the run at its last evaluation).
    /// Both take the same steps: without dropout they train the same adapters.
    #[arg(long, value_enum, default_value = "loop")]
    pub trainer: Trainer,
    /// Continue from the latest intact checkpoint in --out (refused, naming what differs, if
    /// its settings, model or data changed).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace what --out holds (by default a non-empty folder is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Do not show progress bars.
    #[arg(long, conflicts_with = "tui")]
    pub quiet: bool,
    /// Show burn-train's terminal dashboard (plots of loss, learning rate, training and test
    /// accuracy) instead of progress bars; `q` offers to stop after a checkpoint. It keeps
    /// one CPU core busy redrawing.
    #[arg(long)]
    pub tui: bool,
    /// Set by [`VtabCmd::run`]: where progress goes.
    #[arg(skip)]
    pub monitor: Option<Monitor>,
}

impl VtabCmd {
    /// The run's settings: the protocol's, with what the options set.
    pub fn config(&self) -> Result<VtabRunConfig> {
        let mut c = VtabRunConfig::new(self.task.clone());
        if let Some(s) = &self.train_split {
            c.train_split = s.parse()?;
        }
        if let Some(s) = &self.eval_split {
            c.eval_split = s.parse()?;
        }
        c.method = self.method.into();
        set(&mut c.rank, self.rank);
        c.alpha = self.alpha;
        c.scaling = self.scaling;
        set(&mut c.dropout, self.dropout);
        c.train_projector = self.train_projector;
        set(&mut c.targets, self.targets.clone());
        set(&mut c.fit_algorithm, self.fit_algorithm.clone());
        set(&mut c.fit_fraction, self.fit_fraction);
        set(&mut c.fit_batch_size, self.fit_batch_size);
        let t = &mut c.train;
        set(&mut t.learning_rate, self.learning_rate);
        set(&mut t.weight_decay, self.weight_decay);
        set(&mut t.epochs, self.epochs);
        set(&mut t.batch_size, self.batch_size);
        t.micro_batch_size = self.micro_batch_size.unwrap_or(t.batch_size);
        set(&mut t.warmup_steps, self.warmup_steps);
        t.max_steps = self.max_steps;
        set(&mut t.checkpoint_every, self.checkpoint_every);
        set(&mut t.seed, self.seed);
        set(&mut t.max_grad_norm, self.max_grad_norm);
        set(&mut c.eval_every, self.eval_every);
        set(&mut c.eval_batch_size, self.eval_batch_size);
        set(&mut c.text_len, self.text_len);
        c.tokenizer = self.tokenizer.clone();
        c.trainer = self.trainer;
        c.validate()?;
        Ok(c)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

impl BackendJob for VtabCmd {
    type Output = VtabReport;
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Result<VtabReport> {
        let config = self.config()?;
        let options = VtabRunOptions {
            monitor: self.monitor.clone().unwrap_or_default(),
            existing: Existing::from_flags(self.resume, self.overwrite)?,
            class_ids: None,
        };
        run_vtab_with::<B>(
            &config,
            &self.model,
            &self.data_root,
            &self.out,
            &options,
            &device,
        )
    }
}

impl VtabCmd {
    /// `ipa vtab`: runs the protocol and prints the evaluations and the best; exits with 130
    /// when stopped on request.
    pub fn run(mut self) -> Result<ExitCode> {
        self.config()?;
        let start = std::time::Instant::now();
        let monitor = if self.tui {
            Monitor::dashboard()?
        } else {
            Monitor::bars_if(!self.quiet)
        };
        monitor.stop_on_ctrl_c()?;
        self.monitor = Some(monitor.clone());
        let backend = self.backend.clone();
        let out = self.out.clone();
        let report = backend.run(self);
        // Read before `finish`: burn-train's dashboard clears the request when training ends.
        let stopped = monitor.stop_requested();
        monitor.finish();
        // The last handle on a dashboard gives the terminal back before the report prints.
        drop(monitor);
        let report = report?;
        println!(
            "{}: {} r = {} on {} vision linears ({} trainable parameters); {} {} images, {} {} \
             images",
            report.task,
            report.method,
            report.adapter.rank,
            report.adapted.len(),
            report.trainable_params,
            report.train_images,
            report.train_split,
            report.eval_images,
            report.eval_split
        );
        println!(
            "| epoch | step | {} accuracy |\n|---:|---:|---:|",
            report.eval_split
        );
        for e in &report.evaluations {
            println!("| {} | {} | {:.2} |", e.epoch, e.step, 100.0 * e.accuracy);
        }
        if let Some(best) = &report.best {
            println!(
                "best: {:.2}% ({}/{}) at epoch {}; adapter in {}",
                100.0 * best.accuracy,
                best.correct,
                best.total,
                best.epoch,
                out.join(BEST_ADAPTER_DIR).display()
            );
        }
        println!(
            "{} steps, last loss {}, in {:.1}s on {}; metrics, evaluations and config in {}",
            report.steps,
            report
                .final_loss
                .map_or("-".to_string(), |l| format!("{l:.4}")),
            start.elapsed().as_secs_f64(),
            backend.backend.name(),
            out.display()
        );
        if stopped {
            println!(
                "stopped on request after step {}: the same command with --resume continues",
                report.steps
            );
        }
        Ok(exit_code(stopped))
    }
}
