//! The `ipa` subcommands beyond the small ones in `main.rs`.

pub mod export;
pub mod instruct;
pub mod vtab;
