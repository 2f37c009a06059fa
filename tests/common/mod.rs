//! Shared test helpers. The backend under test is burn-flex, the binary's default, unless the
//! tests are built with `--features test-ndarray` (burn's legacy CPU backend), `test-wgpu` or
//! `test-cuda` (a GPU).
#![allow(dead_code)]

pub mod gguf_writer;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

#[cfg(feature = "test-cuda")]
pub type TestBackend = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
pub type TestBackend = burn::backend::Wgpu;
#[cfg(all(
    feature = "test-ndarray",
    not(any(feature = "test-wgpu", feature = "test-cuda"))
))]
pub type TestBackend = burn::backend::NdArray<f32>;
#[cfg(not(any(feature = "test-ndarray", feature = "test-wgpu", feature = "test-cuda")))]
pub type TestBackend = burn::backend::Flex;

/// f64 CPU backend for checks that need more than f32 precision.
pub type Exact = burn::backend::NdArray<f64>;

/// Absolute tolerance suited to a backend's float precision.
pub fn tol<B: Backend>(f32_tol: f64, f64_tol: f64) -> f64 {
    let probe = Tensor::<B, 1>::zeros([1], &Default::default());
    match probe.dtype() {
        burn::tensor::DType::F64 => f64_tol,
        _ => f32_tol,
    }
}

/// The source checkout the fixtures are read from: `BURN_IPA_SOURCE` when set (test binaries
/// built on one machine and run on another, see `scripts/gpu-check.sh`), else the checkout
/// they were built from.
pub fn source_root() -> std::path::PathBuf {
    std::env::var_os("BURN_IPA_SOURCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", source_root().display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn vec1(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn mat(v: &serde_json::Value) -> (Vec<f64>, [usize; 2]) {
    let rows: Vec<Vec<f64>> = v.as_array().expect("array").iter().map(vec1).collect();
    let r = rows.len();
    let c = rows.first().map(|x| x.len()).unwrap_or(0);
    (rows.into_iter().flatten().collect(), [r, c])
}

pub fn tensor2<B: Backend>(values: Vec<f64>, shape: [usize; 2]) -> Tensor<B, 2> {
    let device = Default::default();
    let dtype = Tensor::<B, 1>::zeros([1], &device).dtype();
    Tensor::from_data(TensorData::new(values, shape).convert_dtype(dtype), &device)
}

pub fn tensor1<B: Backend>(values: Vec<f64>) -> Tensor<B, 1> {
    let device = Default::default();
    let n = values.len();
    let dtype = Tensor::<B, 1>::zeros([1], &device).dtype();
    Tensor::from_data(TensorData::new(values, [n]).convert_dtype(dtype), &device)
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

pub fn transpose(values: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = values[i * cols + j];
        }
    }
    out
}

#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f64::max);
    assert!(
        worst <= tol,
        "{what}: max relative error {worst:e} > {tol:e}"
    );
}

/// `assert_close` on f32 values (adapter weights), compared in f64.
pub fn assert_close_f32(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    assert_close(&got, &want, tol, what);
}

/// Relative tolerance of "the same run" across processes (a resume against the uninterrupted
/// run). Bit-for-bit equality is what one machine usually gives, but no backend promises it:
/// GPU kernels are autotuned again in a new process, and the CPU kernels may sum in another
/// order by thread count, buffer alignment or whether an input could be updated in place
/// (seen once on a CPU CI machine: one step's gradient norm 1 f32 ulp apart). A resume that
/// lost the optimizer state, the schedule or the dropout seeds is off by orders of magnitude
/// more.
pub const SAME_RUN_TOL: f64 = 1e-5;

/// Two runs' step records are the same run: steps, epochs and learning rates equal; losses,
/// validation losses, accuracies and gradient norms within `SAME_RUN_TOL`.
pub fn assert_same_history(
    got: &[burn_ipa::train::StepRecord],
    want: &[burn_ipa::train::StepRecord],
) {
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= SAME_RUN_TOL * (1.0 + y.abs()),
        (x, y) => x == y,
    };
    assert_eq!(got.len(), want.len(), "steps in the history");
    for (a, b) in got.iter().zip(want) {
        assert_eq!(
            (a.step, a.epoch, a.lr),
            (b.step, b.epoch, b.lr),
            "{a:?} vs {b:?}"
        );
        assert!(
            close(Some(a.loss), Some(b.loss))
                && close(a.valid_loss, b.valid_loss)
                && close(a.accuracy, b.accuracy)
                && close(a.grad_norm, b.grad_norm),
            "{a:?} vs {b:?}"
        );
    }
}

/// The same as `assert_same_history`, on two `metrics.csv` files' contents.
pub fn assert_same_metrics_csv(got: &str, want: &str) {
    let parse = |csv: &str| -> Vec<burn_ipa::train::StepRecord> {
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(burn_ipa::train::trainer::METRICS_HEADER));
        lines
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                assert_eq!(f.len(), 7, "metrics.csv line {line:?}");
                let opt = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
                burn_ipa::train::StepRecord {
                    step: f[0].parse().unwrap(),
                    epoch: f[1].parse().unwrap(),
                    loss: f[2].parse().unwrap(),
                    lr: f[3].parse().unwrap(),
                    valid_loss: opt(f[4]),
                    accuracy: opt(f[5]),
                    grad_norm: opt(f[6]),
                }
            })
            .collect()
    };
    assert_same_history(&parse(got), &parse(want));
}

/// Sine of the largest principal angle between the row spaces of two `[r, d]` matrices with
/// orthonormal rows: `‖(I − BᵀB) Aᵀ‖₂`, computed as the largest residual norm.
pub fn max_principal_sine(a: &[f64], b: &[f64], r: usize, d: usize) -> f64 {
    // Residual of each A row after projecting on B's rows, then the 2-norm of the residual
    // matrix bounded via its Gram matrix's largest eigenvalue (power iteration in f64).
    let mut resid = vec![0.0; r * d];
    for i in 0..r {
        let ai = &a[i * d..(i + 1) * d];
        let mut res = ai.to_vec();
        for k in 0..r {
            let bk = &b[k * d..(k + 1) * d];
            let c: f64 = ai.iter().zip(bk).map(|(x, y)| x * y).sum();
            for j in 0..d {
                res[j] -= c * bk[j];
            }
        }
        resid[i * d..(i + 1) * d].copy_from_slice(&res);
    }
    let mut gram = vec![0.0; r * r];
    for i in 0..r {
        for k in 0..r {
            gram[i * r + k] = (0..d).map(|j| resid[i * d + j] * resid[k * d + j]).sum();
        }
    }
    let mut v = vec![1.0; r];
    let mut lambda = 0.0;
    for _ in 0..200 {
        let w: Vec<f64> = (0..r)
            .map(|i| (0..r).map(|k| gram[i * r + k] * v[k]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        lambda = norm;
        v = w.iter().map(|x| x / norm).collect();
    }
    lambda.sqrt()
}

/// The tiny random Llama-2 checkpoint made by `make_model_fixtures.py`.
pub fn llama2_dir() -> std::path::PathBuf {
    source_root().join("tests/fixtures/models/llama2")
}

/// Token sequences with a learnable pattern (each next token = previous + 1, mod 50) and
/// ragged lengths, so batches carry padding.
pub fn ragged_examples(n: usize) -> Vec<burn_ipa::data::instruction::TokenizedExample> {
    (0..n)
        .map(|i| {
            let len = 6 + i % 5;
            let ids: Vec<u32> = (0..len).map(|j| ((i * 7 + j) % 50) as u32 + 3).collect();
            let labels = ids.iter().map(|&t| t as i64).collect();
            burn_ipa::data::instruction::TokenizedExample {
                input_ids: ids,
                labels,
            }
        })
        .collect()
}

/// Dropout and initialisers draw from the backend's process-wide generator, which the
/// training loop seeds per micro-batch: tests of one binary that train hold this lock so
/// their draws do not interleave.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh, empty folder in the system temp dir, unique to this process and `name`, removed
/// when the guard drops — unless the test is failing, so its files can be inspected.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("burn-ipa-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A test folder: derefs to its path, deleted on drop (kept when the test panics).
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &std::path::PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Every adapter tensor of `model` (paths containing `.adapter.`), flattened in f32, in module
/// order: equal vectors mean equal adapters.
pub fn adapter_values<BB: Backend, M: burn_store::ModuleSnapshot<BB>>(model: &M) -> Vec<f32> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|s| s.full_path().contains(".adapter."))
        .flat_map(|s| {
            s.to_data()
                .unwrap()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap()
        })
        .collect()
}

/// The `input_ids` and `attention_mask` of an HF fixture's expected.json: ids `[batch, seq]`,
/// the mask flattened row by row, and the shape.
pub fn ids_and_mask<B: Backend>(
    expected: &serde_json::Value,
) -> (Tensor<B, 2, burn::tensor::Int>, Vec<bool>, [usize; 2]) {
    let rows: Vec<Vec<i64>> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    let (b, s) = (rows.len(), rows[0].len());
    let mask: Vec<bool> = expected["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() != 0)
                .collect::<Vec<_>>()
        })
        .collect();
    let ids = Tensor::from_data(TensorData::new(rows.concat(), [b, s]), &Default::default());
    (ids, mask, [b, s])
}

/// A deterministic 8×8 image, different for each `seed`.
pub fn write_png(path: &std::path::Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut img = image::RgbImage::new(8, 8);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let v = |k: u32| ((x * 37 + y * 91 + seed * 53 + k * 71) * (seed + 3) % 256) as u8;
        *px = image::Rgb([v(0), v(1), v(2)]);
    }
    img.save(path).unwrap();
}

/// What a run of the `ipa` binary printed and returned.
#[derive(Debug)]
pub struct IpaRun {
    /// Exit status (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl IpaRun {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs the `ipa` binary with `args`.
pub fn ipa_run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> IpaRun {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipa"))
        .args(args)
        .output()
        .expect("the ipa binary runs");
    IpaRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ipa` and asserts it succeeded; returns its standard output.
#[track_caller]
pub fn ipa_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let run = ipa_run(args);
    assert!(
        run.success(),
        "ipa {args:?} failed ({:?}):\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// Runs `ipa`, asserts it failed with status 1 (an error, not a panic or a signal) and that
/// standard error contains every one of `needles`; returns standard error.
#[track_caller]
pub fn ipa_err<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    needles: &[&str],
) -> String {
    let run = ipa_run(args);
    assert_eq!(
        run.code,
        Some(1),
        "ipa {args:?} should fail with an error:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "ipa {args:?}: the error should mention `{needle}`:\n{}",
            run.stderr
        );
    }
    run.stderr
}

/// A path as a `&str` for argument lists.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A folder with the embedded tiny base (`base/`) and a generated task set (`data/train.json`,
/// `data/dataset/<task>/test.json`): what the binary's tests train and evaluate on.
pub struct Workspace {
    pub root: TempDir,
}

impl Workspace {
    pub fn new(name: &str, train_per_task: usize, test_per_task: usize) -> Self {
        let root = temp_dir(name);
        burn_ipa::quickstart::write_embedded_base(&root.join("base")).unwrap();
        let (train, tests) =
            burn_ipa::quickstart::world::task_set(train_per_task, test_per_task, 5);
        burn_ipa::quickstart::write_task_set(&root.join("data"), &train, &tests).unwrap();
        Self { root }
    }
    pub fn base(&self) -> std::path::PathBuf {
        self.root.join("base")
    }
    pub fn train_json(&self) -> std::path::PathBuf {
        self.root.join("data/train.json")
    }
    pub fn dataset(&self) -> std::path::PathBuf {
        self.root.join("data/dataset")
    }
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.root.join(name)
    }
}

/// The f32 values of every tensor of a safetensors file, by name.
pub fn tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// `args` with `extra` applied: a flag of `extra` already in `args` gets the new value (a
/// flag without a value is kept once), other flags are appended.
pub fn with_flags(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match (args.iter().position(|a| a == flag), value) {
            (Some(at), Some(v)) => args[at + 1] = v.to_string(),
            (Some(_), None) => {}
            (None, v) => {
                args.push(flag.to_string());
                args.extend(v.map(|v| v.to_string()));
            }
        }
        i += if value.is_some() { 2 } else { 1 };
    }
    args
}

/// Attaches an IPA adapter of rank 4 to q/v/down of every layer with a random `B` drawn from
/// N(0, std²) after seeding the backend: a non-zero update whose effect tests can see.
pub fn attach_random_adapter(
    model: &mut burn_ipa::models::Decoder<TestBackend>,
    std: f64,
    seed: u64,
) -> burn_ipa::adapter::AdapterConfig {
    use burn::module::Param;
    use burn::tensor::Distribution;
    use burn_ipa::adapter::{AdapterConfig, ProjectorInit};
    TestBackend::seed(&Default::default(), seed);
    let config = AdapterConfig::ipa(4);
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].map(String::from).into();
    model
        .attach_adapters(&targets, None, &config, |_| ProjectorInit::KaimingUniform)
        .unwrap();
    for (_, linear) in model.linears_mut() {
        if let Some(a) = linear.adapter.as_mut() {
            let dims = a.up.val().shape().dims::<2>();
            a.up = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Normal(0.0, std),
                &Default::default(),
            ));
        }
    }
    config
}
