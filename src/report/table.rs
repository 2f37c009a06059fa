//! Runs grouped into variants (the same settings but the seed), with the mean and spread of
//! their figures, as a Markdown table.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::runs::RunRecord;

/// The settings a variant is told apart by (what `ipa train` was asked), as short fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VariantKey {
    /// `base`, `lora`, `ipa`, `weights` or `full`.
    pub method: String,
    /// Adapter rank.
    pub rank: Option<u64>,
    /// Whether the projector trains.
    pub projector_trained: Option<bool>,
    /// DoRA on top.
    pub dora: bool,
    /// How the projector was obtained: `kaiming`, `orthogonal`, `ipca 10%`, `saved`, ...
    pub projector: Option<String>,
    /// Fit fraction (IPA fitted before training).
    pub fit_fraction: Option<f64>,
    /// Fit algorithm (IPA).
    pub fit_algorithm: Option<String>,
    /// The targets, for weight fine-tuning.
    pub targets: Option<String>,
    /// Any other setting that differs between runs the fields above would put together (the
    /// adapter's scale, the learning rate, ...), as `(name, value)`, sorted by name.
    pub extra: Vec<(String, String)>,
}

impl VariantKey {
    /// The key of a run.
    pub fn of(run: &RunRecord) -> Self {
        let s = &run.settings;
        let mut key = VariantKey {
            method: "base".into(),
            rank: None,
            projector_trained: None,
            dora: false,
            projector: None,
            fit_fraction: None,
            fit_algorithm: None,
            targets: None,
            extra: Vec::new(),
        };
        if run.eval_only {
            if let Some(adapter) = s.get("adapter").and_then(Value::as_str) {
                key.method = format!("adapter {adapter}");
            }
            return key;
        }
        let tuning = &s["tuning"];
        match tuning["kind"].as_str() {
            Some("weights") => {
                key.method = "weights".into();
                key.targets = s["targets"].as_array().map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                });
            }
            Some("full") => key.method = "full".into(),
            _ => {
                let adapter = run.adapter.as_ref().unwrap_or(&tuning["adapter"]);
                key.method = adapter["method"].as_str().unwrap_or("?").to_string();
                key.rank = adapter["rank"].as_u64();
                key.projector_trained = adapter["train_projector"].as_bool();
                key.dora = adapter["dora"].as_bool().unwrap_or(false);
                let p = &tuning["projectors"];
                key.projector = match p["source"].as_str() {
                    Some("random") => p["init"].as_str().map(str::to_string),
                    Some("pre_fit") => {
                        key.fit_fraction = p["fit"]["fraction"].as_f64();
                        key.fit_algorithm = p["fit"]["algorithm"].as_str().map(str::to_string);
                        Some("fitted".into())
                    }
                    Some("online") => {
                        key.fit_algorithm = p["fit"]["algorithm"].as_str().map(str::to_string);
                        Some("online".into())
                    }
                    Some(other) => Some(other.to_string()),
                    None => None,
                };
            }
        }
        key
    }

    /// A readable label: `LoRA r=8 (P trained)`, `IPA r=8 (P frozen, ipca 10%)`, ...
    pub fn label(&self) -> String {
        match self.method.as_str() {
            "lora" | "ipa" => {
                let name = match (self.method.as_str(), self.dora) {
                    ("lora", false) => "LoRA",
                    ("lora", true) => "DoRA",
                    (_, false) => "IPA",
                    (_, true) => "IPA+DoRA",
                };
                let mut parts = vec![format!(
                    "P {}",
                    if self.projector_trained == Some(true) {
                        "trained"
                    } else {
                        "frozen"
                    }
                )];
                match self.projector.as_deref() {
                    Some("fitted") => parts.push(format!(
                        "{} {}%",
                        self.fit_algorithm.as_deref().unwrap_or("?"),
                        (100.0 * self.fit_fraction.unwrap_or(0.0)).round()
                    )),
                    Some("online") => parts.push(format!(
                        "online {}",
                        self.fit_algorithm.as_deref().unwrap_or("?")
                    )),
                    Some("kaiming") | None => {}
                    Some(other) => parts.push(other.to_string()),
                }
                parts.extend(self.extra_parts());
                format!("{name} r={} ({})", self.rank.unwrap_or(0), parts.join(", "))
            }
            other => {
                let name = match other {
                    "weights" => format!("weights {}", self.targets.as_deref().unwrap_or("")),
                    "full" => "full fine-tuning".into(),
                    _ => other.to_string(),
                };
                let parts = self.extra_parts();
                if parts.is_empty() {
                    name
                } else {
                    format!("{name} ({})", parts.join(", "))
                }
            }
        }
    }

    fn extra_parts(&self) -> Vec<String> {
        self.extra.iter().map(|(k, v)| format!("{k} {v}")).collect()
    }

    /// The label without the rank (rank sweeps plot one line per such label).
    pub fn label_without_rank(&self) -> String {
        VariantKey {
            rank: Some(0),
            ..self.clone()
        }
        .label()
        .replace(" r=0", "")
    }

    /// The label without the fit fraction.
    pub fn label_without_fraction(&self) -> String {
        VariantKey {
            fit_fraction: None,
            ..self.clone()
        }
        .label()
        .replace(" 0%", "")
    }
}

/// Mean and sample standard deviation (`n − 1`; 0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The runs of one variant and their figures.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// What tells it apart.
    pub key: VariantKey,
    /// Its label.
    pub label: String,
    /// Seeds of its runs.
    pub seeds: Vec<u64>,
    /// The runs' folders.
    pub dirs: Vec<String>,
    /// Trainable parameters (the same for every run of a variant).
    pub trainable_params: Option<u64>,
    /// Accuracy (in %) per task and `average`: mean and standard deviation over the runs
    /// that have one, and how many.
    pub accuracy: BTreeMap<String, (f64, f64, usize)>,
    /// Training wall time, mean over runs, seconds.
    pub train_seconds: Option<f64>,
    /// Mean training loss per step over the runs.
    pub losses: Vec<(usize, f64)>,
    /// Per layer, the mean over runs of cos(P, P₀).
    pub projector_cosine: Vec<(String, f64)>,
}

fn seed_of(run: &RunRecord) -> u64 {
    run.settings["train"]["seed"].as_u64().unwrap_or(0)
}

/// Settings the [`VariantKey`] fields already tell apart (or that the seed sets).
const NAMED_SETTINGS: &[&str] = &[
    "tuning.kind",
    "tuning.adapter.method",
    "tuning.adapter.rank",
    "tuning.adapter.dora",
    "tuning.adapter.train_projector",
    "tuning.projectors.source",
    "tuning.projectors.init",
    "tuning.projectors.fit.rank",
    "tuning.projectors.fit.fraction",
    "tuning.projectors.fit.algorithm",
    "targets",
];

/// A run's `settings` (what was asked, not what it resolved to: LoRA's alpha follows the
/// rank unless given) as `dotted.path → value`, without the named ones and the seeds.
fn flat_settings(run: &RunRecord) -> BTreeMap<String, Value> {
    fn walk(prefix: String, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(path, v, out);
                }
            }
            other => {
                out.insert(prefix, other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(String::new(), &run.settings, &mut out);
    out.retain(|path, _| {
        !(path == "seed" || path.ends_with(".seed") || NAMED_SETTINGS.contains(&path.as_str()))
    });
    out
}

/// How a differing setting is named in a label: a short name for the usual ones, else the
/// path without its section.
fn setting_name(path: &str) -> String {
    match path {
        "train.learning_rate" => "lr".into(),
        _ => path
            .strip_prefix("tuning.adapter.")
            .or_else(|| path.strip_prefix("tuning."))
            .or_else(|| path.strip_prefix("train."))
            .or_else(|| path.strip_prefix("data."))
            .unwrap_or(path)
            .to_string(),
    }
}

fn setting_value(v: &Value) -> String {
    match v {
        Value::Null => "default".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs' keys: [`VariantKey::of`], then `extra`: among runs whose keys are equal but for the
/// rank and the fit fraction (the series the sweeps plot), every other setting whose value is
/// not the same for all of them, so runs that differ only there stay apart and say how.
fn keys_of(runs: &[RunRecord]) -> Vec<VariantKey> {
    let mut keys: Vec<VariantKey> = runs.iter().map(VariantKey::of).collect();
    let flat: Vec<BTreeMap<String, Value>> = runs.iter().map(flat_settings).collect();
    let series: Vec<VariantKey> = keys
        .iter()
        .map(|k| VariantKey {
            rank: None,
            fit_fraction: None,
            ..k.clone()
        })
        .collect();
    for (i, key) in series.iter().enumerate() {
        if runs[i].eval_only || series[..i].contains(key) {
            continue;
        }
        let members: Vec<usize> = (0..runs.len())
            .filter(|&j| !runs[j].eval_only && series[j] == *key)
            .collect();
        let mut paths: Vec<&String> = members.iter().flat_map(|&j| flat[j].keys()).collect();
        paths.sort();
        paths.dedup();
        let differing: Vec<&String> = paths
            .into_iter()
            .filter(|p| {
                let first = flat[members[0]].get(*p);
                members.iter().any(|&j| flat[j].get(*p) != first)
            })
            .collect();
        for &j in &members {
            keys[j].extra = differing
                .iter()
                .map(|p| {
                    let value = flat[j].get(*p).unwrap_or(&Value::Null);
                    (setting_name(p), setting_value(value))
                })
                .collect();
            keys[j].extra.sort();
        }
    }
    keys
}

/// Where a variant goes in the table: LoRA, DoRA, IPA, IPA+DoRA, then the weight baselines
/// and the base model; within each, by projector, fit and other settings, then by rank.
fn table_order(key: &VariantKey) -> impl Ord + '_ {
    let method = match key.method.as_str() {
        "lora" => 0,
        "ipa" => 1,
        "weights" => 2,
        "full" => 3,
        "base" => 5,
        _ => 4,
    };
    (
        method,
        key.dora,
        key.projector_trained == Some(false),
        key.projector.as_deref(),
        key.fit_algorithm.as_deref(),
        key.fit_fraction.map(|f| (f * 1e9) as u64),
        &key.extra,
        key.rank,
        key.targets.as_deref(),
    )
}

/// Groups runs into variants (equal [`VariantKey`]s), in [`table_order`].
pub fn group(runs: &[RunRecord]) -> Vec<Variant> {
    let mut keys: Vec<VariantKey> = Vec::new();
    let mut members: Vec<Vec<&RunRecord>> = Vec::new();
    for (run, key) in runs.iter().zip(keys_of(runs)) {
        match keys.iter().position(|k| *k == key) {
            Some(i) => members[i].push(run),
            None => {
                keys.push(key);
                members.push(vec![run]);
            }
        }
    }
    let mut variants = keys
        .into_iter()
        .zip(members)
        .map(|(key, runs)| {
            let mut accuracy = BTreeMap::new();
            let tasks: Vec<String> = {
                let mut t: Vec<String> = runs
                    .iter()
                    .filter_map(|r| r.accuracy.as_ref())
                    .flat_map(|a| a.keys().cloned())
                    .collect();
                t.sort();
                t.dedup();
                t
            };
            for task in tasks {
                let values: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.accuracy.as_ref()?.get(&task))
                    .map(|a| 100.0 * a)
                    .collect();
                let (m, s) = mean_std(&values);
                accuracy.insert(task, (m, s, values.len()));
            }
            let seconds: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.report.as_ref()?["train_seconds"].as_f64())
                .collect();
            let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            for r in &runs {
                for &(step, loss) in &r.losses {
                    by_step.entry(step).or_default().push(loss);
                }
            }
            let mut by_layer: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &runs {
                for (layer, c) in &r.projector_cosine {
                    by_layer.entry(layer.clone()).or_default().push(*c);
                }
            }
            Variant {
                label: key.label(),
                seeds: runs.iter().map(|r| seed_of(r)).collect(),
                dirs: runs.iter().map(|r| r.dir.display().to_string()).collect(),
                trainable_params: runs
                    .iter()
                    .find_map(|r| r.report.as_ref()?["trainable_params"].as_u64())
                    .or(if key.method == "base" { Some(0) } else { None }),
                accuracy,
                train_seconds: (!seconds.is_empty()).then(|| mean_std(&seconds).0),
                losses: by_step
                    .into_iter()
                    .map(|(s, l)| (s, mean_std(&l).0))
                    .collect(),
                projector_cosine: by_layer
                    .into_iter()
                    .map(|(layer, c)| (layer, mean_std(&c).0))
                    .collect(),
                key,
            }
        })
        .collect::<Vec<_>>();
    variants.sort_by(|a, b| table_order(&a.key).cmp(&table_order(&b.key)));
    variants
}

/// `mean ± std` in one decimal (just the mean for one run).
fn cell(stat: Option<&(f64, f64, usize)>) -> String {
    match stat {
        None => "–".into(),
        Some((m, _, 1)) => format!("{m:.1}"),
        Some((m, s, _)) => format!("{m:.1} ± {s:.1}"),
    }
}

/// The Markdown table: one row per variant, accuracy per task and on average (mean ± std over
/// seeds, in %), trainable parameters, runs, training time.
pub fn markdown_table(variants: &[Variant]) -> String {
    let mut tasks: Vec<String> = variants
        .iter()
        .flat_map(|v| v.accuracy.keys().cloned())
        .filter(|t| t != "average")
        .collect();
    tasks.sort();
    tasks.dedup();
    let mut s = format!(
        "| variant | trainable params | runs | {} | average | train time |\n|---|---:|---:|{}---:|---:|\n",
        tasks.join(" | "),
        "---:|".repeat(tasks.len())
    );
    for v in variants {
        let cells: Vec<String> = tasks.iter().map(|t| cell(v.accuracy.get(t))).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            v.label,
            v.trainable_params
                .map_or("–".to_string(), |p| p.to_string()),
            v.dirs.len(),
            cells.join(" | "),
            cell(v.accuracy.get("average")),
            v.train_seconds
                .map_or("–".to_string(), |t| format!("{:.0} s", t)),
        ));
    }
    s
}
