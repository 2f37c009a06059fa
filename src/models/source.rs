//! Where a model comes from: an HF model folder (`config.json`, safetensors weights,
//! `tokenizer.json`) or a GGUF file. [`load_decoder`](super::loading::load_decoder) and
//! [`Tokenizer::load`](super::tokenizer::Tokenizer::load) both decide here, so every command
//! that takes `--model` takes either.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A model folder or a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// An HF checkpoint folder.
    Folder(PathBuf),
    /// A GGUF file (weights, config and tokenizer in one).
    Gguf(PathBuf),
}

impl ModelSource {
    /// A folder is a [`ModelSource::Folder`]; any file is read as GGUF (a file that is not
    /// one fails there with the reason).
    pub fn of(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(ModelSource::Folder(path.to_path_buf()))
        } else if path.is_file() {
            Ok(ModelSource::Gguf(path.to_path_buf()))
        } else {
            Err(Error::file(path, "no such model folder or GGUF file"))
        }
    }

    /// The folder or file.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Folder(p) | ModelSource::Gguf(p) => p,
        }
    }

    /// The folder holding the model's side files (`tokenizer.json`, ...): the model folder,
    /// or the folder of the GGUF file.
    pub fn folder(&self) -> PathBuf {
        match self {
            ModelSource::Folder(p) => p.clone(),
            ModelSource::Gguf(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }
}
