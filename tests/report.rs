//! `ipa report` on small run folders made here: the table's numbers are the hand-computed means
//! and standard deviations, and the plots are PNGs that decode.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// A finished run folder: settings, report, metrics and an evaluation.
fn write_run(
    dir: &Path,
    method: &str,
    rank: u64,
    train_projector: bool,
    seed: u64,
    accuracy: &[(&str, f64)],
    losses: &[f64],
) {
    std::fs::create_dir_all(dir.join("eval")).unwrap();
    let projectors = if method == "lora" {
        json!({"source": "random", "init": "kaiming"})
    } else {
        json!({"source": "pre_fit", "fit": {"algorithm": "ipca", "rank": rank, "fraction": 0.1,
            "batch_size": 64, "seed": seed}})
    };
    let config = json!({
        "settings": {
            "targets": ["q_proj", "v_proj"],
            "tuning": {"kind": "adapters", "adapter": {"method": method, "rank": rank},
                "projectors": projectors},
            "train": {"seed": seed},
        },
        "adapter": {"method": method, "rank": rank, "train_projector": train_projector,
            "dora": false},
    });
    std::fs::write(dir.join("train_config.json"), config.to_string()).unwrap();
    let params = if train_projector {
        2 * rank * 100
    } else {
        rank * 100
    };
    std::fs::write(
        dir.join("train_report.json"),
        json!({"trainable_params": params, "train_seconds": 10.0 + seed as f64}).to_string(),
    )
    .unwrap();
    let mut csv = String::from("step,epoch,loss,lr,valid_loss,accuracy,grad_norm\n");
    for (i, l) in losses.iter().enumerate() {
        csv.push_str(&format!("{},0,{l},0.001,,,\n", i + 1));
    }
    std::fs::write(dir.join("metrics.csv"), csv).unwrap();
    let mut acc: serde_json::Map<String, serde_json::Value> = accuracy
        .iter()
        .map(|(t, a)| (t.to_string(), json!(a)))
        .collect();
    let avg = accuracy.iter().map(|(_, a)| a).sum::<f64>() / accuracy.len() as f64;
    acc.insert("average".into(), json!(avg));
    std::fs::write(
        dir.join("eval/accuracy.json"),
        serde_json::Value::Object(acc).to_string(),
    )
    .unwrap();
}

/// An adapter folder with one layer's projector `p` (lora_A, `[1, n]`).
fn write_adapter(dir: &Path, p: &[f32]) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, p.len()], &bytes)
            .unwrap();
    let st =
        safetensors::tensor::serialize([("layers.0.q_proj.lora_A.weight", view)], None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), st).unwrap();
}

#[test]
fn the_table_is_the_mean_and_spread_over_seeds() {
    let root = temp_dir("report");
    let runs = root.join("runs");
    // LoRA (P trained) at two seeds, IPA (P frozen) at three, and one base evaluation.
    write_run(
        &runs.join("lora-0"),
        "lora",
        8,
        true,
        0,
        &[("a", 0.50), ("b", 0.70)],
        &[3.0, 2.0],
    );
    write_run(
        &runs.join("lora-1"),
        "lora",
        8,
        true,
        1,
        &[("a", 0.60), ("b", 0.90)],
        &[2.0, 1.0],
    );
    for (seed, a) in [(0, 0.40), (1, 0.50), (2, 0.90)] {
        write_run(
            &runs.join(format!("ipa-{seed}")),
            "ipa",
            8,
            false,
            seed,
            &[("a", a), ("b", 0.5)],
            &[4.0],
        );
    }
    let base = runs.join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(
        base.join("eval_config.json"),
        r#"{"settings": {"adapter": null}}"#,
    )
    .unwrap();
    std::fs::write(
        base.join("accuracy.json"),
        r#"{"a": 0.25, "b": 0.5, "average": 0.375}"#,
    )
    .unwrap();
    // LoRA's projector moved: cos([1,0], [0.6,0.8]) = 0.6 at seed 0, unchanged at seed 1.
    write_adapter(&runs.join("lora-0/adapter_init"), &[1.0, 0.0]);
    write_adapter(&runs.join("lora-0/adapter"), &[0.6, 0.8]);
    write_adapter(&runs.join("lora-1/adapter_init"), &[0.0, 2.0]);
    write_adapter(&runs.join("lora-1/adapter"), &[0.0, 3.0]);

    let out = root.join("report");
    let stdout = ipa_ok(&["report", s(&runs), "--out", s(&out)]);
    let table = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(stdout.contains("| variant |"), "{stdout}");
    // By hand: LoRA a: 50, 60 → 55.0 ± 7.1; b: 70, 90 → 80.0 ± 14.1; average 60, 75 → 67.5 ±
    // 10.6; time 10.5 s. IPA a: 40, 50, 90 → 60.0 ± 26.5; b: 50 → 50.0 ± 0.0; average 45, 50,
    // 70 → 55.0 ± 13.2.
    let row = |label: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no row `{label}` in\n{table}"))
            .to_string()
    };
    assert_eq!(
        row("LoRA r=8 (P trained)"),
        "| LoRA r=8 (P trained) | 1600 | 2 | 55.0 ± 7.1 | 80.0 ± 14.1 | 67.5 ± 10.6 | 10 s |"
    );
    assert_eq!(
        row("IPA r=8 (P frozen, ipca 10%)"),
        "| IPA r=8 (P frozen, ipca 10%) | 800 | 3 | 60.0 ± 26.5 | 50.0 ± 0.0 | 55.0 ± 13.2 | 11 s |"
    );
    assert_eq!(row("base"), "| base | 0 | 1 | 25.0 | 50.0 | 37.5 | – |");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let lora = report
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["label"] == "LoRA r=8 (P trained)")
        .unwrap();
    // Mean loss per step: (3 + 2) / 2, (2 + 1) / 2; cos(P, P₀): (0.6 + 1) / 2.
    assert_eq!(lora["losses"], json!([[1, 2.5], [2, 1.5]]));
    let c = lora["projector_cosine"][0][1].as_f64().unwrap();
    assert!((c - 0.8).abs() < 1e-6, "{c}");

    // The plots there is something to plot for are PNGs that decode.
    for name in ["loss_curves.png", "projector_cosine.png"] {
        let img = image::open(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width(), img.height()), (900, 560), "{name}");
    }
    // One rank and one fraction: nothing to plot against them.
    assert!(!out.join("accuracy_vs_rank.png").exists());
    assert!(table.contains("![loss_curves.png](loss_curves.png)"));

    // An archive keeps the records without the weights and reports the same table and
    // cosines; archiving again adds nothing; a changed record is refused, naming the file.
    let archive = root.join("archive");
    let report_2 = root.join("report-2");
    let archive_args = [
        "report",
        s(&runs),
        "--out",
        s(&report_2),
        "--archive",
        s(&archive),
    ];
    let stdout = ipa_ok(&archive_args);
    assert!(stdout.contains("archived 24 files"), "{stdout}");
    assert!(!archive.join("lora-0/adapter").exists());
    assert!(archive.join("lora-0/projector_cosine.json").is_file());
    assert!(archive.join("base/accuracy.json").is_file());
    let from_archive = root.join("report-archive");
    ipa_ok(&["report", s(&archive), "--out", s(&from_archive)]);
    assert_eq!(
        std::fs::read_to_string(from_archive.join("report.md")).unwrap(),
        table
    );
    // The same variants but for the folders they were read from.
    let without_dirs = |path: &Path| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for variant in v.as_array_mut().unwrap() {
            variant.as_object_mut().unwrap().remove("dirs");
        }
        v
    };
    assert_eq!(
        without_dirs(&from_archive.join("report.json")),
        without_dirs(&out.join("report.json"))
    );
    let again = ipa_ok(&archive_args);
    assert!(again.contains("archived 0 files"), "{again}");
    std::fs::write(
        runs.join("ipa-2/eval/accuracy.json"),
        r#"{"a": 0.1, "b": 0.5, "average": 0.3}"#,
    )
    .unwrap();
    ipa_err(
        &archive_args,
        &[
            "ipa-2/eval/accuracy.json",
            "already archived with other contents",
        ],
    );

    // Nothing to report is an error naming the folder.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    ipa_err(
        &["report", s(&empty), "--out", s(&out)],
        &["no run under", "empty"],
    );
    ipa_err(
        &[
            "report",
            s(&runs),
            "--out",
            s(&out),
            "--font",
            "/no/such.ttf",
        ],
        &["--font", "no such file"],
    );
}

#[test]
fn a_rank_sweep_gets_its_plot() {
    let root = temp_dir("report-rank");
    let runs = root.join("runs");
    for (rank, a) in [(4, 0.4), (8, 0.5), (16, 0.6)] {
        for method in ["lora", "ipa"] {
            write_run(
                &runs.join(format!("{method}-{rank}")),
                method,
                rank,
                method == "lora",
                0,
                &[("a", a)],
                &[1.0],
            );
        }
    }
    let out = root.join("report");
    ipa_ok(&["report", s(&runs), "--out", s(&out)]);
    let img = image::open(out.join("accuracy_vs_rank.png")).unwrap();
    assert_eq!(img.width(), 900);
    ipa_ok(&[
        "report",
        s(&runs),
        "--out",
        s(&root.join("tables")),
        "--no-plots",
    ]);
    assert!(!root.join("tables/loss_curves.png").exists());
    assert!(root.join("tables/report.md").is_file());
}

#[test]
fn runs_that_differ_in_another_setting_stay_apart() {
    // IPA at the default scale (two seeds) and at scale 2 (one seed, and one at rank 4): the
    // scale is not one of the table's named settings, but it differs, so it splits the rows
    // and names them, the same way at every rank (a rank sweep's series stay whole).
    let root = temp_dir("report-extra");
    let runs = root.join("runs");
    let with_scale = |dir: &Path, factor: f64| {
        let path = dir.join("train_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["settings"]["tuning"]["adapter"]["scaling"] = json!(factor);
        std::fs::write(&path, config.to_string()).unwrap();
    };
    for (name, seed, factor, a) in [
        ("ipa-0", 0, None, 0.4),
        ("ipa-1", 1, None, 0.6),
        ("ipa-scale2-0", 0, Some(2.0), 0.9),
    ] {
        let dir = runs.join(name);
        write_run(&dir, "ipa", 8, false, seed, &[("a", a)], &[1.0]);
        if let Some(factor) = factor {
            with_scale(&dir, factor);
        }
    }
    let r4 = runs.join("ipa-scale2-r4");
    write_run(&r4, "ipa", 4, false, 0, &[("a", 0.7)], &[1.0]);
    with_scale(&r4, 2.0);
    let out = root.join("report");
    ipa_ok(&["report", s(&runs), "--out", s(&out), "--no-plots"]);
    let table = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        table.contains("| IPA r=8 (P frozen, ipca 10%, scaling default) | 800 | 2 | 50.0 ± 14.1 |"),
        "{table}"
    );
    assert!(
        table.contains("| IPA r=8 (P frozen, ipca 10%, scaling 2.0) | 800 | 1 | 90.0 |"),
        "{table}"
    );
    assert!(
        table.contains("| IPA r=4 (P frozen, ipca 10%, scaling 2.0) | 400 | 1 | 70.0 |"),
        "{table}"
    );
    // Settings the runs share, and the seeds, name nothing.
    assert!(!table.contains("seed"), "{table}");
    assert_eq!(table.matches("| IPA r=").count(), 3, "{table}");
}
