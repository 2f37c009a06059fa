//! The `ipa` binary end to end on the quickstart's generated data: fit → train (resume of a
//! finished run, refusal of a changed one) → eval → export → merge, and clear errors for bad
//! input.

mod common;

use std::path::Path;

use common::TempDir;
use std::process::Command;

use burn_ipa::quickstart::{world::task_set, write_embedded_base, write_task_set};

fn temp_dir(name: &str) -> TempDir {
    common::temp_dir(&format!("cli-{name}"))
}

/// Runs `ipa` with `args`; returns (success, stdout, stderr).
fn ipa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ipa"))
        .args(args)
        .output()
        .expect("the ipa binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = ipa(args);
    assert!(success, "ipa {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn fit_train_eval_export_merge_with_resume_checks() {
    let root = temp_dir("pipeline");
    let base = root.join("base");
    write_embedded_base(&base).unwrap();
    let (train, tests) = task_set(10, 3, 5);
    let data = root.join("data");
    write_task_set(&data, &train, &tests).unwrap();
    let train_json = data.join("train.json");

    let fit = root.join("fit");
    let stdout = ok(&[
        "fit",
        "--model",
        s(&base),
        "--data",
        s(&train_json),
        "--rank",
        "4",
        "--fit-fraction",
        "0.5",
        "--val-set-size",
        "4",
        "--out",
        s(&fit),
        "--quiet",
    ]);
    assert!(stdout.contains("fitted 6 projectors of rank 4"), "{stdout}");
    assert!(fit.join("projectors.safetensors").is_file());
    assert!(fit.join("fit_config.json").is_file());

    let run = root.join("run");
    let train_args = |max_steps: &str| -> Vec<String> {
        [
            "train",
            "--model",
            s(&base),
            "--data",
            s(&train_json),
            "--rank",
            "4",
            "--projectors",
            s(&fit),
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
            "3",
            "--learning-rate",
            "5e-3",
            "--out",
            s(&run),
            "--quiet",
            "--resume",
            "--max-steps",
            max_steps,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    // An interrupted run (stopped after 4 of 18 steps), then the same command resumed.
    let first: Vec<String> = train_args("4");
    ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 4);
    // The same command again resumes from the final checkpoint: nothing left to do.
    let again = ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.contains("4 steps (0 this run)"), "{again}");
    // --max-steps only says where this process stops: a larger one continues the run, which
    // then ends as an uninterrupted one.
    let longer: Vec<String> = train_args("18");
    let stdout = ok(&longer.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("18 steps (14 this run)"), "{stdout}");
    let resumed_metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let whole_run = root.join("whole");
    let whole: Vec<String> = train_args("18")
        .into_iter()
        .map(|a| {
            if a == s(&run) {
                s(&whole_run).to_string()
            } else {
                a
            }
        })
        .collect();
    ok(&whole.iter().map(String::as_str).collect::<Vec<_>>());
    common::assert_same_metrics_csv(
        &resumed_metrics,
        &std::fs::read_to_string(whole_run.join("metrics.csv")).unwrap(),
    );
    let whole_adapter = common::tensors(&whole_run.join("adapter/adapter_model.safetensors"));
    let resumed_adapter = common::tensors(&run.join("adapter/adapter_model.safetensors"));
    assert_eq!(
        whole_adapter.keys().collect::<Vec<_>>(),
        resumed_adapter.keys().collect::<Vec<_>>()
    );
    for (name, want) in &whole_adapter {
        common::assert_close_f32(
            &resumed_adapter[name],
            want,
            common::SAME_RUN_TOL,
            &format!("{name}: the resumed run against the uninterrupted one"),
        );
    }

    // Without --projectors, `ipa train` fits first, on the same split and shuffle as `ipa
    // fit`: the same projectors.
    let fits_itself = root.join("fits-itself");
    let own: Vec<String> = train_args("1")
        .into_iter()
        .map(|a| {
            if a == s(&run) {
                s(&fits_itself).to_string()
            } else {
                a
            }
        })
        .collect();
    let mut own: Vec<String> = own.into_iter().filter(|a| a != "--resume").collect();
    let at = own.iter().position(|a| a == "--projectors").unwrap();
    own.drain(at..at + 2);
    own.extend(["--fit-fraction".into(), "0.5".into()]);
    ok(&own.iter().map(String::as_str).collect::<Vec<_>>());
    let (own, fitted) = (
        common::tensors(&fits_itself.join("projectors.safetensors")),
        common::tensors(&fit.join("projectors.safetensors")),
    );
    assert_eq!(own.len(), 6);
    assert!(
        own == fitted,
        "`ipa train` fitted other projectors than `ipa fit`"
    );

    let adapter = run.join("adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    assert!(run.join("train_config.json").is_file());

    let eval = root.join("eval");
    let stdout = ok(&[
        "eval",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--data-dir",
        s(&data.join("dataset")),
        "--tasks",
        "boolq,piqa",
        "--max-new-tokens",
        "6",
        "--out",
        s(&eval),
        "--quiet",
    ]);
    assert!(stdout.contains("| boolq |"), "{stdout}");
    let predictions = std::fs::read_to_string(eval.join("predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 6);
    assert!(eval.join("accuracy.json").is_file());

    let peft = root.join("peft");
    ok(&[
        "export",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&peft),
    ]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);

    let merged = root.join("merged");
    ok(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(file).is_file(), "{file}");
    }
}

#[test]
fn bad_input_is_reported_with_the_file() {
    let root = temp_dir("bad");
    let base = root.join("base");
    write_embedded_base(&base).unwrap();
    let broken = root.join("broken.json");
    std::fs::write(&broken, r#"[{"instruction": "x", "output": 3}]"#).unwrap();
    let (success, _, stderr) = ipa(&[
        "fit",
        "--model",
        s(&base),
        "--data",
        s(&broken),
        "--out",
        s(&root.join("o")),
    ]);
    assert!(!success);
    assert!(
        stderr.contains("broken.json") && stderr.contains("output"),
        "{stderr}"
    );

    let (success, _, stderr) = ipa(&[
        "train",
        "--model",
        s(&root.join("missing")),
        "--data",
        s(&broken),
        "--out",
        s(&root.join("o")),
    ]);
    assert!(!success && stderr.contains("missing"), "{stderr}");

    // The dashboard needs a terminal; here standard output is a pipe. Nothing is trained.
    let tui_out = root.join("tui");
    let (success, _, stderr) = ipa(&[
        "train",
        "--model",
        s(&base),
        "--data",
        s(&broken),
        "--tui",
        "--out",
        s(&tui_out),
    ]);
    if cfg!(feature = "tui") {
        assert!(!success && stderr.contains("terminal"), "{stderr}");
    } else {
        assert!(!success && stderr.contains("`tui` feature"), "{stderr}");
    }
    assert!(!tui_out.join("checkpoints").exists());
    let (success, _, stderr) = ipa(&["train", "--tui", "--quiet", "--out", s(&tui_out)]);
    assert!(
        !success && stderr.contains("cannot be used with"),
        "{stderr}"
    );

    let (success, _, stderr) = ipa(&["quickstart", "--backend", "cuda", "--out", s(&root)]);
    if !cfg!(feature = "cuda") {
        assert!(!success && stderr.contains("--features cuda"), "{stderr}");
    }
}

#[test]
fn eval_takes_any_task_folder_with_its_own_answer_words() {
    let ws = common::Workspace::new("cli-anytask", 4, 3);
    // A task of our own: the ARC-style generated questions under another name, with two of
    // their answers renamed so the words come from this data only.
    let arc = std::fs::read_to_string(ws.dataset().join("ARC-Easy/test.json")).unwrap();
    let mine = arc.replace("answer1", "first").replace("answer2", "second");
    std::fs::create_dir_all(ws.dataset().join("mine")).unwrap();
    std::fs::write(ws.dataset().join("mine/test.json"), &mine).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval".to_string(),
            "--model".into(),
            s(&ws.base()).into(),
            "--data-dir".into(),
            s(&ws.dataset()).into(),
            "--tasks".into(),
            "mine,boolq".into(),
            "--num-beams".into(),
            "1".into(),
            "--max-new-tokens".into(),
            "8".into(),
            "--out".into(),
            s(out).into(),
            "--quiet".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        common::ipa_ok(&args);
        let lines = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let words: Vec<String> = {
        let set: serde_json::Value = serde_json::from_str(&mine).unwrap();
        let mut w: Vec<String> = set
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["answer"].as_str().unwrap().to_string())
            .collect();
        w.sort();
        w.dedup();
        w
    };
    let predictions = run(&ws.path("eval"), &[]);
    let ours: Vec<&serde_json::Value> =
        predictions.iter().filter(|p| p["task"] == "mine").collect();
    assert_eq!(ours.len(), 3);
    for p in &ours {
        // The predicted answer is the leftmost answer word of the output, if any.
        let output = p["output"].as_str().unwrap().trim();
        let want = words
            .iter()
            .filter_map(|w| output.find(w.as_str()).map(|at| (at, w)))
            .min()
            .map(|(_, w)| w.clone());
        assert_eq!(p["predicted"].as_str().map(str::to_string), want, "{p}");
    }
    let accuracy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path("eval").join("accuracy.json")).unwrap(),
    )
    .unwrap();
    assert!(
        accuracy.get("mine").is_some() && accuracy.get("boolq").is_some(),
        "{accuracy}"
    );

    // A pattern reads every task's answers instead.
    let predictions = run(&ws.path("eval-pattern"), &["--answer-pattern", "[a-z]+"]);
    for p in &predictions {
        let output = p["output"].as_str().unwrap().trim();
        let want = regex::Regex::new("[a-z]+")
            .unwrap()
            .find(output)
            .map(|m| m.as_str().to_string());
        assert_eq!(p["predicted"].as_str().map(str::to_string), want, "{p}");
    }
}
