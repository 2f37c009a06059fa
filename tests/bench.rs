//! `ipa bench` through the binary: each benchmark runs, its flags reach it (the trainable
//! count follows --method and --rank by the closed form), its JSON is written, and bad
//! settings are errors naming the flag. No timing is asserted.

mod common;

use common::{ipa_err, ipa_ok};

fn rows(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Trainable parameters of `method` at rank `r` on the `tiny` bench decoder (hidden 64,
/// intermediate 128, 2 layers, q,k,v,up,down): LoRA trains P and B, IPA only B.
fn tiny_trainable(method: &str, r: usize) -> usize {
    let (h, i) = (64, 128);
    // (d_in, d_out) of q, k, v, up, down.
    let shapes = [(h, h), (h, h), (h, h), (h, i), (i, h)];
    let per_layer: usize = shapes
        .iter()
        .map(|&(d_in, d_out)| match method {
            "lora" => r * (d_in + d_out),
            "ipa" => r * d_out,
            _ => unreachable!(),
        })
        .sum();
    2 * per_layer
}

#[test]
fn bench_train_follows_its_flags_and_writes_json() {
    let dir = common::temp_dir("bench-train");
    for (method, rank, backend) in [("lora", 4, "ndarray"), ("ipa", 8, "flex")] {
        let json = dir.join(format!("{method}.json"));
        let stdout = ipa_ok(&[
            "bench",
            "train",
            "--backend",
            backend,
            "--model",
            "random:tiny",
            "--method",
            method,
            "--rank",
            &rank.to_string(),
            "--batch",
            "2",
            "--seq",
            "8",
            "--warmup",
            "0",
            "--steps",
            "2",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(stdout.contains("tokens/s"), "{stdout}");
        let rows = rows(&json);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row["backend"], backend);
        assert_eq!(row["rank"], rank);
        assert_eq!(row["batch"], 2);
        assert_eq!(row["seq"], 8);
        assert_eq!(row["steps"], 2);
        assert_eq!(
            row["trainable_params"].as_u64().unwrap() as usize,
            tiny_trainable(method, rank),
            "{method} r={rank}"
        );
        assert!(row["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert!(row["last_loss"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn bench_fit_pass_times_the_forward_and_each_algorithm() {
    let dir = common::temp_dir("bench-fit-pass");
    let json = dir.join("rows.json");
    ipa_ok(&[
        "bench",
        "fit-pass",
        "--model",
        "random:tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--rank",
        "4",
        "--batches",
        "1",
        "--algorithms",
        "ipca,gha:lr=0.01",
        "--targets",
        "q_proj,down_proj",
        "--json",
        json.to_str().unwrap(),
    ]);
    let names: Vec<String> = rows(&json)
        .iter()
        .map(|r| r["algorithm"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["forward", "ipca", "gha"]);
    assert!(rows(&json)
        .iter()
        .all(|r| r["targets"] == "q_proj,down_proj" && r["rank"] == 4));
}

#[test]
fn bench_forward_runs_the_sizes_asked_for() {
    let dir = common::temp_dir("bench-forward");
    let json = dir.join("rows.json");
    ipa_ok(&[
        "bench",
        "forward",
        "--sizes",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "4",
        "--iters",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let rows = rows(&json);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["size"], "tiny");
    assert_eq!(rows[0]["tokens"], 4);
}

#[test]
fn bench_settings_that_cannot_run_are_errors_naming_the_flag() {
    let cases: [(&[&str], &str); 10] = [
        (
            &["bench", "fit", "--widths", "0", "--rank", "4"],
            "--widths 0",
        ),
        (&["bench", "fit", "--rank", "0"], "--rank"),
        (&["bench", "fit", "--batch-tokens", "0"], "--batch-tokens"),
        (&["bench", "fit", "--max-seconds", "0"], "--max-seconds"),
        (&["bench", "forward", "--sizes", "huge"], "huge"),
        (&["bench", "forward", "--iters", "0"], "--iters"),
        (
            &["bench", "train", "--model", "no/such/model"],
            "no/such/model",
        ),
        (&["bench", "train", "--model", "random:huge"], "huge"),
        (
            &["bench", "train", "--model", "random:tiny", "--seq", "1"],
            "--seq 1",
        ),
        (
            &[
                "bench",
                "train",
                "--model",
                "random:tiny",
                "--method",
                "full",
                "--dora",
            ],
            "--dora",
        ),
    ];
    // ipa_err also asserts exit status 1: an error, not a panic.
    for (args, needle) in cases {
        ipa_err(args, &[needle]);
    }
}
