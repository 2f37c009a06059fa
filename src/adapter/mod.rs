//! Low-rank adapters on frozen linear layers: LoRA, IPA and DoRA.
//!
//! * [`AdapterConfig`]: method, rank, scaling, DoRA, whether the projector trains.
//! * [`AdaptedLinear`]: the layer math, merge/unmerge, enable/disable.
//! * [`dropout`]: dropout on the adapter input, its mask drawn on the host on CPU backends.
//! * [`save_adapter`] / [`load_adapter`]: adapter-only files in safetensors with a JSON config.

mod config;
mod dropout;
mod file;
mod linear;

pub use config::{AdapterConfig, AdapterMethod, Scaling};
pub use dropout::dropout;
pub(crate) use file::{decode_floats, transpose};
pub use file::{
    load_adapter, read_adapter_config, save_adapter, write_atomic, AdapterFileConfig,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
pub use linear::{AdaptedLinear, AdaptedLinearConfig, LowRankAdapter, ProjectorInit};
