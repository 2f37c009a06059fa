//! Transformer models loaded from Hugging Face checkpoints or GGUF files, with an [`AdaptedLinear`] for every
//! linear layer.
//!
//! [`AdaptedLinear`]: crate::adapter::AdaptedLinear

pub mod chat;
pub mod config;
pub mod generate;
pub mod gguf;
mod json_fields;
pub mod llama;
pub mod loading;
pub mod norm;
pub mod params;
pub mod rope;
pub mod siglip;
pub mod source;
pub mod tokenizer;

pub use config::{DecoderConfig, DecoderFamily, LayerKind, RopeConfig, RopeScaling};
pub use llama::{Decoder, ForwardOptions, KvCache, Site, SiteKind};
