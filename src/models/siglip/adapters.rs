//! Which linears of the SigLIP vision tower adapters may target, and attaching them.

use burn::tensor::backend::Backend;

use super::{SiglipModel, SiglipSite};
use crate::adapter::{AdapterConfig, ProjectorInit};
use crate::{Error, Result};

/// The linears of a SigLIP encoder layer that adapters may target (HF names).
pub const VISION_TARGETS: [&str; 6] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];

/// The input a SigLIP vision linear reads, for the fit pass: q/k/v read the attention input,
/// fc1 the MLP input. `out_proj` and `fc2` read inputs the tapping forward does not report, so
/// they cannot get fitted projectors (LoRA may still target them).
pub fn siglip_site_of(target: &str) -> Result<SiglipSite> {
    match target {
        "q_proj" | "k_proj" | "v_proj" => Ok(SiglipSite::Attention),
        "fc1" => Ok(SiglipSite::Mlp),
        "out_proj" | "fc2" => Err(Error::Config(format!(
            "`{target}` reads an input the SigLIP fit pass does not tap; fitted (IPA) \
             projectors are for q_proj, k_proj, v_proj and fc1"
        ))),
        other => Err(unknown_target(other)),
    }
}

fn unknown_target(target: &str) -> Error {
    Error::Config(format!(
        "unknown SigLIP vision target `{target}` (expected some of {})",
        VISION_TARGETS.join(", ")
    ))
}

/// Checks that every target names a linear of a SigLIP encoder layer and that there is one.
pub(crate) fn check_vision_targets(targets: &[String]) -> Result<()> {
    if targets.is_empty() {
        return Err(Error::Config("no target modules given".into()));
    }
    match targets
        .iter()
        .find(|t| !VISION_TARGETS.contains(&t.as_str()))
    {
        Some(t) => Err(unknown_target(t)),
        None => Ok(()),
    }
}

/// `(layer, target name)` of a vision encoder linear's path
/// (`vision_model.encoder.layers.3.self_attn.q_proj` → `(3, "q_proj")`).
pub(crate) fn vision_layer_target(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("vision_model.encoder.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest.rsplit('.').next()?))
}

/// Attaches adapters to the vision encoder's `targets` (in every layer or only `layers`);
/// `init` gives each projector from its path. Returns the adapted paths.
pub fn attach_vision_adapters<B: Backend>(
    model: &mut SiglipModel<B>,
    targets: &[String],
    layers: Option<&[usize]>,
    adapter: &AdapterConfig,
    init: impl FnMut(&str) -> ProjectorInit<B>,
) -> Result<Vec<String>> {
    check_vision_targets(targets)?;
    check_vision_layers(model, layers)?;
    let adapted = model.attach_adapters(
        |path| {
            vision_layer_target(path).is_some_and(|(layer, name)| {
                targets.iter().any(|t| t == name) && layers.is_none_or(|l| l.contains(&layer))
            })
        },
        adapter,
        init,
    )?;
    if adapted.is_empty() {
        return Err(Error::Config(format!(
            "no vision linear matches the targets {}",
            targets.join(",")
        )));
    }
    Ok(adapted)
}

pub(crate) fn check_vision_layers<B: Backend>(
    model: &SiglipModel<B>,
    layers: Option<&[usize]>,
) -> Result<()> {
    let n = model.vision_model.config.num_hidden_layers;
    match layers.and_then(|l| l.iter().find(|&&i| i >= n)) {
        Some(i) => Err(Error::Config(format!(
            "layer {i} is outside the vision tower's {n} layers"
        ))),
        None => Ok(()),
    }
}
