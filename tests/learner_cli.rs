//! `ipa train --trainer learner` and `ipa vtab --trainer learner` through the binary: the
//! same adapters as the step loop (no dropout), a run stopped at a window and resumed ending
//! as an uninterrupted one, adapter-sized checkpoints, the result read by `ipa eval`, and
//! the step loop's settings the Learner cannot honour refused by name.

mod common;

use std::path::Path;

use common::*;

/// `ipa train` on the workspace's tiny base with LoRA (no dropout), validating and
/// checkpointing every 2 steps, into `out`.
fn train_args(ws: &Workspace, out: &Path, trainer: &str) -> Vec<String> {
    [
        "train",
        "--model",
        s(&ws.base()),
        "--data",
        s(&ws.train_json()),
        "--method",
        "lora",
        "--dropout",
        "0",
        "--rank",
        "4",
        "--val-set-size",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--warmup-steps",
        "1",
        "--checkpoint-every",
        "2",
        "--valid-every",
        "2",
        "--learning-rate",
        "5e-3",
        "--max-grad-norm",
        "0.5",
        "--trainer",
        trainer,
        "--out",
        s(out),
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap()).unwrap()
}

#[track_caller]
fn assert_same_adapters(a: &Path, b: &Path, what: &str) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, x) in &a {
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let y: Vec<f64> = b[name].iter().map(|&v| v as f64).collect();
        assert_close(&x, &y, 1e-6, &format!("{what}: {name}"));
    }
}

#[test]
fn ipa_train_with_the_learner_takes_the_step_loops_steps() {
    let ws = Workspace::new("learner-cli-train", 10, 2);
    let (looped, learned) = (ws.path("loop"), ws.path("learner"));
    ipa_ok(&train_args(&ws, &looped, "loop"));
    let stdout = ipa_ok(&train_args(&ws, &learned, "learner"));
    // The best validation's adapters in both, from the same step.
    assert_eq!(report(&learned)["kept_step"], report(&looped)["kept_step"]);
    assert_eq!(report(&learned)["steps"], report(&looped)["steps"]);
    assert_same_adapters(
        &learned.join("adapter/adapter_model.safetensors"),
        &looped.join("adapter/adapter_model.safetensors"),
        "learner against loop",
    );
    assert!(stdout.contains("adapter of step"), "{stdout}");
    // The loop's files sit where the rest of the crate reads them.
    for file in [
        "train_config.json",
        "metrics.csv",
        "adapter_init/adapter_config.json",
    ] {
        assert!(learned.join(file).is_file(), "{file}");
    }
    let config = std::fs::read_to_string(learned.join("train_config.json")).unwrap();
    assert!(config.contains("\"trainer\": \"learner\""), "{config}");
    let (m1, m2) = (
        std::fs::read_to_string(learned.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(looped.join("metrics.csv")).unwrap(),
    );
    assert_eq!(m1.lines().count(), m2.lines().count());

    // burn-train's checkpoints hold the adapters: each model record is a small share of the
    // base weights.
    let base = std::fs::metadata(ws.base().join("model.safetensors"))
        .unwrap()
        .len();
    let dir = learned.join("learner/checkpoint");
    let mut models = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        let size = entry.metadata().unwrap().len();
        if name.starts_with("model-") {
            models += 1;
            assert!(size * 8 < base, "{name}: {size} bytes, the base {base}");
        }
    }
    assert!(models >= 2, "the last two windows are kept");

    // `ipa eval` reads the result.
    let stdout = ipa_ok(&[
        "eval",
        "--model",
        s(&ws.base()),
        "--adapter",
        s(&learned.join("adapter")),
        "--data-dir",
        s(&ws.dataset()),
        "--tasks",
        "boolq",
        "--max-new-tokens",
        "4",
        "--num-beams",
        "1",
        "--out",
        s(&ws.path("eval")),
        "--quiet",
    ]);
    assert!(stdout.contains("| boolq |"), "{stdout}");
}

#[test]
fn a_learner_run_stopped_at_a_window_resumes_to_the_uninterrupted_adapters() {
    let ws = Workspace::new("learner-cli-resume", 10, 1);
    let whole = ws.path("whole");
    ipa_ok(&train_args(&ws, &whole, "learner"));

    // The first process stops after 4 steps (at the end of window 2); the same command with
    // --resume and no limit continues from that window.
    let run = ws.path("run");
    let first = with_flags(
        train_args(&ws, &run, "learner"),
        &["--max-steps", "4", "--resume"],
    );
    ipa_ok(&first);
    assert_eq!(report(&run)["steps"], 4);
    let again = with_flags(train_args(&ws, &run, "learner"), &["--resume"]);
    let stdout = ipa_ok(&again);
    assert!(stdout.contains("this run"), "{stdout}");
    assert_eq!(report(&run)["resumed_from"], 4);
    assert_eq!(report(&run)["steps"], report(&whole)["steps"]);
    assert_same_adapters(
        &run.join("adapter/adapter_model.safetensors"),
        &whole.join("adapter/adapter_model.safetensors"),
        "resumed against uninterrupted",
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(whole.join("metrics.csv")).unwrap()
    );

    // A step-loop run is not resumed by the Learner, nor the other way round.
    let looped = ws.path("looped");
    ipa_ok(&with_flags(
        train_args(&ws, &looped, "loop"),
        &["--max-steps", "2"],
    ));
    ipa_err(
        &with_flags(train_args(&ws, &looped, "learner"), &["--resume"]),
        &["--trainer loop"],
    );
    ipa_err(
        &with_flags(train_args(&ws, &run, "loop"), &["--resume"]),
        &["--trainer learner"],
    );
}

/// `args` without the flags `flags` and their values.
fn without(args: Vec<String>, flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if flags.contains(&a.as_str()) {
            skip = true;
        } else {
            out.push(a);
        }
    }
    out
}

#[test]
fn settings_the_learner_cannot_honour_are_refused() {
    let ws = Workspace::new("learner-cli-refuse", 4, 1);
    let out = ws.path("out");
    let args = train_args(&ws, &out, "learner");
    ipa_err(
        &with_flags(args.clone(), &["--valid-every", "3"]),
        &["--valid-every 3", "--checkpoint-every 2"],
    );
    ipa_err(
        &with_flags(
            without(args.clone(), &["--rank", "--dropout"]),
            &["--method", "full"],
        ),
        &["--trainer learner", "--method full"],
    );
    ipa_err(
        &with_flags(args, &["--method", "ipa", "--fit-mode", "online"]),
        &["--fit-mode online", "--trainer loop"],
    );
    // Nothing was written by the refused runs.
    assert!(!out.join("learner").exists());
}
