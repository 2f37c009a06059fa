//! `ipa train` and `ipa eval` use the authors' defaults (valeoai/peft-ipa's scripts on HF
//! Trainer's defaults), and each setting that changes them has its effect, through the binary.

mod common;

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use common::*;

type B = TestBackend;

fn train(ws: &Workspace, out: &Path, extra: &[&str]) -> String {
    let mut all = vec!["--rank", "4"];
    all.extend_from_slice(extra);
    train_without_rank(ws, out, &all)
}

fn train_without_rank(ws: &Workspace, out: &Path, extra: &[&str]) -> String {
    let args: Vec<String> = [
        "train",
        "--model",
        s(&ws.base()),
        "--data",
        s(&ws.train_json()),
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
        "--out",
        s(out),
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    ipa_ok(&with_flags(args, extra))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn adapter(out: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    tensors(&out.join("adapter/adapter_model.safetensors"))
}

/// `[rows, cols]` of a tensor in an adapter file.
fn shape_of(out: &Path, name: &str) -> Vec<usize> {
    let bytes = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().shape().to_vec()
}

fn one<'a>(t: &'a std::collections::BTreeMap<String, Vec<f32>>, suffix: &str) -> &'a Vec<f32> {
    t.iter()
        .find(|(k, _)| k.ends_with(suffix))
        .unwrap_or_else(|| panic!("no tensor ending in {suffix}"))
        .1
}

#[test]
fn ipa_and_lora_defaults_are_the_official_scripts() {
    let ws = Workspace::new("defaults-ipa", 10, 2);
    let out = ws.path("ipa");
    train(&ws, &out, &["--max-steps", "1"]);
    let config = json(&out.join("train_config.json"));
    let adapter = &config["adapter"];
    // IPA: scaling 0.25, dropout 0, projector frozen.
    assert_eq!(adapter["scaling"]["factor"], 0.25);
    assert_eq!(adapter["dropout"], 0.0);
    assert_eq!(adapter["train_projector"], false);
    let settings = &config["settings"];
    let t = &settings["train"];
    assert_eq!(t["learning_rate"], 1e-4);
    assert_eq!(t["max_grad_norm"], 1.0);
    assert_eq!(t["adam_epsilon"], 1e-8);
    assert_eq!(t["checkpoint_every"], 80);
    assert_eq!(t["valid_every"], 80);
    assert_eq!(settings["keep"], "best");
    let fit = &settings["tuning"]["projectors"]["fit"];
    assert_eq!(settings["tuning"]["projectors"]["source"], "pre_fit");
    assert_eq!(
        (fit["fraction"].as_f64(), fit["batch_size"].as_u64()),
        (Some(0.1), Some(64))
    );

    // LoRA: alpha 2r, dropout 0.05, projector trained from a Kaiming-uniform draw.
    let lora = ws.path("lora");
    train(&ws, &lora, &["--method", "lora", "--max-steps", "1"]);
    let config = json(&lora.join("train_config.json"));
    assert_eq!(config["adapter"]["scaling"]["alpha"]["alpha"], 8.0);
    assert_eq!(config["adapter"]["dropout"], 0.05);
    assert_eq!(config["adapter"]["train_projector"], true);
    assert_eq!(
        config["settings"]["tuning"]["projectors"]["init"],
        "kaiming"
    );
}

#[test]
fn a_frozen_lora_projector_is_orthogonal_unless_asked_otherwise() {
    let ws = Workspace::new("defaults-ortho", 10, 2);
    let frozen = ws.path("frozen");
    let stdout = train(
        &ws,
        &frozen,
        &[
            "--method",
            "lora",
            "--train-projector",
            "false",
            "--max-steps",
            "1",
        ],
    );
    assert!(stdout.contains("adapter of step 1"), "{stdout}");
    let report = json(&frozen.join("train_report.json"));
    // B only: r · d_out per adapted linear (2 layers of q 64, k 32, v 32, up 176, down 64).
    assert_eq!(
        report["trainable_params"],
        2 * 4 * (64 + 32 + 32 + 176 + 64)
    );
    let weights = adapter(&frozen);
    let name = weights
        .keys()
        .find(|k| k.ends_with("layers.0.mlp.up_proj.lora_A.weight"))
        .unwrap()
        .clone();
    assert_eq!(shape_of(&frozen, &name), [4, 64]);
    let p = &weights[&name];
    // Orthonormal rows: P Pᵀ = I.
    for i in 0..4 {
        for j in 0..4 {
            let dot: f32 = (0..64).map(|k| p[i * 64 + k] * p[j * 64 + k]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-4, "P Pᵀ[{i},{j}] = {dot}");
        }
    }
    // --projector-init kaiming: U(−1/√64, 1/√64) entries, rows far from unit length.
    let kaiming = ws.path("kaiming");
    train(
        &ws,
        &kaiming,
        &[
            "--method",
            "lora",
            "--train-projector",
            "false",
            "--projector-init",
            "kaiming",
            "--max-steps",
            "1",
        ],
    );
    let p = one(&adapter(&kaiming), "layers.0.mlp.up_proj.lora_A.weight").clone();
    assert!(p.iter().all(|x| x.abs() <= 0.125 + 1e-6));
    let row: f32 = p[..64].iter().map(|x| x * x).sum();
    assert!(row < 0.6, "row norm² {row}");
}

#[test]
fn scaling_reaches_the_merged_weights() {
    let ws = Workspace::new("defaults-scaling", 10, 2);
    let out = ws.path("run");
    train(
        &ws,
        &out,
        &[
            "--scaling",
            "0.7",
            "--max-steps",
            "3",
            "--learning-rate",
            "1e-2",
        ],
    );
    let config = json(&out.join("adapter/adapter_config.json"));
    assert_eq!(config["adapter"]["scaling"]["factor"], 0.7);
    let merged = ws.path("merged");
    ipa_ok(&[
        "merge",
        "--model",
        s(&ws.base()),
        "--adapter",
        s(&out.join("adapter")),
        "--f32",
        "--out",
        s(&merged),
    ]);
    // W_merged − W0 = s · B · P for q_proj of layer 0 ([64, 64], file layout [out, in]).
    let base = tensors(&ws.base().join("model.safetensors"));
    let merged = tensors(&merged.join("model.safetensors"));
    let name = "model.layers.0.self_attn.q_proj.weight";
    let weights = adapter(&out);
    let a = one(&weights, "layers.0.self_attn.q_proj.lora_A.weight");
    let b = one(&weights, "layers.0.self_attn.q_proj.lora_B.weight");
    let (r, d) = (4, 64);
    let p = Tensor::<B, 2>::from_data(TensorData::new(a.clone(), [r, d]), &Default::default());
    let up = Tensor::<B, 2>::from_data(TensorData::new(b.clone(), [d, r]), &Default::default());
    let delta = host(up.matmul(p).mul_scalar(0.7));
    let got: Vec<f64> = merged[name]
        .iter()
        .zip(&base[name])
        .map(|(m, w)| (*m - *w) as f64)
        .collect();
    assert!(
        delta.iter().any(|x| x.abs() > 1e-6),
        "the adapter did not train"
    );
    assert_close(&got, &delta, 1e-5, "merged update");
}

#[test]
fn max_grad_norm_and_adam_epsilon_change_the_update() {
    let ws = Workspace::new("defaults-clip", 10, 2);
    let common = [
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-2",
        "--keep",
        "last",
    ];
    let run = |name: &str, extra: &[&str]| {
        let out = ws.path(name);
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        train(&ws, &out, &args);
        out
    };
    let plain = run("plain", &["--max-grad-norm", "0"]);
    let clipped = run("clipped", &["--max-grad-norm", "1e-4"]);
    let eps = run("eps", &["--max-grad-norm", "0", "--adam-epsilon", "1.0"]);
    // Every step's gradient norm is logged, far above the clip.
    let metrics = std::fs::read_to_string(plain.join("metrics.csv")).unwrap();
    let norms: Vec<f64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(norms.len(), 3);
    assert!(norms.iter().all(|&n| n > 1e-3), "{norms:?}");
    let (p, c, e) = (adapter(&plain), adapter(&clipped), adapter(&eps));
    // Adam's first step does not see a gradient's scale; later ones do, once clipped.
    assert!(p != c, "clipping changed nothing");
    // ε = 1 dwarfs √v: the steps shrink.
    let size = |t: &std::collections::BTreeMap<String, Vec<f32>>| -> f32 {
        t.iter()
            .filter(|(k, _)| k.contains("lora_B"))
            .flat_map(|(_, v)| v.iter().map(|x| x.abs()))
            .sum()
    };
    assert!(size(&e) < 0.1 * size(&p), "{} vs {}", size(&e), size(&p));
}

#[test]
fn keep_best_keeps_the_adapter_of_the_lowest_validation_loss() {
    let ws = Workspace::new("defaults-keep", 10, 2);
    // A learning rate still warming up at the end overshoots: the last step is not the best.
    let settings = [
        "--valid-every",
        "1",
        "--learning-rate",
        "10",
        "--warmup-steps",
        "100",
        "--max-grad-norm",
        "0",
        "--checkpoint-every",
        "1000",
    ];
    let best = ws.path("best");
    train(&ws, &best, &settings);
    let metrics = std::fs::read_to_string(best.join("metrics.csv")).unwrap();
    let valid: Vec<(usize, f64)> = metrics
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect();
    assert_eq!(valid.len(), 9);
    let argmin = valid
        .iter()
        .fold(valid[0], |b, &v| if v.1 < b.1 { v } else { b });
    let report = json(&best.join("train_report.json"));
    assert_eq!(report["kept_step"], argmin.0);
    assert_eq!(report["kept_valid_loss"], argmin.1);
    assert_ne!(argmin.0, 9, "validation losses {valid:?}");
    // The kept adapter is the one a run stopped at that step leaves (the schedule spans the
    // same epochs either way).
    let stopped = ws.path("stopped");
    let steps = argmin.0.to_string();
    let mut args = settings.to_vec();
    args.extend(["--keep", "last", "--max-steps", &steps]);
    train(&ws, &stopped, &args);
    assert!(adapter(&best) == adapter(&stopped));
    // --keep last keeps step 9's.
    let last = ws.path("last");
    let mut args = settings.to_vec();
    args.extend(["--keep", "last"]);
    train(&ws, &last, &args);
    assert_eq!(json(&last.join("train_report.json"))["kept_step"], 9);
    assert!(adapter(&last) != adapter(&best));
}

#[test]
fn eval_uses_four_beams_by_default() {
    let ws = Workspace::new("defaults-beams", 4, 2);
    let (base, dataset) = (ws.base(), ws.dataset());
    let eval = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(&base),
            "--data-dir",
            s(&dataset),
            "--tasks",
            "boolq,piqa",
            "--max-new-tokens",
            "5",
            "--out",
            s(out),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        ipa_ok(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        json(&out.join("eval_config.json"))["settings"]["num_beams"].clone()
    };
    let beams = ws.path("beams");
    assert_eq!(eval(&beams, &[]), 4);
    let greedy = ws.path("greedy");
    assert_eq!(eval(&greedy, &["--num-beams", "1"]), 1);
    // The outputs are the generator's with 4 beams, computed here from the same prompts.
    let model =
        burn_ipa::models::loading::load_decoder::<B>(&ws.base(), &Default::default()).unwrap();
    let tokenizer = burn_ipa::models::tokenizer::Tokenizer::from_dir(&ws.base()).unwrap();
    let set =
        burn_ipa::data::instruction::load_examples(&ws.dataset().join("boolq/test.json"), true)
            .unwrap();
    let prompt = burn_ipa::data::instruction::PromptStyle::LlmAdapters.prompt(&set[0]);
    let ids = tokenizer.encode(&prompt, true).unwrap();
    let mut generation = burn_ipa::models::generate::GenerationConfig::greedy(&model, 5);
    generation.pad_token_id = burn_ipa::pipelines::instruct::pad_id_of(&tokenizer);
    let out =
        burn_ipa::models::generate::generate(&model, &[ids], &generation.with_beams(4)).unwrap();
    let text = tokenizer.decode(&out[0], true).unwrap();
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(beams.join("predictions.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["output"], text);
}

#[test]
fn weights_and_full_fine_tuning_train_only_what_they_say() {
    let ws = Workspace::new("defaults-weights", 10, 2);
    let base = tensors(&ws.base().join("model.safetensors"));
    let run = |name: &str, extra: &[&str]| {
        let out = ws.path(name);
        let mut args = vec![
            "--max-steps",
            "3",
            "--learning-rate",
            "1e-3",
            "--keep",
            "last",
            "--valid-every",
            "1",
        ];
        args.extend_from_slice(extra);
        let stdout = train_without_rank(&ws, &out, &args);
        assert!(stdout.contains("model of step 3"), "{stdout}");
        out
    };
    // q and v only: their weights move, every other tensor is bit-identical.
    let qv = run("qv", &["--method", "weights", "--targets", "q_proj,v_proj"]);
    let trained = tensors(&qv.join("model/model.safetensors"));
    assert_eq!(trained.len(), base.len());
    for (name, values) in &trained {
        let moved = values != &base[name];
        let target = name.contains("q_proj") || name.contains("v_proj");
        assert_eq!(moved, target, "{name}: moved {moved}");
    }
    let report = json(&qv.join("train_report.json"));
    // 2 layers × (q 64×64 + v 32×64).
    assert_eq!(report["trainable_params"], 2 * (64 * 64 + 32 * 64));
    assert!(report["adapter"].is_null());
    // The held-out loss falls (step 1 has a zero learning rate: the base model's loss).
    let valid = |out: &Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("metrics.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(4).unwrap().parse().unwrap())
            .collect()
    };
    let losses = valid(&qv);
    assert!(losses[2] < losses[0], "{losses:?}");
    // The result loads as a plain model and `ipa eval` takes it.
    ipa_ok(&[
        "eval",
        "--model",
        s(&qv.join("model")),
        "--data-dir",
        s(&ws.dataset()),
        "--tasks",
        "boolq",
        "--num-beams",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        s(&ws.path("qv-eval")),
        "--quiet",
    ]);

    // Full fine-tuning: every tensor moves (norms and embeddings included).
    let full = run("full", &["--method", "full"]);
    let trained = tensors(&full.join("model/model.safetensors"));
    let unmoved: Vec<&String> = trained
        .iter()
        .filter(|(name, v)| **v == base[*name])
        .map(|(n, _)| n)
        .collect();
    assert!(unmoved.is_empty(), "unchanged: {unmoved:?}");
    let losses = valid(&full);
    assert!(losses[2] < losses[0], "{losses:?}");
    let total: usize = base.values().map(Vec::len).sum();
    assert_eq!(
        json(&full.join("train_report.json"))["trainable_params"],
        total
    );

    // Adapter settings mean nothing there: refused.
    let out = ws.path("refused");
    let run = ipa_run(&with_flags(
        vec![
            "train".into(),
            "--model".into(),
            s(&ws.base()).into(),
            "--data".into(),
            s(&ws.train_json()).into(),
            "--out".into(),
            s(&out).into(),
        ],
        &["--method", "full", "--rank", "8"],
    ));
    assert!(
        !run.success() && run.stderr.contains("--rank"),
        "{}",
        run.stderr
    );
}
