//! Adapter configuration: which adapter, its rank, scaling and what trains.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the projector `P` (LoRA's `A`) is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterMethod {
    /// LoRA: `P` drawn at random (kaiming-uniform with `a = √5`, as HF peft does).
    Lora,
    /// IPA: `P` fitted forward-only to the top principal directions of the layer's inputs.
    Ipa,
}

impl std::fmt::Display for AdapterMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdapterMethod::Lora => "lora",
            AdapterMethod::Ipa => "ipa",
        })
    }
}

/// The factor `s` in `y = W0 x + s · B P x`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// LoRA's `alpha / r`, or `alpha / √r` with rank-stabilised LoRA (rsLoRA).
    Alpha {
        /// The numerator `alpha`.
        alpha: f64,
        /// Use `alpha / √r` instead of `alpha / r`.
        rslora: bool,
    },
    /// A plain factor (IPA: 0.25 for the paper's LLMs, 0.4 for Gemma-3, 0.5 for SigLIP-2).
    Factor(f64),
}

impl Scaling {
    /// The numeric factor `s` for rank `r`.
    pub fn factor(&self, rank: usize) -> f64 {
        match *self {
            Scaling::Alpha { alpha, rslora } if rslora => alpha / (rank as f64).sqrt(),
            Scaling::Alpha { alpha, .. } => alpha / rank as f64,
            Scaling::Factor(s) => s,
        }
    }
}

/// Configuration of one low-rank adapter (shared by every targeted layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// LoRA (random projector) or IPA (fitted projector).
    pub method: AdapterMethod,
    /// The rank `r` of the residual.
    pub rank: usize,
    /// The scaling `s`.
    pub scaling: Scaling,
    /// DoRA: learn a magnitude vector and normalise the adapted weight's columns.
    pub dora: bool,
    /// Fine-tune the projector too ("Proj FT ✓"); frozen otherwise, so only `B` trains.
    pub train_projector: bool,
    /// Dropout probability on the adapter's input.
    pub dropout: f64,
}

impl AdapterConfig {
    /// A LoRA adapter with `alpha = 2r` (a common default), projector trainable as in LoRA.
    pub fn lora(rank: usize) -> Self {
        Self {
            method: AdapterMethod::Lora,
            rank,
            scaling: Scaling::Alpha {
                alpha: 2.0 * rank as f64,
                rslora: false,
            },
            dora: false,
            train_projector: true,
            dropout: 0.0,
        }
    }

    /// An IPA adapter with scaling factor 0.25 and a frozen projector (the paper's default).
    pub fn ipa(rank: usize) -> Self {
        Self {
            method: AdapterMethod::Ipa,
            rank,
            scaling: Scaling::Factor(0.25),
            dora: false,
            train_projector: false,
            dropout: 0.0,
        }
    }

    /// Sets the scaling.
    pub fn with_scaling(mut self, scaling: Scaling) -> Self {
        self.scaling = scaling;
        self
    }

    /// Sets DoRA on or off.
    pub fn with_dora(mut self, dora: bool) -> Self {
        self.dora = dora;
        self
    }

    /// Sets whether the projector trains.
    pub fn with_train_projector(mut self, train: bool) -> Self {
        self.train_projector = train;
        self
    }

    /// Sets the dropout probability on the adapter input.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// The numeric scaling factor `s`.
    pub fn scale(&self) -> f64 {
        self.scaling.factor(self.rank)
    }

    /// Checks the configuration against a layer of shape `d_in → d_out`.
    ///
    /// LoRA's rank may not exceed `min(d_in, d_out)`; IPA's may not exceed `d_in` (the projector
    /// keeps `r` principal directions of the `d_in`-dimensional inputs).
    pub fn validate(&self, d_in: usize, d_out: usize) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config("adapter rank must be at least 1".into()));
        }
        let max = match self.method {
            AdapterMethod::Lora => d_in.min(d_out),
            AdapterMethod::Ipa => d_in,
        };
        if self.rank > max {
            return Err(Error::Config(format!(
                "{} rank {} exceeds {} for a {d_in} → {d_out} layer",
                self.method,
                self.rank,
                match self.method {
                    AdapterMethod::Lora => format!("min(d_in, d_out) = {max}"),
                    AdapterMethod::Ipa => format!("d_in = {max}"),
                }
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "adapter dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        let s = self.scale();
        if !s.is_finite() {
            return Err(Error::Config(format!("adapter scaling {s} is not finite")));
        }
        Ok(())
    }

    /// Trainable parameters this adapter adds to a `d_in → d_out` layer: `B` (`r · d_out`), the
    /// projector when it trains (`r · d_in`), and DoRA's magnitude vector (`d_out`).
    pub fn trainable_params(&self, d_in: usize, d_out: usize) -> usize {
        let mut n = self.rank * d_out;
        if self.train_projector {
            n += self.rank * d_in;
        }
        if self.dora {
            n += d_out;
        }
        n
    }
}
