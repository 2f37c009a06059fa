//! Fitted projectors on disk: `projectors.safetensors`, one `[r, d]` f32 tensor per input
//! site, named `layers.<i>.<site>`, with each one's explained-variance ratio in the metadata.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::models::{Site, SiteKind};
use crate::projector::FittedProjector;
use crate::{Error, Result};

/// File name of saved projectors inside a fit output folder.
pub const PROJECTORS_FILE: &str = "projectors.safetensors";

fn site_name(site: &Site) -> String {
    let kind = match site.kind {
        SiteKind::Attention => "attention_input",
        SiteKind::AttentionOutput => "attention_output",
        SiteKind::Mlp => "mlp_input",
        SiteKind::MlpDown => "mlp_down_input",
    };
    format!("layers.{}.{kind}", site.layer)
}

fn parse_site(name: &str) -> Option<Site> {
    let rest = name.strip_prefix("layers.")?;
    let (layer, kind) = rest.split_once('.')?;
    let kind = match kind {
        "attention_input" => SiteKind::Attention,
        "attention_output" => SiteKind::AttentionOutput,
        "mlp_input" => SiteKind::Mlp,
        "mlp_down_input" => SiteKind::MlpDown,
        _ => return None,
    };
    Some(Site {
        layer: layer.parse().ok()?,
        kind,
    })
}

/// Saves fitted projectors (`P`, `[r, d]` per site, f32) to `dir/projectors.safetensors`,
/// with each one's explained-variance ratio, explained variance per component (a JSON list)
/// and sample count in the file's metadata.
pub fn save_projectors<B: Backend>(
    fitted: &BTreeMap<Site, FittedProjector<B>>,
    dir: &std::path::Path,
) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut entries = Vec::new();
    let mut meta = std::collections::HashMap::new();
    for (site, f) in fitted {
        let [r, d] = f.components.shape().dims::<2>();
        let values = crate::projector::host::download_vec(f.components.clone());
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect();
        let ratio: f64 =
            f.explained_variance.iter().sum::<f64>() / f.total_variance.max(f64::MIN_POSITIVE);
        meta.insert(
            format!("{}.explained_variance_ratio", site_name(site)),
            format!("{ratio:.6}"),
        );
        // Per component, for users who truncate or weigh the projector later.
        meta.insert(
            format!("{}.explained_variance", site_name(site)),
            serde_json::to_string(&f.explained_variance).unwrap_or_default(),
        );
        meta.insert(
            format!("{}.n_samples", site_name(site)),
            f.n_samples.to_string(),
        );
        entries.push((site_name(site), vec![r, d], bytes));
    }
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::State(format!("projector `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::State(format!("serialising projectors: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    crate::adapter::write_atomic(&dir.join(PROJECTORS_FILE), &bytes)
}

/// Loads projectors saved by [`save_projectors`] from `dir` (or the file itself).
pub fn load_projectors<B: Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<BTreeMap<Site, Tensor<B, 2>>> {
    let file = if path.is_dir() {
        path.join(PROJECTORS_FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| Error::file(&file, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(&file, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let bad = |message: String| Error::Tensor {
            path: file.clone(),
            tensor: name.clone(),
            message,
        };
        let site = parse_site(&name)
            .ok_or_else(|| bad("not a projector name (layers.N.<site>)".into()))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
            return Err(bad(format!(
                "expected a 2-d f32 tensor, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = [view.shape()[0], view.shape()[1]];
        let dtype = Tensor::<B, 1>::empty([0], device).dtype();
        out.insert(
            site,
            Tensor::from_data(TensorData::new(values, shape).convert_dtype(dtype), device),
        );
    }
    Ok(out)
}
