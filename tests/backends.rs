//! The CPU backends against each other through the binary: `ipa train --backend flex` gives
//! ndarray's losses, step by step, within f32 tolerance (IPA: a fitted projector and a zero
//! up-projection, so no backend's random draw enters the run).

mod common;

use std::path::Path;

use common::{ipa_ok, s, Workspace};

fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| line.split(',').nth(2).unwrap().parse::<f64>().unwrap())
        .collect()
}

#[test]
fn flex_trains_as_ndarray_does() {
    let ws = Workspace::new("backends-flex", 8, 2);
    let mut all = Vec::new();
    for backend in ["ndarray", "flex"] {
        let run = ws.path(backend);
        ipa_ok(&[
            "train",
            "--backend",
            backend,
            "--model",
            s(&ws.base()),
            "--data",
            s(&ws.train_json()),
            "--method",
            "ipa",
            "--rank",
            "4",
            "--val-set-size",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--warmup-steps",
            "1",
            "--learning-rate",
            "5e-3",
            "--max-steps",
            "5",
            "--out",
            s(&run),
            "--quiet",
        ]);
        all.push(losses(&run));
    }
    let (ndarray, flex) = (&all[0], &all[1]);
    assert_eq!(ndarray.len(), 5);
    assert_eq!(ndarray.len(), flex.len());
    // The loss moves, so equal losses are not two constants agreeing.
    assert!((ndarray[0] - ndarray[4]).abs() > 1e-3, "{ndarray:?}");
    for (step, (a, b)) in ndarray.iter().zip(flex).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "step {}: ndarray {a} vs flex {b}",
            step + 1
        );
    }
}
