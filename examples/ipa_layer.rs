//! IPA on a single linear layer, end to end on the CPU in a few seconds:
//! fit the projector forward-only on the layer's inputs with each algorithm, compare how much of
//! the input each keeps against LoRA's random projector, attach the adapter, merge it, and save
//! the adapter files.
//!
//! `cargo run --release --example ipa_layer`

use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use burn_ipa::adapter::{save_adapter, AdaptedLinearConfig, AdapterConfig, ProjectorInit};
use burn_ipa::projector::{device, FitAlgorithm};

type B = NdArray<f32>;

fn main() -> burn_ipa::Result<()> {
    let dev = Default::default();
    let (d_in, d_out, rank, tokens) = (256, 128, 16, 8192);

    // Activations with a decaying spectrum in a random basis, as hidden states have.
    let basis = device::orthonormalize_columns(device::gaussian::<B>(d_in, d_in, 1, &dev))?;
    let scales: Vec<f32> = (0..d_in)
        .map(|j| 4.0 / (1.0 + j as f32).powf(0.8))
        .collect();
    let scales = Tensor::<B, 1>::from_floats(scales.as_slice(), &dev).unsqueeze::<2>();
    let inputs = (Tensor::<B, 2>::random([tokens, d_in], Distribution::Normal(0.0, 1.0), &dev)
        * scales)
        .matmul(basis.transpose())
        + 0.5;
    let centered = inputs.clone() - inputs.clone().mean_dim(0);
    let total = centered.clone().square().sum().into_scalar() as f64;
    let kept = |p: Tensor<B, 2>| -> f64 {
        let proj = centered.clone().matmul(p.transpose());
        proj.square().sum().into_scalar() as f64 / total
    };

    let random =
        device::orthonormalize_columns(device::gaussian::<B>(d_in, rank, 2, &dev))?.transpose();
    println!("{tokens} tokens, d_in = {d_in}, rank = {rank}: share of input variance kept by P");
    println!("  {:<12} {:>6.1}%", "random (LoRA)", 100.0 * kept(random));
    let mut ipa_projector = None;
    for name in ["ipca", "rsvd", "gha", "covariance"] {
        let mut fit = FitAlgorithm::from_name(name)?.build::<B>(d_in, rank, 0, &dev)?;
        for start in (0..tokens).step_by(1024) {
            fit.update(inputs.clone().slice([start..start + 1024]), None)?;
        }
        let fitted = fit.finish()?;
        println!(
            "  {:<12} {:>6.1}%",
            name,
            100.0 * kept(fitted.components.clone())
        );
        if name == "ipca" {
            ipa_projector = Some(fitted.components);
        }
    }

    // Attach IPA with the fitted, frozen projector: only B (rank × d_out) trains.
    let config = AdapterConfig::ipa(rank);
    let layer = AdaptedLinearConfig::new(d_in, d_out)
        .init::<B>(&dev)
        .attach(
            &config,
            ProjectorInit::Fitted(ipa_projector.expect("ipca ran")),
        )?;
    println!(
        "IPA adapter: {} trainable parameters (LoRA with a trainable projector: {})",
        layer.trainable_params(),
        AdapterConfig::lora(rank).trainable_params(d_in, d_out)
    );
    // Stand in for training: give B some values, then check merging changes nothing.
    let mut layer = layer;
    if let Some(adapter) = layer.adapter.as_mut() {
        let up = Tensor::<B, 2>::random([rank, d_out], Distribution::Normal(0.0, 0.1), &dev);
        adapter.up = burn::module::Param::from_tensor(up);
    }
    let mut merged = layer.clone();
    merged.merge()?;
    let x = inputs.slice([0..4]);
    let gap = (layer.forward(x.clone()) - merged.forward(x))
        .abs()
        .max()
        .into_scalar();
    println!("merged vs unmerged output: max |Δ| = {gap:e}");

    let dir = std::env::temp_dir().join("burn-ipa-example-adapter");
    save_adapter(&layer, &config, Default::default(), &dir)?;
    println!("adapter saved to {}", dir.display());
    Ok(())
}
