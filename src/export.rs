//! Exports for the HF ecosystem, for the decoders of [`crate::models::llama`]:
//!
//! * [`export_peft`]: the adapters as an HF peft LoRA adapter directory
//!   (`adapter_config.json` + `adapter_model.safetensors`) that `PeftModel.from_pretrained`
//!   loads onto the base checkpoint. IPA adapters, with the projector frozen or trained, have
//!   LoRA's shape `y = W0 x + s · B P x`: `P` is written as `lora_A`, `B` as `lora_B`, and the
//!   scaling as `lora_alpha = s · r`.
//! * [`load_peft`]: the reverse, attaching the adapters of a peft LoRA/DoRA directory.
//! * [`export_merged`]: the adapters folded into the base weights, written as a full HF
//!   checkpoint in the source checkpoint's layout (same tensor names, shards and dtypes),
//!   with its `config.json` and tokenizer files, so that HF transformers and
//!   [`load_decoder`](crate::models::loading::load_decoder) load it as a plain model.
//!
//! Module paths: the decoder's linears sit at their HF paths (`model.layers.3.self_attn.q_proj`);
//! peft prefixes them with `base_model.model.` (the `PeftModel` and its `LoraModel` wrapper).
//! Those are the paths of the text-only `*ForCausalLM` classes; for a multimodal Gemma-3
//! checkpoint (`Gemma3ForConditionalGeneration`) the language model sits under
//! `model.language_model.`, which [`PeftLayout`] accounts for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_store::ModuleSnapshot;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde_json::{json, Value};

use crate::adapter::{
    decode_floats, transpose, write_atomic, AdaptedLinear, AdapterConfig, AdapterMethod,
    ProjectorInit, Scaling, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use crate::models::llama::Decoder;
use crate::models::loading::{decoder_remapper, safetensors_keys, weight_files};
use crate::{Error, Result};

/// The prefix peft puts before the base model's module paths in adapter files.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Files copied from the source directory by [`export_merged`] when present (`config.json`
/// is required).
pub const COPIED_FILES: [&str; 12] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
];

/// Every linear of the decoder with its HF module path (`model.layers.3.self_attn.q_proj`,
/// `lm_head`), in the order of [`Decoder::linears_mut`].
pub fn decoder_linears<B: Backend>(model: &Decoder<B>) -> Vec<(String, &AdaptedLinear<B>)> {
    let mut out = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        out.push((format!("{p}.self_attn.q_proj"), &a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &a.o_proj));
        let m = &layer.mlp;
        out.push((format!("{p}.mlp.gate_proj"), &m.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &m.down_proj));
    }
    if let Some(head) = model.lm_head.as_ref() {
        out.push(("lm_head".to_string(), head));
    }
    out
}

/// `lora_alpha` and `use_rslora` for peft such that peft's scaling equals ours:
/// `alpha / r` (or `alpha / √r`) as is, a plain factor `s` as `alpha = s · r`.
fn peft_alpha(config: &AdapterConfig) -> (f64, bool) {
    match config.scaling {
        Scaling::Alpha { alpha, rslora } => (alpha, rslora),
        Scaling::Factor(s) => (s * config.rank as f64, false),
    }
}

/// A JSON number, written as an integer when it is one (as peft's own configs have it).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn same_adapter(a: &AdapterConfig, b: &AdapterConfig) -> bool {
    let (sa, sb) = (a.scale(), b.scale());
    a.rank == b.rank && a.dora == b.dora && (sa - sb).abs() <= 1e-12 * sa.abs().max(sb.abs())
}

/// `target_modules` for peft: the module names when every layer has the same adapted set,
/// otherwise a regular expression that peft full-matches against module paths.
fn target_modules(paths: &[String], num_layers: usize, layout: PeftLayout) -> Value {
    let mut by_name: BTreeMap<&str, BTreeSet<Option<usize>>> = BTreeMap::new();
    for path in paths {
        let name = path.rsplit('.').next().unwrap_or(path);
        let layer = path.split('.').nth(2).and_then(|s| s.parse::<usize>().ok());
        by_name.entry(name).or_default().insert(layer);
    }
    let every_layer = |layers: &BTreeSet<Option<usize>>| {
        layers.len() == num_layers && layers.iter().all(Option::is_some)
    };
    let uniform = by_name
        .iter()
        .all(|(name, layers)| *name == "lm_head" || every_layer(layers));
    match layout {
        PeftLayout::CausalLm if uniform => json!(by_name.keys().collect::<Vec<_>>()),
        PeftLayout::Gemma3Multimodal if uniform && !by_name.contains_key("lm_head") => {
            // Names alone would also match the vision tower's q/k/v: a regex over the
            // language model's layers, grouped by parent module in model order.
            let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
            for path in paths {
                let mut parts = path.rsplit('.');
                let (Some(leaf), Some(parent)) = (parts.next(), parts.next()) else {
                    continue;
                };
                match groups.iter_mut().find(|(p, _)| *p == parent) {
                    Some((_, leaves)) if leaves.contains(&leaf) => {}
                    Some((_, leaves)) => leaves.push(leaf),
                    None => groups.push((parent, vec![leaf])),
                }
            }
            let inner: Vec<String> = groups
                .iter()
                .map(|(parent, leaves)| format!(r"{parent}\.({})", leaves.join("|")))
                .collect();
            json!(format!(
                r"model\.language_model\.layers\.\d+\.({})",
                inner.join("|")
            ))
        }
        _ => {
            let alternatives: Vec<String> = paths
                .iter()
                .map(|p| layout.module_path(p).replace('.', "\\."))
                .collect();
            json!(format!("^(?:{})$", alternatives.join("|")))
        }
    }
}

/// The HF model class a peft adapter is applied to: it fixes the module paths the adapter's
/// tensors and `target_modules` name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeftLayout {
    /// The `*ForCausalLM` classes: `model.layers.N.…`, `lm_head`.
    #[default]
    CausalLm,
    /// `Gemma3ForConditionalGeneration` (the multimodal Gemma-3 checkpoints): the language
    /// model at `model.language_model.layers.N.…` (transformers' module paths since 4.52),
    /// `lm_head` at the top, the vision tower left alone.
    Gemma3Multimodal,
}

impl PeftLayout {
    /// The layout for the checkpoint in `dir`, from its `config.json`: multimodal Gemma-3
    /// when `architectures` names `Gemma3ForConditionalGeneration` or `model_type` is
    /// `gemma3` with a `text_config`.
    pub fn of_checkpoint(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("not valid JSON: {e}")))?;
        let conditional = config["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "Gemma3ForConditionalGeneration"));
        let nested = config["model_type"] == "gemma3" && config["text_config"].is_object();
        Ok(if conditional || nested {
            PeftLayout::Gemma3Multimodal
        } else {
            PeftLayout::CausalLm
        })
    }

    /// The HF module path of a decoder path (`model.layers.0.self_attn.q_proj`).
    pub fn module_path(self, path: &str) -> String {
        match (self, path.strip_prefix("model.")) {
            (PeftLayout::Gemma3Multimodal, Some(rest)) => format!("model.language_model.{rest}"),
            _ => path.to_string(),
        }
    }
}

/// Writes the adapters of `model` as an HF peft LoRA adapter in `out_dir` (created if needed):
/// `adapter_model.safetensors` with `base_model.model.<path>.lora_A.weight` (`P`, `[r, d_in]`),
/// `.lora_B.weight` (`B`, `[d_out, r]`) and, for DoRA, `.lora_magnitude_vector` (`[d_out]`), in
/// f32; and `adapter_config.json` (`peft_type` LORA, `task_type` CAUSAL_LM, `r`, `lora_alpha`,
/// `use_rslora`, `use_dora`, `target_modules`, `lora_dropout`, `bias` "none",
/// `fan_in_fan_out` false, `base_model_name_or_path` = `base_model`).
///
/// A plain scaling factor `s` (IPA) is written as `lora_alpha = s · r` with `use_rslora`
/// false; LoRA's `alpha` and rsLoRA flag are written as they are. Every adapted layer must
/// have `adapter`'s rank, scaling and DoRA setting. Merged layers export their adapter too
/// (the file always applies to the unmerged base). Both files are written atomically.
///
/// The module paths are those of the `*ForCausalLM` classes: see [`export_peft_for`] for a
/// multimodal Gemma-3 checkpoint.
pub fn export_peft<B: Backend>(
    model: &Decoder<B>,
    adapter: &AdapterConfig,
    base_model: &str,
    out_dir: &Path,
) -> Result<()> {
    export_peft_for(model, adapter, base_model, PeftLayout::CausalLm, out_dir)
}

/// [`export_peft`] for the HF class of `layout` ([`PeftLayout::of_checkpoint`] reads it from
/// the base checkpoint).
pub fn export_peft_for<B: Backend>(
    model: &Decoder<B>,
    adapter: &AdapterConfig,
    base_model: &str,
    layout: PeftLayout,
    out_dir: &Path,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut paths = Vec::new();
    for (path, linear) in decoder_linears(model) {
        let Some(a) = linear.adapter.as_ref() else {
            continue;
        };
        if !same_adapter(&a.config, adapter) {
            return Err(Error::Config(format!(
                "{path}: its adapter (rank {}, scale {}, dora {}) differs from the exported \
                 configuration (rank {}, scale {}, dora {})",
                a.config.rank,
                a.config.scale(),
                a.config.dora,
                adapter.rank,
                adapter.scale(),
                adapter.dora
            )));
        }
        let name = format!("{PEFT_PREFIX}{}", layout.module_path(&path));
        // Burn layout: projector Pᵀ [d_in, r], up Bᵀ [r, d_out]; peft stores P and B.
        let (p, [d_in, r]) = host_f32(a.projector.val())?;
        tensors.push((
            format!("{name}.lora_A.weight"),
            vec![r, d_in],
            f32_bytes(&transpose(&p, d_in, r)),
        ));
        let (b, [r2, d_out]) = host_f32(a.up.val())?;
        tensors.push((
            format!("{name}.lora_B.weight"),
            vec![d_out, r2],
            f32_bytes(&transpose(&b, r2, d_out)),
        ));
        if let Some(m) = &a.magnitude {
            let (m, [n]) = host_f32(m.val())?;
            tensors.push((
                format!("{name}.lora_magnitude_vector"),
                vec![n],
                f32_bytes(&m),
            ));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(Error::State(
            "the model has no adapters to export; attach or load adapters first".into(),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::State(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let weights = safetensors::tensor::serialize(views, Some(pt_metadata(None)))
        .map_err(|e| Error::State(format!("serialising the adapter: {e}")))?;

    let (alpha, rslora) = peft_alpha(adapter);
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": null,
        "r": adapter.rank,
        "lora_alpha": number(alpha),
        "use_rslora": rslora,
        "use_dora": adapter.dora,
        "lora_dropout": adapter.dropout,
        "target_modules": target_modules(&paths, model.config.num_hidden_layers, layout),
        "bias": "none",
        "lora_bias": false,
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::State(format!("serialising the adapter config: {e}")))?;

    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    write_atomic(&out_dir.join(ADAPTER_WEIGHTS_FILE), &weights)?;
    write_atomic(&out_dir.join(ADAPTER_CONFIG_FILE), &config)?;
    Ok(())
}

/// What [`load_peft`] attached.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapter {
    /// The adapter configuration every adapted layer now has (method LoRA, `lora_alpha` and
    /// `use_rslora` as the scaling, projector trainable).
    pub config: AdapterConfig,
    /// The adapted layers' HF module paths.
    pub layers: Vec<String>,
    /// `base_model_name_or_path` of the adapter config, if set.
    pub base_model: Option<String>,
}

/// The tensors of one adapted layer in a peft file.
#[derive(Default)]
struct PeftLayer {
    lora_a: Option<(Vec<f32>, Vec<usize>)>,
    lora_b: Option<(Vec<f32>, Vec<usize>)>,
    magnitude: Option<(Vec<f32>, Vec<usize>)>,
}

/// Attaches the LoRA (or DoRA) adapters of an HF peft adapter directory to `model`, replacing
/// any adapter on those layers. The layers are those named in `adapter_model.safetensors`
/// (paths relative to the `*ForCausalLM` model, as [`export_peft`] writes them; the
/// multimodal Gemma-3 prefixes `model.language_model.` and `language_model.model.` are
/// accepted too). Per-layer ranks or alphas (`rank_pattern`, `alpha_pattern`), trained biases,
/// `modules_to_save` and `fan_in_fan_out` are not supported and give an error. Everything is
/// checked before the model changes.
pub fn load_peft<B: Backend>(model: &mut Decoder<B>, dir: &Path) -> Result<PeftAdapter> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::file(&config_path, e))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| Error::file(&config_path, e))?;
    let bad = |message: String| Error::file(&config_path, message);
    let field = |key: &str| cfg.get(key).filter(|v| !v.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(bad(format!(
                "peft_type is {other:?}, only LORA adapters can be loaded"
            )))
        }
    }
    let rank = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("`r` is missing or not a positive integer".into()))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("`lora_alpha` is missing or not a number".into()))?;
    let flag = |key: &str| field(key).and_then(Value::as_bool).unwrap_or(false);
    let (rslora, dora) = (flag("use_rslora"), flag("use_dora"));
    if flag("fan_in_fan_out") {
        return Err(bad("fan_in_fan_out adapters are not supported".into()));
    }
    if flag("lora_bias") {
        return Err(bad("lora_bias adapters are not supported".into()));
    }
    if let Some(b) = field("bias")
        .and_then(Value::as_str)
        .filter(|b| *b != "none")
    {
        return Err(bad(format!(
            "bias \"{b}\" is not supported (only \"none\")"
        )));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if field(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!("a non-empty `{key}` is not supported")));
        }
    }
    if field("modules_to_save")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
    {
        return Err(bad("`modules_to_save` is not supported".into()));
    }
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let config = AdapterConfig {
        method: AdapterMethod::Lora,
        rank,
        scaling: Scaling::Alpha { alpha, rslora },
        dora,
        train_projector: true,
        dropout,
    };
    let base_model = field("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_string);

    // The tensors, grouped by layer.
    let path: PathBuf = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&path, format!("not a valid safetensors file: {e}")))?;
    let known: BTreeSet<String> = decoder_linears(model).into_iter().map(|(p, _)| p).collect();
    let tensor_err = |tensor: &str, message: String| Error::Tensor {
        path: path.clone(),
        tensor: tensor.to_string(),
        message,
    };
    let mut layers: BTreeMap<String, PeftLayer> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let (module, slot) = split_peft_name(&name).ok_or_else(|| {
            tensor_err(
                &name,
                "not a LoRA tensor (expected base_model.model.<module>.lora_A.weight, \
                 .lora_B.weight or .lora_magnitude_vector)"
                    .into(),
            )
        })?;
        let module = canonical_module(module);
        if !known.contains(&module) {
            return Err(tensor_err(
                &name,
                "the model has no such linear layer".into(),
            ));
        }
        let values = decode_floats(&view).map_err(|m| tensor_err(&name, m))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(tensor_err(&name, "contains NaN or infinite values".into()));
        }
        let entry = layers.entry(module).or_default();
        let value = Some((values, view.shape().to_vec()));
        match slot {
            Slot::A => entry.lora_a = value,
            Slot::B => entry.lora_b = value,
            Slot::Magnitude => entry.magnitude = value,
        }
    }
    if layers.is_empty() {
        return Err(Error::file(&path, "the file holds no adapter tensors"));
    }

    // Build every new layer before touching the model.
    let mut new_layers: BTreeMap<String, AdaptedLinear<B>> = BTreeMap::new();
    for (module, linear) in decoder_linears(model) {
        let Some(t) = layers.get(&module) else {
            continue;
        };
        let name = format!("{PEFT_PREFIX}{module}");
        let (d_in, d_out) = (linear.d_input(), linear.d_output());
        let (a, a_shape) = t
            .lora_a
            .as_ref()
            .ok_or_else(|| tensor_err(&format!("{name}.lora_A.weight"), "missing".into()))?;
        let (b, b_shape) = t
            .lora_b
            .as_ref()
            .ok_or_else(|| tensor_err(&format!("{name}.lora_B.weight"), "missing".into()))?;
        let check = |tensor: String, got: &[usize], want: Vec<usize>| {
            if got == want.as_slice() {
                Ok(())
            } else {
                Err(tensor_err(
                    &tensor,
                    format!("shape {got:?}, the model expects {want:?}"),
                ))
            }
        };
        check(format!("{name}.lora_A.weight"), a_shape, vec![rank, d_in])?;
        check(format!("{name}.lora_B.weight"), b_shape, vec![d_out, rank])?;
        match (&t.magnitude, dora) {
            (Some((_, m_shape)), true) => check(
                format!("{name}.lora_magnitude_vector"),
                m_shape,
                vec![d_out],
            )?,
            (None, true) => {
                return Err(tensor_err(
                    &format!("{name}.lora_magnitude_vector"),
                    "missing (use_dora is true)".into(),
                ))
            }
            (Some(_), false) => {
                return Err(tensor_err(
                    &format!("{name}.lora_magnitude_vector"),
                    "present but use_dora is false".into(),
                ))
            }
            (None, false) => {}
        }
        let device = linear.base.weight.device();
        let dtype = linear.base.weight.val().dtype();
        let upload = |values: Vec<f32>, shape: Vec<usize>| {
            TensorData::new(values, shape).convert_dtype(dtype)
        };
        let p = Tensor::<B, 2>::from_data(upload(a.clone(), vec![rank, d_in]), &device);
        let up_t = Tensor::<B, 2>::from_data(
            upload(transpose(b, d_out, rank), vec![rank, d_out]),
            &device,
        );
        let mut adapted = linear
            .clone()
            .attach(&config, ProjectorInit::Fitted(p))
            .map_err(|e| Error::Config(format!("{module}: {e}")))?;
        let slot = adapted.adapter.as_mut().expect("just attached");
        slot.up = Param::from_tensor(up_t);
        if let Some((m, _)) = &t.magnitude {
            let m = Tensor::<B, 1>::from_data(upload(m.clone(), vec![d_out]), &device);
            slot.magnitude = Some(Param::from_tensor(m));
        }
        adapted.mark_trainable();
        new_layers.insert(module, adapted);
    }
    let adapted: Vec<String> = new_layers.keys().cloned().collect();
    for (module, linear) in model.linears_mut() {
        if let Some(new) = new_layers.remove(&module) {
            *linear = new;
        }
    }
    Ok(PeftAdapter {
        config,
        layers: adapted,
        base_model,
    })
}

#[derive(Clone, Copy)]
enum Slot {
    A,
    B,
    Magnitude,
}

/// `base_model.model.<module>.lora_A.weight` → (`<module>`, A), and so on.
fn split_peft_name(name: &str) -> Option<(&str, Slot)> {
    let rest = name.strip_prefix(PEFT_PREFIX)?;
    [
        (".lora_A.weight", Slot::A),
        (".lora_B.weight", Slot::B),
        (".lora_magnitude_vector", Slot::Magnitude),
        // Older peft versions wrote the adapter name or `.weight` into DoRA's key.
        (".lora_magnitude_vector.weight", Slot::Magnitude),
    ]
    .into_iter()
    .find_map(|(suffix, slot)| rest.strip_suffix(suffix).map(|m| (m, slot)))
}

/// A module path of the multimodal Gemma-3 layouts → the decoder's path.
fn canonical_module(module: &str) -> String {
    for prefix in ["model.language_model.", "language_model.model."] {
        if let Some(rest) = module.strip_prefix(prefix) {
            return format!("model.{rest}");
        }
    }
    if let Some(rest) = module.strip_prefix("language_model.lm_head") {
        return format!("lm_head{rest}");
    }
    module.to_string()
}

/// The dtype in which [`export_merged_with`] writes the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDtype {
    /// Each tensor in the dtype it has in the source checkpoint (f32, f16, bf16 or f64).
    #[default]
    Source,
    /// Every float tensor in f32 (`config.json`'s `dtype`/`torch_dtype` set to float32).
    F32,
}

/// Merges the adapters of `model` into its base weights and writes the result as a full HF
/// checkpoint in `out_dir`: the weight files of `source_dir` (the checkpoint the model was
/// loaded from: `model.safetensors` or the shards of `model.safetensors.index.json`) with
/// the same names, tensor names, shapes and dtypes, holding the model's weights (adapted
/// linears merged, `[out, in]` layout); tensors the decoder does not hold (a multimodal
/// checkpoint's vision tower, say) are copied unchanged. `config.json` and the tokenizer and
/// generation files of [`COPIED_FILES`] are copied. `model` itself is not changed.
///
/// Errors: a model without adapters, `out_dir` equal to `source_dir`, a source checkpoint
/// that does not hold every weight of the model with the model's shapes, I/O failures.
pub fn export_merged<B: Backend>(
    model: &Decoder<B>,
    source_dir: &Path,
    out_dir: &Path,
) -> Result<()> {
    export_merged_with(model, source_dir, out_dir, WeightDtype::Source)
}

/// [`export_merged`] with a choice of weight dtype.
pub fn export_merged_with<B: Backend>(
    model: &Decoder<B>,
    source_dir: &Path,
    out_dir: &Path,
    dtype: WeightDtype,
) -> Result<()> {
    write_checkpoint(model, source_dir, out_dir, dtype, true)
}

/// Writes the weights `model` holds now (adapters merged if it has any) as a checkpoint in the
/// layout of `source_dir`, as [`export_merged`] does: what a run that trained the weights
/// themselves (all of them, or some linears') leaves.
pub fn export_model<B: Backend>(
    model: &Decoder<B>,
    source_dir: &Path,
    out_dir: &Path,
    dtype: WeightDtype,
) -> Result<()> {
    write_checkpoint(model, source_dir, out_dir, dtype, false)
}

fn write_checkpoint<B: Backend>(
    model: &Decoder<B>,
    source_dir: &Path,
    out_dir: &Path,
    dtype: WeightDtype,
    require_adapters: bool,
) -> Result<()> {
    if let (Ok(a), Ok(b)) = (source_dir.canonicalize(), out_dir.canonicalize()) {
        if a == b {
            return Err(Error::Config(format!(
                "{}: the merged checkpoint cannot overwrite its source",
                out_dir.display()
            )));
        }
    }
    let merged = merged_copy(model, require_adapters)?;

    // The model's weights by burn path (adapter tensors left out: they are merged).
    let params: HashMap<String, burn_store::TensorSnapshot> = merged
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s))
        .filter(|(p, _)| !p.contains(".adapter."))
        .collect();
    let remap = |key: &str| {
        let mut out = key.to_string();
        for (re, to) in decoder_remapper().to_regex_pairs() {
            out = re.replace(&out, to.as_str()).into_owned();
        }
        out
    };

    // Check from the headers alone that the source covers the model, before writing.
    let config_src = source_dir.join("config.json");
    if !config_src.is_file() {
        return Err(Error::file(
            &config_src,
            "missing from the source checkpoint",
        ));
    }
    let files = weight_files(source_dir)?;
    let mut covered = BTreeSet::new();
    for file in &files {
        for key in safetensors_keys(file)? {
            let path = remap(&key);
            if params.contains_key(&path) && !covered.insert(path) {
                return Err(Error::Tensor {
                    path: file.clone(),
                    tensor: key,
                    message: "this weight appears twice in the checkpoint".into(),
                });
            }
        }
    }
    if let Some(missing) = params.keys().find(|p| !covered.contains(*p)) {
        return Err(Error::file(
            source_dir,
            format!("the model's weight `{missing}` is not in the source checkpoint"),
        ));
    }

    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    let mut total_size = 0usize;
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| Error::file(file, e))?;
        let source = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(file, format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::file(file, format!("not a valid safetensors file: {e}")))?;
        let mut out: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, view) in source.tensors() {
            let tensor_err = |message: String| Error::Tensor {
                path: file.clone(),
                tensor: key.clone(),
                message,
            };
            let Some(snap) = params.get(&remap(&key)) else {
                out.push((
                    key.clone(),
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ));
                continue;
            };
            let data = snap
                .to_data()
                .map_err(|e| tensor_err(format!("reading the model's weight: {e:?}")))?
                .convert::<f32>();
            let mut shape = data.shape.to_vec();
            let mut values = data
                .to_vec::<f32>()
                .map_err(|e| tensor_err(format!("reading the model's weight: {e:?}")))?;
            if snap.full_path().ends_with(".base.weight") && shape.len() == 2 {
                values = transpose(&values, shape[0], shape[1]);
                shape.swap(0, 1);
            }
            if shape != view.shape() {
                return Err(tensor_err(format!(
                    "shape {:?} in the checkpoint, the model has {shape:?}",
                    view.shape()
                )));
            }
            let target = match dtype {
                WeightDtype::F32 => StDtype::F32,
                WeightDtype::Source => view.dtype(),
            };
            let encoded = encode(&values, target).map_err(tensor_err)?;
            out.push((key.clone(), target, shape, encoded));
        }
        total_size += out.iter().map(|(_, _, _, b)| b.len()).sum::<usize>();
        let views: Vec<(String, TensorView<'_>)> = out
            .iter()
            .map(|(name, dt, shape, bytes)| {
                TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::State(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<_>>()?;
        let serialized =
            safetensors::tensor::serialize(views, Some(pt_metadata(meta.metadata().as_ref())))
                .map_err(|e| Error::State(format!("serialising {}: {e}", file.display())))?;
        let name = file
            .file_name()
            .ok_or_else(|| Error::file(file, "not a file path"))?;
        write_atomic(&out_dir.join(name), &serialized)?;
    }

    let index = source_dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
        let mut value: Value = serde_json::from_str(&text).map_err(|e| Error::file(&index, e))?;
        if let Some(obj) = value.as_object_mut() {
            let meta = obj.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("total_size".into(), json!(total_size));
            }
        }
        let text = serde_json::to_vec_pretty(&value)
            .map_err(|e| Error::State(format!("serialising the shard index: {e}")))?;
        write_atomic(&out_dir.join("model.safetensors.index.json"), &text)?;
    }
    for name in COPIED_FILES {
        let src = source_dir.join(name);
        if !src.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&src).map_err(|e| Error::file(&src, e))?;
        if name == "config.json" && dtype == WeightDtype::F32 {
            let mut value: Value =
                serde_json::from_slice(&bytes).map_err(|e| Error::file(&src, e))?;
            set_f32_dtype(&mut value);
            bytes = serde_json::to_vec_pretty(&value)
                .map_err(|e| Error::State(format!("serialising config.json: {e}")))?;
        }
        write_atomic(&out_dir.join(name), &bytes)?;
    }
    Ok(())
}

/// A copy of `model` with every adapter merged into its base weights; an error when it has
/// no adapters.
/// `model` with every adapter merged into its weights; an error when it has none and
/// `require_adapters`.
fn merged_copy<B: Backend>(model: &Decoder<B>, require_adapters: bool) -> Result<Decoder<B>> {
    let mut merged = model.clone();
    let mut adapted = 0;
    for (path, linear) in merged.linears_mut() {
        if linear.adapter.is_some() {
            if !linear.is_merged() {
                linear
                    .merge()
                    .map_err(|e| Error::State(format!("{path}: {e}")))?;
            }
            adapted += 1;
        }
    }
    if adapted == 0 && require_adapters {
        return Err(Error::State(
            "the model has no adapters to merge; the source checkpoint is already the model".into(),
        ));
    }
    Ok(merged)
}

/// Sets `dtype` / `torch_dtype` to float32 wherever a config (or its `text_config`) has them.
fn set_f32_dtype(value: &mut Value) {
    if let Some(obj) = value.as_object_mut() {
        for key in ["dtype", "torch_dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), json!("float32"));
            }
        }
        if let Some(text) = obj.get_mut("text_config") {
            set_f32_dtype(text);
        }
    }
}

/// safetensors metadata with `format: pt` (transformers requires it), keeping the source's.
fn pt_metadata(source: Option<&HashMap<String, String>>) -> HashMap<String, String> {
    let mut meta = source.cloned().unwrap_or_default();
    meta.insert("format".into(), "pt".into());
    meta
}

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<(Vec<f32>, [usize; D])> {
    let dims = t.shape().dims::<D>();
    let values = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::State(format!("reading adapter weights: {e:?}")))?;
    Ok((values, dims))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn encode(values: &[f32], dtype: StDtype) -> std::result::Result<Vec<u8>, String> {
    Ok(match dtype {
        StDtype::F32 => f32_bytes(values),
        StDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        StDtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        StDtype::F64 => values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect(),
        other => return Err(format!("cannot write a float weight as {other:?}")),
    })
}

/// [`export_merged`] for a model loaded from a GGUF file (`--model file.gguf`): there are no
/// source safetensors to mirror, so `out_dir` gets a new HF checkpoint — `model.safetensors`
/// with every weight of the merged model in f32 (the dequantized base plus the merged
/// update) under HF's names and layouts, `config.json` from the model's configuration,
/// `generation_config.json`, and `tokenizer.json` / `tokenizer_config.json` (special tokens
/// and chat template) from `tokenizer`. HF transformers and
/// [`load_decoder`](crate::models::loading::load_decoder) load it as a plain model.
pub fn export_merged_standalone<B: Backend>(
    model: &Decoder<B>,
    tokenizer: &crate::models::tokenizer::Tokenizer,
    out_dir: &Path,
) -> Result<()> {
    write_standalone(model, tokenizer, out_dir, true)
}

/// [`export_model`] for a model loaded from a GGUF file: the weights `model` holds now
/// (adapters merged if it has any) as a new HF checkpoint, as [`export_merged_standalone`]
/// writes it: what a run that trained the weights themselves from a GGUF base leaves.
pub fn export_model_standalone<B: Backend>(
    model: &Decoder<B>,
    tokenizer: &crate::models::tokenizer::Tokenizer,
    out_dir: &Path,
) -> Result<()> {
    write_standalone(model, tokenizer, out_dir, false)
}

fn write_standalone<B: Backend>(
    model: &Decoder<B>,
    tokenizer: &crate::models::tokenizer::Tokenizer,
    out_dir: &Path,
    require_adapters: bool,
) -> Result<()> {
    let merged = merged_copy(model, require_adapters)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for snap in merged.collect(None, None, false) {
        let path = snap.full_path();
        if path.contains(".adapter.") {
            continue;
        }
        let name = path
            .replace(".base.weight", ".weight")
            .replace(".base.bias", ".bias");
        let data = snap
            .to_data()
            .map_err(|e| Error::State(format!("reading `{path}`: {e:?}")))?
            .convert::<f32>();
        let mut shape = data.shape.to_vec();
        let mut values = data
            .to_vec::<f32>()
            .map_err(|e| Error::State(format!("reading `{path}`: {e:?}")))?;
        if path.ends_with(".base.weight") && shape.len() == 2 {
            values = transpose(&values, shape[0], shape[1]);
            shape.swap(0, 1);
        }
        tensors.push((name, shape, f32_bytes(&values)));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::State(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let weights = safetensors::tensor::serialize(views, Some(pt_metadata(None)))
        .map_err(|e| Error::State(format!("serialising the merged weights: {e}")))?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::file(out_dir, e))?;
    write_atomic(&out_dir.join("model.safetensors"), &weights)?;

    let c = &model.config;
    let json = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialise");
    write_atomic(
        &out_dir.join("config.json"),
        &json(&c.to_hf_json("float32")),
    )?;
    let eos = match c.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    write_atomic(
        &out_dir.join("generation_config.json"),
        &json(&json!({
            "bos_token_id": c.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": c.pad_token_id,
        })),
    )?;
    let text = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::State(format!("serialising the tokenizer: {e}")))?;
    write_atomic(&out_dir.join("tokenizer.json"), text.as_bytes())?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(tokenizer.bos_token_id),
        "eos_token": token(tokenizer.eos_token_id),
        "pad_token": token(tokenizer.pad_token_id),
        "model_max_length": c.max_position_embeddings,
    });
    if let Some(t) = &tokenizer.chat_template {
        config["chat_template"] = json!(t);
    }
    write_atomic(&out_dir.join("tokenizer_config.json"), &json(&config))?;
    Ok(())
}
