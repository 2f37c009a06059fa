//! Transformer models loaded from Hugging Face checkpoints, with an [`AdaptedLinear`] for every
//! linear layer.
//!
//! [`AdaptedLinear`]: crate::adapter::AdaptedLinear

pub mod config;
pub mod generate;
mod json_fields;
pub mod llama;
pub mod loading;
pub mod norm;
pub mod params;
pub mod rope;
pub mod siglip;
pub mod tokenizer;

pub use config::{DecoderConfig, DecoderFamily, LayerKind, RopeConfig, RopeScaling};
pub use llama::{Decoder, ForwardOptions, KvCache, Site, SiteKind};
