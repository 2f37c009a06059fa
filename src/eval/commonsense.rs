//! The eight commonsense reasoning tasks of LLM-Adapters and how answers are read from
//! generated text: the first occurrence of one of the task's answer words, as
//! `commonsense_evaluate.py` does it (case-sensitive).

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

/// The first position of `word` in `text` not inside a longer word (a task's own answer
/// words can be any words: `cat` must not be read out of "category").
fn find_whole_word(text: &str, word: &str) -> Option<usize> {
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).map(|(pos, _)| pos).find(|&pos| {
        let before = text[..pos].chars().next_back();
        let after = text[pos + word.len()..].chars().next();
        let alnum_edge = |c: Option<char>, edge: Option<char>| {
            matches!((c, edge), (Some(c), Some(e)) if is_word_char(c) && is_word_char(e))
        };
        !alnum_edge(before, word.chars().next()) && !alnum_edge(after, word.chars().next_back())
    })
}

/// How a task's answer is read from generated text: the first (leftmost) match of one of its
/// answer words (as a whole word), or of a regular expression.
#[derive(Clone, Debug)]
pub enum AnswerFormat {
    /// Answer words, matched as whole words (`cat` is not read out of "category"; a word
    /// that starts or ends with punctuation matches there as it is); at one position the
    /// longest wins.
    Words(Vec<String>),
    /// A regular expression (its leftmost match is the answer), e.g. `answer[1-4]`.
    Pattern(regex::Regex),
}

impl AnswerFormat {
    /// The first answer in `text`.
    pub fn extract<'t>(&self, text: &'t str) -> Option<&'t str> {
        let text = text.trim();
        match self {
            AnswerFormat::Words(words) => words
                .iter()
                .filter_map(|w| find_whole_word(text, w).map(|pos| (pos, w.len())))
                .min_by_key(|&(pos, len)| (pos, std::cmp::Reverse(len)))
                .map(|(pos, len)| &text[pos..pos + len]),
            AnswerFormat::Pattern(re) => re.find(text).map(|m| m.as_str()),
        }
    }
}

/// A task to evaluate: a name (its folder under the data dir) and how its answers read. The
/// eight commonsense tasks have their official answer words; any other task folder takes the
/// set of `answer` values of its own test data, or a pattern.
#[derive(Clone, Debug)]
pub struct EvalTask {
    /// The folder name, e.g. `boolq` or `wordnet_definitions`.
    pub name: String,
    /// How answers are read.
    pub format: AnswerFormat,
}

impl EvalTask {
    /// One of the eight commonsense tasks, with its official answer words.
    pub fn builtin(task: Task) -> Self {
        Self {
            name: task.dataset_name().to_string(),
            format: AnswerFormat::Words(
                task.answer_words().iter().map(|w| w.to_string()).collect(),
            ),
        }
    }

    /// A task whose answer words are the distinct `answers` of its data (an error names the
    /// task when there are none).
    pub fn from_answers<'a>(
        name: &str,
        answers: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        let mut words: Vec<String> = answers
            .into_iter()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        words.sort();
        words.dedup();
        if words.is_empty() {
            return Err(Error::Config(format!(
                "task `{name}`: its test data has no `answer` values to read answers by; give \
                 --answer-pattern"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            format: AnswerFormat::Words(words),
        })
    }

    /// A task whose answers are the leftmost match of `pattern`.
    pub fn with_pattern(name: &str, pattern: &str) -> Result<Self> {
        let re = regex::Regex::new(pattern)
            .map_err(|e| Error::Config(format!("--answer-pattern `{pattern}`: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            format: AnswerFormat::Pattern(re),
        })
    }

    /// The first answer in `text`.
    pub fn extract_answer<'t>(&self, text: &'t str) -> Option<&'t str> {
        self.format.extract(text)
    }
}

/// Correct and total counts per task, in the order tasks were first recorded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Accuracy {
    /// `(task, correct, total)`.
    pub per_task: Vec<(String, usize, usize)>,
}

impl Accuracy {
    /// Records one prediction.
    pub fn record(&mut self, task: &str, predicted: Option<&str>, answer: &str) {
        let at = match self.per_task.iter().position(|(t, _, _)| t == task) {
            Some(at) => at,
            None => {
                self.per_task.push((task.to_string(), 0, 0));
                self.per_task.len() - 1
            }
        };
        let entry = &mut self.per_task[at];
        entry.2 += 1;
        if predicted == Some(answer.trim()) {
            entry.1 += 1;
        }
    }

    /// Accuracy of one task in [0, 1].
    pub fn of(&self, task: &str) -> Option<f64> {
        self.per_task
            .iter()
            .find(|(t, _, n)| t == task && *n > 0)
            .map(|(_, c, n)| *c as f64 / *n as f64)
    }

    /// Mean of the per-task accuracies (the paper's "Avg.").
    pub fn average(&self) -> Option<f64> {
        let accs: Vec<f64> = self
            .per_task
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(_, c, n)| *c as f64 / *n as f64)
            .collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }
}
