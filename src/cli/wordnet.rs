//! `ipa wordnet-tasks`: instruction tasks from WordNet's definitions and hypernyms.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ipa::data::instruction::write_dataset;
use burn_ipa::data::wordnet::{Pos, WordNet};
use burn_ipa::data::wordnet_tasks::{
    build_tasks, DefinitionAnswer, Distractors, WordNetTasksConfig,
};
use burn_ipa::pipelines::out_dir::OutDir;
use burn_ipa::Result;
use clap::Args;

use super::OutArgs;

/// Options of `ipa wordnet-tasks`.
#[derive(Args, Debug, Clone)]
pub struct WordNetCmd {
    /// WordNet 3.0's dict folder (data.noun, cntlist.rev, ...; Debian's wordnet-base installs
    /// it as /usr/share/wordnet).
    #[arg(long, default_value = "/usr/share/wordnet")]
    pub wordnet: PathBuf,
    /// Seeds the split of the words, the options and their order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training questions per task.
    #[arg(long, default_value_t = 1000)]
    pub train_per_task: usize,
    /// Test questions per task.
    #[arg(long, default_value_t = 200)]
    pub test_per_task: usize,
    /// Keep word senses tagged at least this often in the Semantic Concordance (common words,
    /// which a small model may know).
    #[arg(long, default_value_t = 5)]
    pub min_count: u32,
    /// Share of the words held out for the test questions.
    #[arg(long, default_value_t = 0.25)]
    pub test_fraction: f64,
    /// Where wrong options come from: `near` (definition options from the answer's own
    /// lexicographer file, four animals or four foods; false hypernyms from any other word)
    /// or `far` (both from other lexicographer files: "is a dog a kind of beverage?"), which
    /// a small model's knowledge can decide.
    #[arg(long, value_enum, default_value = "near")]
    pub distractors: Distractors,
    /// How definition questions are answered: `index` (answer1..answer4, ARC's format in
    /// commonsense-170k) or `word` (the option's word; `ipa eval` reads it by the set of the
    /// test set's answer words), which a small model can learn from few examples.
    #[arg(long, value_enum, default_value = "index")]
    pub definition_answer: DefinitionAnswer,
    #[command(flatten)]
    pub out: OutArgs,
}

impl WordNetCmd {
    /// Writes `train.json`, `dataset/<task>/test.json` and `wordnet_tasks_config.json`.
    pub fn run(self) -> Result<ExitCode> {
        let config = WordNetTasksConfig {
            seed: self.seed,
            train_per_task: self.train_per_task,
            test_per_task: self.test_per_task,
            min_count: self.min_count,
            test_fraction: self.test_fraction,
            distractors: self.distractors,
            definition_answer: self.definition_answer,
        };
        let dir = OutDir::lock(&self.out.out, "ipa wordnet-tasks")?;
        dir.prepare(self.out.existing(), "a task set", false)?;
        let wn = WordNet::load(&self.wordnet, &[Pos::Noun])?;
        let tasks = build_tasks(&wn, &config)?;
        write_dataset(&self.out.out, &tasks.train, &tasks.tests)?;
        let record = serde_json::json!({
            "settings": config,
            "wordnet": self.wordnet.display().to_string(),
            "words": {"pool": tasks.pool[0], "train": tasks.pool[1], "test": tasks.pool[2]},
            "train_examples": tasks.train.len(),
            "test_examples": tasks.tests.iter().map(|(n, s)| (n.clone(), s.len())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        burn_ipa::adapter::write_atomic(
            &self.out.out.join("wordnet_tasks_config.json"),
            &serde_json::to_vec_pretty(&record).expect("json"),
        )?;
        println!(
            "{} words ({} for training, {} for testing): {} training questions in {}, test sets {}",
            tasks.pool[0],
            tasks.pool[1],
            tasks.pool[2],
            tasks.train.len(),
            self.out.out.join("train.json").display(),
            tasks
                .tests
                .iter()
                .map(|(n, s)| format!("{n} ({})", s.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(ExitCode::SUCCESS)
    }
}
