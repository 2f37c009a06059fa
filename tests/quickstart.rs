//! The quickstart in a reduced size, and the generated world it runs on.

mod common;

use burn_ipa::data::instruction::{load_examples, PromptStyle};
use burn_ipa::eval::commonsense::Task;
use burn_ipa::models::loading::load_decoder;
use burn_ipa::models::tokenizer::Tokenizer;
use burn_ipa::pipelines::instruct::attach_saved_adapter;
use burn_ipa::pipelines::out_dir::Existing;
use burn_ipa::quickstart::vocab::{words, UNK};
use burn_ipa::quickstart::world::{pretraining_corpus, task_set, TASKS};
use burn_ipa::quickstart::{run_quickstart, write_embedded_base, QuickstartConfig};
use common::*;

type B = TestBackend;

fn temp_dir(name: &str) -> TempDir {
    common::temp_dir(&format!("qs-{name}"))
}

#[test]
fn task_sets_are_disjoint_balanced_and_answer_in_format() {
    let (train, tests) = task_set(40, 10, 3);
    assert_eq!(train.len(), 4 * 40);
    assert_eq!(tests.len(), 4);
    for (task, set) in &tests {
        assert_eq!(set.len(), 10);
        for ex in set {
            assert!(task.answer_words().contains(&ex.answer.as_str()), "{ex:?}");
            assert_eq!(task.extract_answer(&ex.output), Some(ex.answer.as_str()));
            assert!(
                !train.iter().any(|t| t.instruction == ex.instruction),
                "test question seen in training: {}",
                ex.instruction
            );
        }
    }
    // Another data seed splits differently; the same seed reproduces.
    assert_eq!(task_set(40, 10, 3).0, train);
    assert_ne!(task_set(40, 10, 4).0, train);
}

#[test]
fn the_bundled_tokenizer_knows_every_generated_word() {
    let dir = temp_dir("tokenizer");
    write_embedded_base(&dir).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        (tokenizer.bos_token_id, tokenizer.eos_token_id),
        (Some(1), Some(2))
    );
    let (train, tests) = task_set(50, 10, 0);
    let mut texts: Vec<String> = pretraining_corpus(0);
    for ex in train.iter().chain(tests.iter().flat_map(|(_, s)| s)) {
        texts.push(PromptStyle::LlmAdapters.training_text(ex));
    }
    for text in &texts {
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(ids[0], 1, "BOS first");
        assert!(!ids.contains(&UNK.1), "unknown word in {text:?}");
        // Word-level: decoding gives the lowercased words separated by spaces.
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), words(text).join(" "));
    }
}

#[test]
fn reduced_quickstart_runs_end_to_end() {
    let out = temp_dir("run");
    let config = QuickstartConfig::reduced();
    let rows =
        run_quickstart::<B>(&config, &out, &Default::default(), false, Existing::Refuse).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["base-model", "lora", "lora-frozen", "ipa", "ipa-ft"]
    );

    // Trainable parameters from the shapes alone: 2 layers; q (64→64), k and v (64→32),
    // up (64→176), down (176→64). B has r·d_out entries, P r·d_in.
    let r = config.rank;
    let d_out: usize = 64 + 32 + 32 + 176 + 64;
    let d_in: usize = 64 * 4 + 176;
    let frozen = 2 * r * d_out;
    let trained = 2 * r * (d_out + d_in);
    let params: Vec<usize> = rows.iter().map(|r| r.trainable_params).collect();
    assert_eq!(params, [0, trained, frozen, frozen, trained]);

    // Every row has an accuracy per task and an average, in [0, 1].
    for row in &rows {
        assert_eq!(row.accuracy.len(), TASKS.len() + 1, "{}", row.name);
        assert!(row.accuracy.values().all(|a| (0.0..=1.0).contains(a)));
    }
    // Training moved the loss and the adapters load back into a fresh base.
    let base_dir = out.join("base");
    for row in &rows[1..] {
        assert!(row.final_loss.unwrap().is_finite());
        let dir = out.join(&row.name);
        let history = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let losses: Vec<f64> = history
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(
            losses.last().unwrap() < losses.first().unwrap(),
            "{}: {losses:?}",
            row.name
        );
        let mut model = load_decoder::<B>(&base_dir, &Default::default()).unwrap();
        let adapter = attach_saved_adapter(&mut model, &dir.join("adapter")).unwrap();
        assert_eq!(adapter.rank, r);
        let adapted = model
            .linears_mut()
            .into_iter()
            .filter(|(_, l)| l.adapter.is_some())
            .count();
        assert_eq!(adapted, 2 * 5);
        let predictions = std::fs::read_to_string(dir.join("eval/predictions.jsonl")).unwrap();
        assert_eq!(
            predictions.lines().count(),
            TASKS.len() * config.test_per_task
        );
    }
    // The generated data is written in the LLM-Adapters layout and loads strictly.
    let train = load_examples(&out.join("data/train.json"), false).unwrap();
    assert_eq!(train.len(), TASKS.len() * config.train_per_task);
    for task in TASKS {
        let path = out
            .join("data/dataset")
            .join(task.dataset_name())
            .join("test.json");
        assert_eq!(
            load_examples(&path, true).unwrap().len(),
            config.test_per_task
        );
    }
    assert!(Task::ALL.contains(&TASKS[0]));
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + rows.len());
    let resolved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("quickstart_config.json")).unwrap())
            .unwrap();
    assert_eq!(resolved["rank"], r);
}
