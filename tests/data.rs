//! Instruction data loading, prompts, tokenization and answer extraction.

mod common;

use std::path::{Path, PathBuf};

use burn_ipa::data::instruction::{
    load_examples, tokenize_example, InstructionExample, PromptStyle, IGNORE_INDEX,
};
use burn_ipa::eval::commonsense::{Accuracy, EvalTask, Task};
use burn_ipa::models::tokenizer::Tokenizer;

fn temp_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn example(input: &str) -> InstructionExample {
    InstructionExample {
        instruction: "Is the sky blue?".into(),
        input: input.into(),
        output: "the correct answer is true".into(),
        answer: "true".into(),
    }
}

#[test]
fn loads_valid_data_and_names_bad_fields() {
    let dir = common::temp_dir("data");
    let ok = temp_file(
        &dir,
        "ok.json",
        r#"[{"instruction": "Q1", "input": "", "output": "the correct answer is true", "answer": "true"},
            {"instruction": "Q2", "output": "the correct answer is false", "answer": "false"}]"#,
    );
    let data = load_examples(&ok, true).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1].input, "");

    let cases = [
        ("broken.json", "[{\"instruction\": ", "not valid JSON"),
        ("object.json", "{\"instruction\": \"x\"}", "JSON array"),
        ("empty.json", "[]", "empty"),
        (
            "missing.json",
            r#"[{"instruction": "Q", "output": "o", "answer": "a"}, {"output": "o", "answer": "a"}]"#,
            "example 1: field `instruction` is missing",
        ),
        (
            "type.json",
            r#"[{"instruction": "Q", "output": 3, "answer": "a"}]"#,
            "example 0: field `output` must be a string",
        ),
        (
            "noanswer.json",
            r#"[{"instruction": "Q", "output": "o"}]"#,
            "field `answer` is missing",
        ),
    ];
    for (name, text, expected) in cases {
        let path = temp_file(&dir, name, text);
        let err = load_examples(&path, true).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
    }
    // Training data need no `answer`.
    let train = temp_file(
        &dir,
        "train.json",
        r#"[{"instruction": "Q", "input": "", "output": "o"}]"#,
    );
    assert_eq!(load_examples(&train, false).unwrap()[0].answer, "");
}

#[test]
fn prompts_match_the_llm_adapters_scripts() {
    let i = " ".repeat(16);
    // finetune.py, no input: two trailing spaces after "request.", indented blank lines.
    let want = format!(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n{i}### Instruction:\n{i}Is the sky blue?\n{i}\n{i}### Response:\n{i}the correct answer is true"
    );
    assert_eq!(PromptStyle::LlmAdapters.training_text(&example("")), want);
    // commonsense_evaluate.py, no input: one trailing space, empty blank lines.
    let want = format!(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n{i}### Instruction:\n{i}Is the sky blue?\n\n{i}### Response:\n{i}"
    );
    assert_eq!(PromptStyle::LlmAdapters.prompt(&example("")), want);
    let with_input = PromptStyle::LlmAdapters.training_text(&example("Context."));
    assert!(
        with_input.contains(&format!("### Input:\n{i}Context.\n{i}\n")),
        "{with_input}"
    );
    assert_eq!(
        PromptStyle::Clean.prompt(&example("")),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nIs the sky blue?\n\n### Response:\n"
    );
    assert!(PromptStyle::Clean
        .training_text(&example(""))
        .ends_with("### Response:\nthe correct answer is true"));
}

#[test]
fn tokenization_appends_eos_truncates_and_masks_the_prompt() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let ex = example("");
    let full = tokenize_example(&tok, PromptStyle::Clean, &ex, 512, false).unwrap();
    assert_eq!(full.input_ids.first(), tok.bos_token_id.as_ref());
    assert_eq!(full.input_ids.last(), tok.eos_token_id.as_ref());
    let labels: Vec<i64> = full.input_ids.iter().map(|&t| t as i64).collect();
    assert_eq!(full.labels, labels, "loss on the whole sequence by default");

    let masked = tokenize_example(&tok, PromptStyle::Clean, &ex, 512, true).unwrap();
    let prompt_len = tok
        .encode(&PromptStyle::Clean.training_prompt(&ex), true)
        .unwrap()
        .len();
    assert!(prompt_len > 0 && prompt_len < masked.labels.len());
    assert!(masked.labels[..prompt_len]
        .iter()
        .all(|&l| l == IGNORE_INDEX));
    assert!(masked.labels[prompt_len..]
        .iter()
        .all(|&l| l != IGNORE_INDEX));

    // Truncated to the cutoff, with no room left for EOS.
    let short = tokenize_example(&tok, PromptStyle::Clean, &ex, 10, false).unwrap();
    assert_eq!(short.input_ids.len(), 10);
    assert_ne!(short.input_ids.last(), tok.eos_token_id.as_ref());
}

#[test]
fn answers_are_the_first_answer_word() {
    let cases = [
        (Task::BoolQ, "the correct answer is false", Some("false")),
        (Task::BoolQ, "true, not false", Some("true")),
        (Task::BoolQ, "The correct answer is True", None),
        (
            Task::Piqa,
            "the correct answer is solution2",
            Some("solution2"),
        ),
        (
            Task::SocialIqa,
            "answer3 is right, not answer1",
            Some("answer3"),
        ),
        (
            Task::HellaSwag,
            "the correct answer is ending4",
            Some("ending4"),
        ),
        (Task::WinoGrande, "  option2\n", Some("option2")),
        (Task::ArcEasy, "I think answer5", Some("answer5")),
        (Task::ArcChallenge, "no idea", None),
        (Task::OpenBookQa, "solution1", None),
    ];
    for (task, text, want) in cases {
        assert_eq!(task.extract_answer(text), want, "{task:?}: {text:?}");
        // The evaluation's task reads the same answer from the same words.
        assert_eq!(
            EvalTask::builtin(task).extract_answer(text),
            want,
            "{task:?}"
        );
    }
    assert_eq!(
        Task::from_name("ARC-Challenge").unwrap(),
        Task::ArcChallenge
    );
    assert!(Task::from_name("arc")
        .unwrap_err()
        .to_string()
        .contains("ARC-Easy"));

    let mut acc = Accuracy::default();
    acc.record("boolq", Some("true"), "true");
    acc.record("boolq", None, "false");
    acc.record("piqa", Some("solution1"), "solution1");
    assert_eq!(acc.of("boolq"), Some(0.5));
    assert_eq!(acc.average(), Some(0.75));
}

#[test]
fn any_task_reads_its_answers_from_its_data_or_a_pattern() {
    // Answer words from the data: at one position the longest wins.
    let task =
        EvalTask::from_answers("mine", ["answer1", "answer10", "answer2", "answer1", " "]).unwrap();
    assert_eq!(
        task.extract_answer("it is answer10, not answer2"),
        Some("answer10")
    );
    assert_eq!(task.extract_answer("answer2 then answer1"), Some("answer2"));
    assert_eq!(task.extract_answer("none"), None);
    // Whole words only: a task whose answers are words is not read inside longer ones.
    let words = EvalTask::from_answers("words", ["cat", "answer", "mountain", "c++"]).unwrap();
    assert_eq!(
        words.extract_answer("the category of the correct reply is mountain"),
        Some("mountain")
    );
    assert_eq!(words.extract_answer("a cat's answer"), Some("cat"));
    assert_eq!(words.extract_answer("concatenate, mountains"), None);
    assert_eq!(words.extract_answer("in c++."), Some("c++"));
    let err = EvalTask::from_answers("empty", ["", " "])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty") && err.contains("--answer-pattern"),
        "{err}"
    );
    let pattern = EvalTask::with_pattern("p", r"answer[1-4]").unwrap();
    assert_eq!(
        pattern.extract_answer("so answer5? no: answer3"),
        Some("answer3")
    );
    let err = EvalTask::with_pattern("p", "(").unwrap_err().to_string();
    assert!(err.contains("--answer-pattern"), "{err}");
}
