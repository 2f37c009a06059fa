//! The eight commonsense reasoning tasks of LLM-Adapters and how answers are read from
//! generated text: the first occurrence of one of the task's answer words, as
//! `commonsense_evaluate.py` does it (case-sensitive).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Error, Result};

/// A commonsense test set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Task {
    /// BoolQ: `true` / `false`.
    BoolQ,
    /// PIQA: `solution1` / `solution2`.
    Piqa,
    /// Social IQa: `answer1..answer5`.
    SocialIqa,
    /// HellaSwag: `ending1..ending4`.
    HellaSwag,
    /// WinoGrande: `option1` / `option2`.
    WinoGrande,
    /// ARC-Easy: `answer1..answer5`.
    ArcEasy,
    /// ARC-Challenge: `answer1..answer5`.
    ArcChallenge,
    /// OpenBookQA: `answer1..answer5`.
    OpenBookQa,
}

impl Task {
    /// All eight, in the paper's table order.
    pub const ALL: [Task; 8] = [
        Task::BoolQ,
        Task::Piqa,
        Task::SocialIqa,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
    ];

    /// The dataset folder name of LLM-Adapters (`dataset/<name>/test.json`).
    pub fn dataset_name(&self) -> &'static str {
        match self {
            Task::BoolQ => "boolq",
            Task::Piqa => "piqa",
            Task::SocialIqa => "social_i_qa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
            Task::ArcEasy => "ARC-Easy",
            Task::ArcChallenge => "ARC-Challenge",
            Task::OpenBookQa => "openbookqa",
        }
    }

    /// Parses a dataset folder name.
    pub fn from_name(name: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.dataset_name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown task `{name}` (expected one of {})",
                    Task::ALL.map(|t| t.dataset_name()).join(", ")
                ))
            })
    }

    /// The answer words the task's outputs use.
    pub fn answer_words(&self) -> &'static [&'static str] {
        match self {
            Task::BoolQ => &["true", "false"],
            Task::Piqa => &["solution1", "solution2"],
            Task::SocialIqa | Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => {
                &["answer1", "answer2", "answer3", "answer4", "answer5"]
            }
            Task::HellaSwag => &["ending1", "ending2", "ending3", "ending4"],
            Task::WinoGrande => &["option1", "option2"],
        }
    }

    /// The first answer word in `text`, or `None` when there is none.
    pub fn extract_answer(&self, text: &str) -> Option<&'static str> {
        let text = text.trim();
        self.answer_words()
            .iter()
            .filter_map(|w| text.find(w).map(|pos| (pos, *w)))
            .min_by_key(|(pos, _)| *pos)
            .map(|(_, w)| w)
    }
}

/// Correct and total counts per task.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Accuracy {
    /// `(correct, total)` per task.
    pub per_task: BTreeMap<Task, (usize, usize)>,
}

impl Accuracy {
    /// Records one prediction.
    pub fn record(&mut self, task: Task, predicted: Option<&str>, answer: &str) {
        let entry = self.per_task.entry(task).or_insert((0, 0));
        entry.1 += 1;
        if predicted == Some(answer) {
            entry.0 += 1;
        }
    }

    /// Accuracy of one task in [0, 1].
    pub fn of(&self, task: Task) -> Option<f64> {
        self.per_task
            .get(&task)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| *c as f64 / *n as f64)
    }

    /// Mean of the per-task accuracies (the paper's "Avg.").
    pub fn average(&self) -> Option<f64> {
        let accs: Vec<f64> = self.per_task.keys().filter_map(|t| self.of(*t)).collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }
}
