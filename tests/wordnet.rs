//! The WordNet reader on lines of the real database (tests/fixtures/wordnet/, copied by
//! make_wordnet_fixture.py) and the tasks built from it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn_ipa::data::instruction::InstructionExample;
use burn_ipa::data::wordnet::{parse_data_line, Pos, WordNet};
use burn_ipa::data::wordnet_tasks::{
    build_tasks, DefinitionAnswer, Distractors, WordNetTasksConfig, DEFINITIONS, HYPERNYMS,
};
use burn_ipa::eval::commonsense::EvalTask;
use common::*;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wordnet")
}

const DOG: &str = "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 @ 01317541 n 0000 #m 02083863 n 0000 #m 07994941 n 0000 ~ 01322604 n 0000 ~ 02084732 n 0000 ~ 02084861 n 0000 ~ 02085272 n 0000 ~ 02085374 n 0000 ~ 02087122 n 0000 ~ 02103406 n 0000 ~ 02110341 n 0000 ~ 02110806 n 0000 ~ 02110958 n 0000 ~ 02111129 n 0000 ~ 02111277 n 0000 ~ 02111500 n 0000 ~ 02111626 n 0000 ~ 02112497 n 0000 ~ 02113458 n 0000 ~ 02113610 n 0000 ~ 02113781 n 0000 ~ 02113929 n 0000 | a member of the genus Canis (probably descended from the common wolf) that has been domesticated by man since prehistoric times; occurs in many breeds; \"the dog barked all night\"  ";

#[test]
fn a_data_line_parses_into_its_fields() {
    let dog = parse_data_line(DOG).unwrap().unwrap();
    assert_eq!(dog.offset, 2084071);
    assert_eq!(dog.pos, Pos::Noun);
    assert_eq!(dog.lexname(), "noun.animal");
    let words: Vec<&str> = dog.words.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["dog", "domestic_dog", "Canis_familiaris"]);
    assert_eq!(dog.hypernyms, [2083346, 1317541]);
    assert_eq!(
        dog.definition(),
        "a member of the genus Canis (probably descended from the common wolf) that has been \
         domesticated by man since prehistoric times; occurs in many breeds"
    );
    assert_eq!(dog.sense_key(0).unwrap(), "dog%1:05:00::");
    // The license header is not a synset; broken lines say what is wrong.
    assert_eq!(
        parse_data_line("  1 This software and database").unwrap(),
        None
    );
    let err = parse_data_line("02084071 05 x 01 dog 0 000 | gloss").unwrap_err();
    assert!(err.contains("ss_type"), "{err}");
    let err = parse_data_line("02084071 05 n 03 dog 0").unwrap_err();
    assert!(err.contains("ends before"), "{err}");
}

#[test]
fn the_database_loads_with_counts_and_hypernym_chains() {
    let wn = WordNet::load(&fixture_dir(), &[Pos::Noun]).unwrap();
    let dog = wn
        .synset(Pos::Noun, 2084071)
        .expect("dog is in the fixture");
    // cntlist.rev: "dog%1:05:00:: 1 42".
    assert_eq!(wn.sense_count(dog, 0), 42);
    let chain: Vec<&str> = wn
        .ancestors(dog)
        .iter()
        .map(|s| s.words[0].0.as_str())
        .collect();
    for want in ["canine", "carnivore", "mammal", "animal", "entity"] {
        assert!(chain.contains(&want), "{want} not among {chain:?}");
    }
    // The nearest come first.
    assert!(chain.iter().position(|w| *w == "canine") < chain.iter().position(|w| *w == "mammal"));
    let err = WordNet::load(&fixture_dir().join("missing"), &[Pos::Noun]).unwrap_err();
    assert!(err.to_string().contains("data.noun"), "{err}");
}

/// The subject and option words of a question (the words it asks about).
fn asked_words(ex: &InstructionExample) -> Vec<String> {
    let text = &ex.instruction;
    if let Some(rest) = text.split("question: is a ").nth(1) {
        return vec![rest.split(" a kind of").next().unwrap().to_string()];
    }
    (1..=4)
        .map(|i| {
            text.split(&format!("Answer{i}: "))
                .nth(1)
                .unwrap()
                .split('\n')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn the_tasks_split_by_word_balance_their_answers_and_are_reproducible() {
    let wn = WordNet::load(&fixture_dir(), &[Pos::Noun]).unwrap();
    let config = WordNetTasksConfig {
        seed: 3,
        train_per_task: 40,
        test_per_task: 8,
        min_count: 5,
        test_fraction: 0.3,
        distractors: Distractors::Near,
        definition_answer: DefinitionAnswer::Index,
    };
    let tasks = build_tasks(&wn, &config).unwrap();
    assert_eq!(tasks.tests.len(), 2);
    let train_words: BTreeSet<String> = tasks.train.iter().flat_map(asked_words).collect();
    for (name, set) in &tasks.tests {
        assert_eq!(set.len(), 8, "{name}");
        let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
        for ex in set {
            *answers.entry(ex.answer.as_str()).or_default() += 1;
            assert_eq!(ex.output, format!("the correct answer is {}", ex.answer));
            for w in asked_words(ex) {
                assert!(
                    !train_words.contains(&w),
                    "{name}: test word `{w}` asked in training"
                );
            }
        }
        let want: &[&str] = if name == DEFINITIONS {
            &["answer1", "answer2", "answer3", "answer4"]
        } else {
            assert_eq!(name, HYPERNYMS);
            &["false", "true"]
        };
        assert_eq!(answers.keys().copied().collect::<Vec<_>>(), want, "{name}");
        let counts: Vec<usize> = answers.values().copied().collect();
        assert!(
            counts.iter().all(|&c| c == counts[0]),
            "{name}: {answers:?}"
        );
    }
    // Every definition question's answer is the word WordNet gives that definition.
    let nouns = wn.synsets(Pos::Noun);
    for ex in tasks.tests[0].1.iter().chain(
        tasks
            .train
            .iter()
            .filter(|e| e.answer.starts_with("answer")),
    ) {
        let definition = ex
            .instruction
            .split("means \"")
            .nth(1)
            .unwrap()
            .split("\"?")
            .next()
            .unwrap();
        let k: usize = ex.answer.trim_start_matches("answer").parse().unwrap();
        let word = &asked_words(ex)[k - 1];
        assert!(
            nouns
                .iter()
                .any(|s| s.words[0].0 == *word && s.definition() == definition),
            "`{word}` does not mean {definition:?}"
        );
    }
    // Hypernym questions are true exactly when WordNet says so.
    for ex in tasks.tests[1].1.iter() {
        let rest = ex.instruction.split("question: is a ").nth(1).unwrap();
        let (word, other) = rest.split_once(" a kind of ").unwrap();
        let other = other.split('?').next().unwrap();
        let synset = nouns
            .iter()
            .filter(|s| s.words[0].0 == word)
            .max_by_key(|s| wn.sense_count(s, 0))
            .unwrap();
        let is_kind = wn.ancestors(synset).iter().any(|a| a.words[0].0 == other);
        assert_eq!(ex.answer == "true", is_kind, "{word} / {other}");
    }
    // The same seed makes the same tasks; another seed others.
    let again = build_tasks(&wn, &config).unwrap();
    assert_eq!(again.train, tasks.train);
    let other = build_tasks(
        &wn,
        &WordNetTasksConfig {
            seed: 4,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(other.train, tasks.train);
    // Too many test questions for the words held out: a clear error.
    let err = build_tasks(
        &wn,
        &WordNetTasksConfig {
            test_per_task: 500,
            ..config
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("--test-per-task"), "{err}");
}

/// The lexicographer file of the sense of `word` the task builder keeps: the first of its
/// most often tagged senses whose definition does not use the word itself.
fn lex_file_of(wn: &WordNet, word: &str) -> u8 {
    let uses_word = |text: &str| {
        text.to_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == word || w.strip_suffix('s') == Some(word))
    };
    wn.synsets(Pos::Noun)
        .iter()
        .filter(|s| s.words[0].0 == word && !uses_word(s.definition()))
        .rev()
        .max_by_key(|s| wn.sense_count(s, 0))
        .unwrap_or_else(|| panic!("no synset for {word}"))
        .lex_filenum
}

#[test]
fn near_options_share_the_answers_lexicographer_file_and_far_ones_never_do() {
    let wn = WordNet::load(&fixture_dir(), &[Pos::Noun]).unwrap();
    for distractors in [Distractors::Near, Distractors::Far] {
        let config = WordNetTasksConfig {
            seed: 5,
            train_per_task: 30,
            test_per_task: 6,
            min_count: 5,
            test_fraction: 0.3,
            distractors,
            definition_answer: DefinitionAnswer::Index,
        };
        let tasks = build_tasks(&wn, &config).unwrap();
        let definitions = tasks
            .train
            .iter()
            .filter(|e| e.answer.starts_with("answer"));
        let mut checked = 0;
        for ex in definitions.chain(tasks.tests[0].1.iter()) {
            let words = asked_words(ex);
            let k: usize = ex.answer.trim_start_matches("answer").parse().unwrap();
            let file = lex_file_of(&wn, &words[k - 1]);
            for (i, w) in words.iter().enumerate().filter(|(i, _)| *i != k - 1) {
                let same = lex_file_of(&wn, w) == file;
                assert_eq!(
                    same,
                    distractors == Distractors::Near,
                    "{distractors:?}: option {} `{w}` of {:?}",
                    i + 1,
                    ex.instruction
                );
                checked += 1;
            }
        }
        assert!(checked >= 3 * 6, "{distractors:?}: only {checked} options");
        // Far false hypernyms are still never the word's own.
        for ex in tasks.tests[1].1.iter().filter(|e| e.answer == "false") {
            let rest = ex.instruction.split("question: is a ").nth(1).unwrap();
            let (word, other) = rest.split_once(" a kind of ").unwrap();
            let other = other.split('?').next().unwrap();
            let nouns = wn.synsets(Pos::Noun);
            let synset = nouns
                .iter()
                .filter(|s| s.words[0].0 == word)
                .max_by_key(|s| wn.sense_count(s, 0))
                .unwrap();
            assert!(!wn.ancestors(synset).iter().any(|a| a.words[0].0 == other));
        }
    }
}

#[test]
fn word_answers_name_the_option_and_read_back_from_the_reply() {
    let wn = WordNet::load(&fixture_dir(), &[Pos::Noun]).unwrap();
    let config = WordNetTasksConfig {
        seed: 2,
        train_per_task: 30,
        test_per_task: 8,
        min_count: 5,
        test_fraction: 0.3,
        distractors: Distractors::Far,
        definition_answer: DefinitionAnswer::Word,
    };
    let tasks = build_tasks(&wn, &config).unwrap();
    let (name, test) = &tasks.tests[0];
    assert_eq!(name, DEFINITIONS);
    // The eval reads answers by the test set's own answer words.
    let task = EvalTask::from_answers(name, test.iter().map(|e| e.answer.as_str())).unwrap();
    let mut positions = BTreeSet::new();
    for ex in test {
        let options = asked_words(ex);
        let at = options.iter().position(|w| *w == ex.answer);
        let at = at.unwrap_or_else(|| panic!("{} not among {options:?}", ex.answer));
        positions.insert(at);
        assert!(
            ex.instruction
                .ends_with(&format!("Answer format: {}", options.join("/"))),
            "{}",
            ex.instruction
        );
        assert_eq!(ex.output, format!("the correct answer is {}", ex.answer));
        assert_eq!(task.extract_answer(&ex.output), Some(ex.answer.as_str()));
    }
    // The right word is at every position in turn.
    assert_eq!(positions.len(), 4);
    // Hypernym questions keep their true/false answers.
    assert!(tasks.tests[1]
        .1
        .iter()
        .all(|e| e.answer == "true" || e.answer == "false"));
}

#[test]
fn ipa_wordnet_tasks_writes_a_dataset_ipa_eval_reads() {
    let root = temp_dir("wordnet-cli");
    let out = root.join("tasks");
    // 20 training and 4 test questions per task from seed 1, with `extra` settings.
    let fixture = fixture_dir();
    let tasks_into = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "wordnet-tasks",
            "--wordnet",
            s(&fixture),
            "--train-per-task",
            "20",
            "--test-per-task",
            "4",
            "--test-fraction",
            "0.3",
            "--seed",
            "1",
        ];
        args.extend_from_slice(extra);
        args.extend(["--out", s(out)]);
        ipa_ok(&args)
    };
    let stdout = tasks_into(&out, &[]);
    assert!(stdout.contains("wordnet_definitions (4)"), "{stdout}");
    let train = burn_ipa::data::instruction::load_examples(&out.join("train.json"), false).unwrap();
    assert_eq!(train.len(), 40);
    for task in [DEFINITIONS, HYPERNYMS] {
        let set = burn_ipa::data::instruction::load_examples(
            &out.join("dataset").join(task).join("test.json"),
            true,
        )
        .unwrap();
        assert_eq!(set.len(), 4);
    }
    // --distractors far: recorded, and other options (each from another lexicographer file).
    let far = root.join("far");
    tasks_into(
        &far,
        &["--distractors", "far", "--definition-answer", "word"],
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(far.join("wordnet_tasks_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["settings"]["distractors"], "far");
    assert_eq!(record["settings"]["definition_answer"], "word");
    let wn = WordNet::load(&fixture_dir(), &[Pos::Noun]).unwrap();
    let far_train =
        burn_ipa::data::instruction::load_examples(&far.join("train.json"), false).unwrap();
    let mut definitions = 0;
    for ex in far_train
        .iter()
        .filter(|e| e.instruction.contains("which word means"))
    {
        let words = asked_words(ex);
        let k = words
            .iter()
            .position(|w| *w == ex.answer)
            .expect("the answer is its word");
        let file = lex_file_of(&wn, &words[k]);
        let others = words.iter().enumerate().filter(|(i, _)| *i != k);
        assert!(others.into_iter().all(|(_, w)| lex_file_of(&wn, w) != file));
        definitions += 1;
    }
    assert_eq!(definitions, 20);
    // A folder that holds them is not overwritten without being asked.
    ipa_err(
        &[
            "wordnet-tasks",
            "--wordnet",
            s(&fixture_dir()),
            "--out",
            s(&out),
        ],
        &["not empty", "--overwrite"],
    );
    ipa_err(
        &[
            "wordnet-tasks",
            "--wordnet",
            s(&root.join("none")),
            "--out",
            s(&root.join("o")),
        ],
        &["data.noun", "wordnet-base"],
    );
}
