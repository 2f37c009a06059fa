//! The `ipa` binary as a hostile user drives it: every bad input stops with an error (exit
//! status 1, never a panic or a signal) that names the file, field, tensor or setting, and
//! nothing a user has is overwritten or mixed without being asked.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The arguments of a small, fast `ipa train` run on a workspace (36 training examples after 4
/// are held out: 9 steps an epoch of 4 examples in micro-batches of 2).
fn train_args(ws: &Workspace, out: &Path, extra: &[&str]) -> Vec<String> {
    let args: Vec<String> = [
        "train",
        "--model",
        s(&ws.base()),
        "--data",
        s(&ws.train_json()),
        "--rank",
        "4",
        "--val-set-size",
        "4",
        "--epochs",
        "1",
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
        s(out),
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    with_flags(args, extra)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap()
}

fn adapter_file(dir: &Path) -> PathBuf {
    dir.join("adapter/adapter_model.safetensors")
}

// ---------------------------------------------------------------------------------------------
// Flags that must do what they say
// ---------------------------------------------------------------------------------------------

#[test]
fn online_fit_mode_fits_the_projectors_during_training() {
    let ws = Workspace::new("bad-online", 10, 2);
    let out = ws.path("online");
    ipa_ok(&train_args(
        &ws,
        &out,
        &[
            "--fit-mode",
            "online",
            "--online-stop-after",
            "3",
            "--keep",
            "last",
        ],
    ));
    let weights = tensors(&adapter_file(&out));
    let a = weights
        .iter()
        .find(|(k, _)| k.ends_with("q_proj.lora_A.weight"))
        .expect("a projector")
        .1;
    let b = weights
        .iter()
        .find(|(k, _)| k.ends_with("q_proj.lora_B.weight"))
        .expect("an up-projection")
        .1;
    // The projectors are the online estimates (unit rows), not the zero placeholders, and
    // the up-projections trained.
    let row: f32 = a[..64].iter().map(|x| x * x).sum();
    assert!((row - 1.0).abs() < 1e-3, "projector row norm² {row}");
    assert!(b.iter().any(|&x| x != 0.0), "up-projection never trained");
    let config = json(&out.join("train_config.json"));
    assert_eq!(
        config["settings"]["tuning"]["projectors"]["source"],
        "online"
    );
    assert_eq!(
        config["settings"]["tuning"]["projectors"]["fit"]["stop_after"],
        3
    );

    let bad = ws.path("bad");
    ipa_err(
        &train_args(
            &ws,
            &bad,
            &["--fit-mode", "online", "--online-update-every", "0"],
        ),
        &["update_every"],
    );
    ipa_err(
        &train_args(
            &ws,
            &bad,
            &["--fit-mode", "online", "--online-stop-after", "0"],
        ),
        &["stop_after"],
    );
    ipa_err(
        &train_args(&ws, &bad, &["--online-stop-after", "2"]),
        &["--fit-mode online"],
    );
}

#[test]
fn flags_a_run_would_ignore_are_refused() {
    let ws = Workspace::new("bad-ignored", 10, 2);
    let out = ws.path("o");
    let fit = ws.path("fit");
    std::fs::create_dir_all(&fit).unwrap();
    ipa_err(
        &train_args(&ws, &out, &["--method", "lora", "--projectors", s(&fit)]),
        &["--projectors", "LoRA"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--method", "lora", "--fit-fraction", "0.5"]),
        &["--fit-fraction", "LoRA"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--max-steps", "0"]),
        &["max_steps"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--method", "ipa", "--alpha", "16"]),
        &["--scaling"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--method", "lora", "--scaling", "0.5"]),
        &["--alpha"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--projector-init", "orthogonal"]),
        &["--projector-init"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--device", "5"]),
        &["device 5", "flex"],
    );
    ipa_err(
        &train_args(&ws, &out, &["--devices", "0,9"]),
        &["ordinal 9", "flex"],
    );
    // None of these started a run.
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn a_cutoff_that_leaves_nothing_to_learn_is_an_error_not_a_panic() {
    let ws = Workspace::new("bad-cutoff", 10, 2);
    let out = ws.path("o");
    ipa_err(&train_args(&ws, &out, &["--cutoff", "1"]), &["cutoff 1"]);
    // Every prompt is longer than 20 tokens: with the prompt masked nothing is left.
    ipa_err(
        &train_args(&ws, &out, &["--cutoff", "20", "--mask-prompt"]),
        &["--cutoff 20", "--mask-prompt", "train.json"],
    );
}

// ---------------------------------------------------------------------------------------------
// Output folders
// ---------------------------------------------------------------------------------------------

#[test]
fn a_folder_in_use_is_refused_naming_the_holder() {
    let ws = Workspace::new("bad-lock", 10, 2);
    let out = ws.path("busy");
    let _held = burn_ipa::pipelines::out_dir::OutDir::lock(&out, "ipa train").unwrap();
    let stderr = ipa_err(&train_args(&ws, &out, &[]), &["busy", "in use by pid"]);
    assert!(stderr.contains(&std::process::id().to_string()), "{stderr}");
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn a_non_empty_folder_is_refused_unless_resumed_or_overwritten() {
    let ws = Workspace::new("bad-overwrite", 10, 2);
    let out = ws.path("run");
    ipa_ok(&train_args(&ws, &out, &["--max-steps", "2"]));
    let adapter = read(&out.join("adapter/adapter_config.json"));
    // Other settings into the same folder: refused, nothing touched.
    ipa_err(
        &train_args(&ws, &out, &["--max-steps", "2", "--rank", "2"]),
        &["not empty", "--resume", "--overwrite"],
    );
    assert_eq!(read(&out.join("adapter/adapter_config.json")), adapter);
    // --overwrite replaces it.
    ipa_ok(&train_args(
        &ws,
        &out,
        &["--max-steps", "2", "--rank", "2", "--overwrite"],
    ));
    assert!(read(&out.join("adapter/adapter_config.json")).contains("\"rank\": 2"));
    // --resume and --overwrite together make no sense.
    let run = ipa_run(&train_args(&ws, &out, &["--resume", "--overwrite"]));
    assert_eq!(run.code, Some(2), "{}", run.stderr);

    // ipa fit, eval, export and merge refuse too.
    let fit = ws.path("fit");
    let (base, data) = (ws.base(), ws.train_json());
    let fit_args = |extra: &[&str]| {
        let mut a = vec![
            "fit",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--rank",
            "4",
            "--val-set-size",
            "4",
            "--out",
            s(&fit),
            "--quiet",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    ipa_ok(&fit_args(&[]));
    ipa_err(&fit_args(&[]), &["not empty", "--overwrite"]);
    ipa_ok(&fit_args(&["--overwrite"]));
}

#[test]
fn merge_over_an_earlier_sharded_merge_leaves_no_stale_shards() {
    let ws = Workspace::new("bad-merge", 10, 2);
    let run = ws.path("run");
    ipa_ok(&train_args(&ws, &run, &["--max-steps", "2"]));
    let merged = ws.path("merged");
    std::fs::create_dir_all(&merged).unwrap();
    // What an earlier merge of a sharded checkpoint left.
    std::fs::write(
        merged.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(merged.join("model-00001-of-00002.safetensors"), b"old").unwrap();
    let (base, adapter) = (ws.base(), run.join("adapter"));
    let merge = |extra: &[&str]| {
        let mut a = vec![
            "merge",
            "--model",
            s(&base),
            "--adapter",
            s(&adapter),
            "--out",
            s(&merged),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    ipa_err(
        &merge(&[]),
        &["merged", "not empty", "model-00001-of-00002"],
    );
    ipa_ok(&merge(&["--overwrite"]));
    assert!(!merged.join("model.safetensors.index.json").exists());
    assert!(!merged.join("model-00001-of-00002.safetensors").exists());
    // The merged folder loads as a plain model.
    burn_ipa::models::loading::load_decoder::<TestBackend>(&merged, &Default::default()).unwrap();
    // The model folder itself is never an output.
    ipa_err(
        &[
            "merge",
            "--model",
            s(&ws.base()),
            "--adapter",
            s(&run.join("adapter")),
            "--out",
            s(&ws.base()),
            "--overwrite",
        ],
        &["is the model folder"],
    );
}

// ---------------------------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------------------------

#[test]
fn resume_refuses_changed_data_and_names_what_changed() {
    let ws = Workspace::new("bad-resume-data", 10, 2);
    let out = ws.path("run");
    ipa_ok(&train_args(&ws, &out, &["--max-steps", "2"]));
    // The same path, other content.
    let (train, _) = burn_ipa::quickstart::world::task_set(10, 2, 6);
    std::fs::write(ws.train_json(), serde_json::to_vec(&train).unwrap()).unwrap();
    ipa_err(
        &train_args(&ws, &out, &["--max-steps", "4", "--resume"]),
        &["inputs.data.sha256", "→"],
    );
}

#[test]
fn resume_names_the_settings_that_differ() {
    let ws = Workspace::new("bad-resume-settings", 10, 2);
    let out = ws.path("run");
    ipa_ok(&train_args(&ws, &out, &["--max-steps", "2"]));
    let stderr = ipa_err(
        &train_args(
            &ws,
            &out,
            &["--max-steps", "4", "--resume", "--learning-rate", "1e-3"],
        ),
        &["settings.train.learning_rate", "0.005 → 0.001"],
    );
    assert!(
        !stderr.contains("\"epochs\""),
        "the whole settings dumped:\n{stderr}"
    );
    // --max-steps only says where to stop: a larger one continues the same run.
    let stdout = ipa_ok(&train_args(&ws, &out, &["--max-steps", "4", "--resume"]));
    assert!(stdout.contains("4 steps (2 this run)"), "{stdout}");
}

#[test]
fn metrics_csv_is_rebuilt_from_the_checkpoint_on_resume() {
    let ws = Workspace::new("bad-metrics", 10, 2);
    let out = ws.path("run");
    ipa_ok(&train_args(&ws, &out, &["--max-steps", "4"]));
    let full = read(&out.join("metrics.csv"));
    assert_eq!(full.lines().count(), 1 + 4);
    // A kill after the last checkpoint and before its metrics line.
    let short: String = full.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(out.join("metrics.csv"), short).unwrap();
    let stdout = ipa_ok(&train_args(&ws, &out, &["--max-steps", "4", "--resume"]));
    assert!(stdout.contains("4 steps (0 this run)"), "{stdout}");
    assert_eq!(read(&out.join("metrics.csv")), full);
}

#[test]
fn a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_previous_one() {
    let ws = Workspace::new("bad-ckpt", 10, 2);
    // The uninterrupted run, for reference.
    let whole = ws.path("whole");
    ipa_ok(&train_args(
        &ws,
        &whole,
        &["--max-steps", "6", "--keep", "last"],
    ));
    let reference = tensors(&adapter_file(&whole));

    let out = ws.path("run");
    ipa_ok(&train_args(
        &ws,
        &out,
        &["--max-steps", "4", "--keep", "last"],
    ));
    let latest = out.join("checkpoints/step-4");
    assert!(
        out.join("checkpoints/step-2").is_dir(),
        "the previous checkpoint is kept"
    );
    // Truncate the optimizer state of the latest checkpoint.
    let optimizer = latest.join("optimizer.bin");
    let bytes = std::fs::read(&optimizer).unwrap();
    std::fs::write(&optimizer, &bytes[..bytes.len() / 2]).unwrap();
    let run = ipa_run(&train_args(
        &ws,
        &out,
        &["--max-steps", "6", "--keep", "last", "--resume"],
    ));
    assert!(run.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("optimizer.bin") && run.stderr.contains("damaged"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("step-2"), "{}", run.stderr);
    assert!(
        run.stdout.contains("6 steps (4 this run)"),
        "{}",
        run.stdout
    );
    assert_eq!(tensors(&adapter_file(&out)), reference);

    // A bit flip in the only checkpoints left: an error naming the file, not a crash.
    for dir in ["step-4", "step-6"] {
        let p = out.join("checkpoints").join(dir).join("optimizer.bin");
        if p.exists() {
            let mut b = std::fs::read(&p).unwrap();
            let i = b.len() / 3;
            b[i] ^= 0x40;
            std::fs::write(&p, b).unwrap();
        }
    }
    ipa_err(
        &train_args(
            &ws,
            &out,
            &["--max-steps", "8", "--keep", "last", "--resume"],
        ),
        &["optimizer.bin", "damaged"],
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged or mismatched models
// ---------------------------------------------------------------------------------------------

/// A copy of the base whose `model.safetensors` has `edit` applied to its tensors
/// (name, dtype, shape, bytes).
fn edited_base(
    ws: &Workspace,
    name: &str,
    edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let dir = ws.path(name);
    burn_ipa::quickstart::write_embedded_base(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut entries);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, sh, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, sh.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    dir
}

fn eval_args(model: &Path, ws: &Workspace, out: &Path) -> Vec<String> {
    [
        "eval",
        "--model",
        s(model),
        "--data-dir",
        s(&ws.dataset()),
        "--tasks",
        "boolq",
        "--num-beams",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        s(out),
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[test]
fn a_non_float_tensor_in_a_checkpoint_is_named() {
    let ws = Workspace::new("bad-dtype", 4, 2);
    let base = edited_base(&ws, "int-base", |entries| {
        let e = entries
            .iter_mut()
            .find(|e| e.0.ends_with("layers.0.self_attn.q_proj.weight"))
            .unwrap();
        e.1 = safetensors::Dtype::I32;
    });
    let stderr = ipa_err(
        &eval_args(&base, &ws, &ws.path("e")),
        &["model.layers.0.self_attn.q_proj.weight", "I32"],
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    ipa_err(
        &train_args(&ws, &ws.path("t"), &["--model", s(&base)]),
        &["q_proj.weight", "I32"],
    );
}

#[test]
fn shapes_are_reported_in_the_files_layout() {
    let ws = Workspace::new("bad-shape", 4, 2);
    // k_proj of the tiny base is [32, 64] in the file (out 32, in 64); make it [64, 32].
    let base = edited_base(&ws, "shape-base", |entries| {
        let e = entries
            .iter_mut()
            .find(|e| e.0.ends_with("layers.0.self_attn.k_proj.weight"))
            .unwrap();
        assert_eq!(e.2, vec![32, 64]);
        e.2 = vec![64, 32];
    });
    ipa_err(
        &eval_args(&base, &ws, &ws.path("e")),
        &[
            "k_proj.weight",
            "the file has shape [64, 32]",
            "expects [32, 64]",
        ],
    );
}

#[test]
fn a_truncated_checkpoint_says_truncated_with_sizes() {
    let ws = Workspace::new("bad-truncated", 4, 2);
    let dir = ws.path("cut");
    burn_ipa::quickstart::write_embedded_base(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    ipa_err(
        &eval_args(&dir, &ws, &ws.path("e")),
        &[
            "model.safetensors",
            "truncated",
            &format!("the file has {}", bytes.len() - 1000),
        ],
    );
}

#[test]
fn config_errors_name_the_field() {
    let ws = Workspace::new("bad-config", 4, 2);
    let cases: [(&str, serde_json::Value, &[&str]); 3] = [
        (
            "heads0",
            serde_json::json!(0),
            &["num_attention_heads", "at least 1"],
        ),
        (
            "heads5",
            serde_json::json!(5),
            &["hidden_size", "not divisible by num_attention_heads = 5"],
        ),
        ("heads3", serde_json::json!(3), &["not divisible"]),
    ];
    for (name, heads, needles) in cases {
        let dir = ws.path(name);
        burn_ipa::quickstart::write_embedded_base(&dir).unwrap();
        let mut config = json(&dir.join("config.json"));
        config["num_attention_heads"] = heads.clone();
        config["num_key_value_heads"] = heads;
        config.as_object_mut().unwrap().remove("head_dim");
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut all = vec!["config.json"];
        all.extend_from_slice(needles);
        ipa_err(&eval_args(&dir, &ws, &ws.path(&format!("e-{name}"))), &all);
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

#[test]
fn a_token_outside_the_vocabulary_names_the_files_example() {
    let ws = Workspace::new("bad-vocab", 4, 2);
    // A base whose vocabulary is smaller than the tokenizer's: the first example with a high
    // id is named by its index in the file.
    let dir = ws.path("small-vocab");
    burn_ipa::quickstart::write_embedded_base(&dir).unwrap();
    let tokenizer = burn_ipa::models::tokenizer::Tokenizer::from_dir(&dir).unwrap();
    let examples = burn_ipa::data::instruction::load_examples(&ws.train_json(), false).unwrap();
    let style = burn_ipa::data::instruction::PromptStyle::LlmAdapters;
    let max_ids: Vec<u32> = examples
        .iter()
        .map(|e| {
            *tokenizer
                .encode(&style.training_text(e), true)
                .unwrap()
                .iter()
                .max()
                .unwrap()
        })
        .collect();
    // A vocabulary that some example fits and some other does not.
    let limit = max_ids.iter().min().unwrap() + 1;
    let first_bad = max_ids
        .iter()
        .position(|&m| m >= limit)
        .expect("an example beyond");
    let edited = edited_base(&ws, "vocab-base", |entries| {
        for e in entries.iter_mut() {
            if e.0 == "model.embed_tokens.weight" || e.0 == "lm_head.weight" {
                let width = e.2[1];
                e.2[0] = limit as usize;
                e.3.truncate(limit as usize * width * 4);
            }
        }
    });
    let mut config = json(&edited.join("config.json"));
    config["vocab_size"] = serde_json::json!(limit);
    std::fs::write(edited.join("config.json"), config.to_string()).unwrap();
    ipa_err(
        &train_args(&ws, &ws.path("o"), &["--model", s(&edited)]),
        &["train.json", &format!("example {first_bad}:"), "vocabulary"],
    );
}

#[test]
fn a_test_prompt_beyond_the_positions_names_the_task_file_and_example() {
    let ws = Workspace::new("bad-long", 4, 3);
    let path = ws.dataset().join("boolq/test.json");
    let mut set = json(&path);
    // The tiny base has 256 positions.
    let long = "is the elephant bigger than the mouse ".repeat(100);
    set[2]["instruction"] = serde_json::json!(long);
    std::fs::write(&path, set.to_string()).unwrap();
    ipa_err(
        &eval_args(&ws.base(), &ws, &ws.path("e")),
        &["boolq/test.json", "example 2", "max_position_embeddings"],
    );
    // Nothing was evaluated.
    assert!(!ws.path("e").join("predictions.jsonl").exists());
}

// ---------------------------------------------------------------------------------------------
// Adapters from elsewhere, interrupts
// ---------------------------------------------------------------------------------------------

#[test]
fn an_hf_peft_adapter_folder_is_accepted_by_eval() {
    let ws = Workspace::new("bad-peft", 4, 2);
    let run = ws.path("run");
    ipa_ok(&train_args(
        &ws,
        &run,
        &["--max-steps", "3", "--keep", "last"],
    ));
    let peft = ws.path("peft");
    ipa_ok(&[
        "export",
        "--model",
        s(&ws.base()),
        "--adapter",
        s(&run.join("adapter")),
        "--out",
        s(&peft),
    ]);
    let ours = ws.path("eval-ours");
    let theirs = ws.path("eval-peft");
    let mut args = eval_args(&ws.base(), &ws, &ours);
    args.extend(["--adapter".into(), s(&run.join("adapter")).into()]);
    ipa_ok(&args);
    let mut args = eval_args(&ws.base(), &ws, &theirs);
    args.extend(["--adapter".into(), s(&peft).into()]);
    ipa_ok(&args);
    // The same adapter either way: the same generations.
    assert_eq!(
        read(&ours.join("predictions.jsonl")),
        read(&theirs.join("predictions.jsonl"))
    );
}

#[test]
fn ctrl_c_checkpoints_and_exits_130() {
    let ws = Workspace::new("bad-sigint", 40, 2);
    let out = ws.path("run");
    let args = train_args(&ws, &out, &["--epochs", "20", "--checkpoint-every", "1000"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ipa"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs (its metrics file has a step), then interrupt.
    let metrics = out.join("metrics.csv");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "ipa ended ({status}) before training:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(start.elapsed().as_secs() < 600, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("--resume continues"), "{stdout}");
    let latest = read(&out.join("checkpoints/latest"));
    assert!(latest.starts_with("step-"), "{latest}");
    assert!(!out.join("adapter").exists());
}

#[test]
fn fit_algorithm_settings_reach_the_fit() {
    let ws = Workspace::new("bad-gha", 10, 2);
    let (base, data) = (ws.base(), ws.train_json());
    let fit_args = |out: &Path, algorithm: &str| -> Vec<String> {
        [
            "fit",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--rank",
            "4",
            "--val-set-size",
            "4",
            "--algorithm",
            algorithm,
            "--out",
            s(out),
            "--quiet",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let (default, sanger) = (ws.path("gha"), ws.path("gha-largest"));
    ipa_ok(&fit_args(&default, "gha"));
    ipa_ok(&fit_args(&sanger, "gha:scale=largest,decay=0,lr=0.5"));
    let a = tensors(&default.join("projectors.safetensors"));
    let b = tensors(&sanger.join("projectors.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(
        a.iter().any(|(name, p)| p != &b[name]),
        "the step settings changed no projector"
    );
    let config = read(&sanger.join("fit_config.json"));
    assert!(
        config.contains("gha:scale=largest,decay=0,lr=0.5"),
        "{config}"
    );

    let bad = ws.path("bad");
    ipa_err(
        &fit_args(&bad, "gha:momentum=1"),
        &["momentum", "lr, decay"],
    );
    ipa_err(&fit_args(&bad, "gha:lr=fast"), &["lr=fast", "number"]);
    ipa_err(&fit_args(&bad, "gha:lr=-1"), &["learning rate", "positive"]);
    ipa_err(&fit_args(&bad, "rsvd:niter"), &["niter", "key=value"]);
    ipa_err(&fit_args(&bad, "pca"), &["unknown fit algorithm", "pca"]);
}
