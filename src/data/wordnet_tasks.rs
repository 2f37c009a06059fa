//! Two instruction tasks built from WordNet's human-written definitions and hypernyms, in the
//! commonsense-170k format, for trying methods on real data offline:
//!
//! * `wordnet_definitions` (ARC style): "which word means «definition»?" with four words of
//!   the same lexicographer file (`noun.animal`, `noun.food`, ...) as options, so the
//!   distractors are plausible (or of other files: [`Distractors::Far`]); answers
//!   `answer1..answer4`, each position equally often (or the word: [`DefinitionAnswer::Word`]);
//! * `wordnet_hypernyms` (BoolQ style): "is a «word» a kind of «word»?", true for one of the
//!   word's hypernyms (transitively), false for a hypernym of another word that is not one of
//!   its own; answers `true`/`false`, balanced.
//!
//! Words are nouns whose sense is common (tagged at least `min_count` times in the Semantic
//! Concordance, `cntlist.rev`) and single lowercase words; each word keeps its most common
//! sense. The words are split before any question is made: a test question's word and its
//! options are test words, never the subject or an option of a training question (the
//! category words of the hypernym questions, such as "animal", are shared, and a test word may
//! occur inside a training definition's text). Everything follows from the seed.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::instruction::InstructionExample;
use super::wordnet::{Pos, Synset, WordNet};
use crate::{Error, Result};

/// The definitions task's folder name.
pub const DEFINITIONS: &str = "wordnet_definitions";
/// The hypernyms task's folder name.
pub const HYPERNYMS: &str = "wordnet_hypernyms";

/// Where wrong options come from.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Distractors {
    /// Definition options from the answer's own lexicographer file (four animals, four
    /// foods), false hypernyms from any other word: plausible, hard for a small model.
    #[default]
    Near,
    /// Both from words of other lexicographer files (an animal among a food, a feeling and
    /// a place; "is a dog a kind of beverage?"): a small model's knowledge can decide them.
    Far,
}

/// How a definition question is answered.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DefinitionAnswer {
    /// The option's number, `answer1..answer4` (ARC's format in commonsense-170k): the model
    /// must map the word it recognises to its position.
    #[default]
    Index,
    /// The option's word itself ("the correct answer is mountain"), read back by the set of
    /// the test set's answer words: the model only has to pick and copy it.
    Word,
}

/// Settings of the task builder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordNetTasksConfig {
    /// Seeds the split, the options and their order.
    pub seed: u64,
    /// Training questions per task (at most the training synsets available).
    pub train_per_task: usize,
    /// Test questions per task.
    pub test_per_task: usize,
    /// A word's sense must have been tagged at least this often in the Semantic Concordance.
    pub min_count: u32,
    /// Share of the word pool held out for the test questions.
    pub test_fraction: f64,
    /// Where wrong options come from.
    #[serde(default)]
    pub distractors: Distractors,
    /// How definition questions are answered.
    #[serde(default)]
    pub definition_answer: DefinitionAnswer,
}

impl Default for WordNetTasksConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train_per_task: 1000,
            test_per_task: 200,
            min_count: 5,
            test_fraction: 0.25,
            distractors: Distractors::Near,
            definition_answer: DefinitionAnswer::Index,
        }
    }
}

/// What [`build_tasks`] made.
#[derive(Clone, Debug)]
pub struct WordNetTasks {
    /// Training questions of both tasks, shuffled together.
    pub train: Vec<InstructionExample>,
    /// Test questions per task folder name.
    pub tests: Vec<(String, Vec<InstructionExample>)>,
    /// Words in the pool, the training part and the test part.
    pub pool: [usize; 3],
}

/// A word of the pool: its synset and its most common sense's count.
#[derive(Clone, Copy)]
struct Entry<'a> {
    synset: &'a Synset,
    count: u32,
}

fn is_plain_word(word: &str) -> bool {
    word.len() >= 3 && word.chars().all(|c| c.is_ascii_lowercase())
}

/// Whether `text` contains `word` as a whole word (case-insensitive).
fn mentions(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word || w.strip_suffix('s') == Some(word))
}

/// The nouns that questions may ask about, one entry per word (its most common sense).
fn word_pool(wn: &WordNet, min_count: u32) -> Vec<Entry<'_>> {
    let mut best: BTreeMap<&str, Entry<'_>> = BTreeMap::new();
    for synset in wn.synsets(Pos::Noun) {
        let Some((word, _)) = synset.words.first() else {
            continue;
        };
        let count = wn.sense_count(synset, 0);
        if !is_plain_word(word) || count < min_count || synset.definition().is_empty() {
            continue;
        }
        if mentions(synset.definition(), word) {
            continue;
        }
        let better = best.get(word.as_str()).is_none_or(|e| count > e.count);
        if better {
            best.insert(word, Entry { synset, count });
        }
    }
    best.into_values().collect()
}

fn word_of(s: &Synset) -> &str {
    &s.words[0].0
}

/// What every reply says before its answer (LLM-Adapters' format).
const REPLY_PREFIX: &str = "the correct answer is";

fn example(instruction: String, answer: &str) -> InstructionExample {
    InstructionExample {
        instruction,
        input: String::new(),
        output: format!("{REPLY_PREFIX} {answer}"),
        answer: answer.to_string(),
    }
}

/// Whether `other` may give a wrong option for a question about `target`.
fn may_distract(target: &Synset, other: &Synset, distractors: Distractors) -> bool {
    match distractors {
        Distractors::Near => true,
        Distractors::Far => other.lex_filenum != target.lex_filenum,
    }
}

/// Definition questions about `targets`, distractors drawn from `pool` (of the same
/// lexicographer file when near, of others when far), the correct option's position cycling
/// through 1..4.
fn definition_questions(
    targets: &[Entry<'_>],
    pool: &[Entry<'_>],
    n: usize,
    distractors: Distractors,
    answer: DefinitionAnswer,
    rng: &mut StdRng,
) -> Vec<InstructionExample> {
    let mut out = Vec::new();
    for e in targets {
        if out.len() == n {
            break;
        }
        let word = word_of(e.synset);
        let definition = e.synset.definition();
        let mut others: Vec<&str> = pool
            .iter()
            .filter(|o| {
                let same_file = o.synset.lex_filenum == e.synset.lex_filenum;
                (same_file == (distractors == Distractors::Near))
                    && word_of(o.synset) != word
                    && !mentions(definition, word_of(o.synset))
            })
            .map(|o| word_of(o.synset))
            .collect();
        if others.len() < 3 {
            continue;
        }
        others.shuffle(rng);
        let at = out.len() % 4;
        let mut options: Vec<&str> = others[..3].to_vec();
        options.insert(at, word);
        let (format, reply) = match answer {
            DefinitionAnswer::Index => (
                "answer1/answer2/answer3/answer4".to_string(),
                ["answer1", "answer2", "answer3", "answer4"][at],
            ),
            DefinitionAnswer::Word => (options.join("/"), word),
        };
        out.push(example(
            format!(
                "Please choose the correct answer to the question: which word means \"{definition}\"?\n\nAnswer1: {}\n\nAnswer2: {}\n\nAnswer3: {}\n\nAnswer4: {}\n\nAnswer format: {format}",
                options[0], options[1], options[2], options[3]
            ),
            reply,
        ));
    }
    out
}

/// Plain-word hypernyms of `synset`, nearest first.
fn hypernym_words<'a>(wn: &'a WordNet, synset: &Synset) -> Vec<&'a str> {
    wn.ancestors(synset)
        .into_iter()
        .map(word_of)
        .filter(|w| is_plain_word(w))
        .collect()
}

/// Hypernym questions about `targets`, true and false alternating; false ones take a
/// hypernym of another word of `pool` (of another lexicographer file when far) that is not
/// one of the target's.
fn hypernym_questions(
    wn: &WordNet,
    targets: &[Entry<'_>],
    pool: &[Entry<'_>],
    n: usize,
    distractors: Distractors,
    rng: &mut StdRng,
) -> Vec<InstructionExample> {
    let mut out = Vec::new();
    for e in targets {
        if out.len() == n {
            break;
        }
        let word = word_of(e.synset);
        let own = hypernym_words(wn, e.synset);
        if own.is_empty() {
            continue;
        }
        let truth = out.len() % 2 == 0;
        let other = if truth {
            // One of the three nearest: the distant ones ("entity") are trivially true.
            let near = &own[..own.len().min(3)];
            near.choose(rng).copied()
        } else {
            let mut candidates: Vec<&str> = pool
                .iter()
                .filter(|o| {
                    word_of(o.synset) != word && may_distract(e.synset, o.synset, distractors)
                })
                .flat_map(|o| hypernym_words(wn, o.synset).into_iter().take(3))
                .filter(|w| *w != word && !own.contains(w))
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            candidates.choose(rng).copied()
        };
        let Some(other) = other else {
            continue;
        };
        out.push(example(
            format!(
                "Please answer the following question with true or false, question: is a {word} a kind of {other}?\n\nAnswer format: true/false"
            ),
            if truth { "true" } else { "false" },
        ));
    }
    out
}

/// Builds both tasks from `wn` (which must hold the nouns) as `config` says.
pub fn build_tasks(wn: &WordNet, config: &WordNetTasksConfig) -> Result<WordNetTasks> {
    if !(config.test_fraction > 0.0 && config.test_fraction < 1.0) {
        return Err(Error::Config(format!(
            "test_fraction must be in (0, 1), got {}",
            config.test_fraction
        )));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut pool = word_pool(wn, config.min_count);
    if config.definition_answer == DefinitionAnswer::Word {
        // An answer word inside the reply's own text would be read before the answer.
        pool.retain(|e| !REPLY_PREFIX.split(' ').any(|w| w == word_of(e.synset)));
    }
    pool.shuffle(&mut rng);
    let n_test = ((pool.len() as f64) * config.test_fraction).round() as usize;
    let (test_pool, train_pool) = pool.split_at(n_test);

    let mut train = Vec::new();
    let mut tests = Vec::new();
    let (d, a) = (config.distractors, config.definition_answer);
    let definitions_train = definition_questions(
        train_pool,
        train_pool,
        config.train_per_task,
        d,
        a,
        &mut rng,
    );
    let definitions_test =
        definition_questions(test_pool, test_pool, config.test_per_task, d, a, &mut rng);
    let hypernyms_train = hypernym_questions(
        wn,
        train_pool,
        train_pool,
        config.train_per_task,
        d,
        &mut rng,
    );
    let hypernyms_test =
        hypernym_questions(wn, test_pool, test_pool, config.test_per_task, d, &mut rng);
    for (name, set, want) in [
        (DEFINITIONS, &definitions_test, config.test_per_task),
        (HYPERNYMS, &hypernyms_test, config.test_per_task),
    ] {
        if set.len() < want {
            return Err(Error::Config(format!(
                "{name}: only {} test questions can be made from {} test words (asked for \
                 {want}); lower --test-per-task or --min-count, or raise --test-fraction",
                set.len(),
                test_pool.len()
            )));
        }
    }
    train.extend(definitions_train);
    train.extend(hypernyms_train);
    // A shuffled set whose answers still come in balanced proportions.
    let mut definitions_test = definitions_test;
    let mut hypernyms_test = hypernyms_test;
    definitions_test.shuffle(&mut rng);
    hypernyms_test.shuffle(&mut rng);
    train.shuffle(&mut rng);
    tests.push((DEFINITIONS.to_string(), definitions_test));
    tests.push((HYPERNYMS.to_string(), hypernyms_test));
    Ok(WordNetTasks {
        train,
        tests,
        pool: [pool.len(), train_pool.len(), test_pool.len()],
    })
}
