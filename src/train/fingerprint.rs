//! What makes two runs the same run: content digests of their inputs, and a readable account of
//! where two fingerprints differ.
//!
//! A run's fingerprint (stored in each checkpoint's `state.json`) holds its resolved settings
//! and the identity of what it read: the SHA-256 of the data files, and for a model its
//! `config.json` and the header of every weight file (tensor names, dtypes, shapes and
//! offsets, plus the file's size). Hashing a model's header rather than its gigabytes of
//! weights keeps a resume check fast while still telling a different checkpoint apart.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of a file's content, read in chunks.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::file(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// `{"path", "sha256"}` of a data file.
pub fn data_identity(path: &Path) -> Result<Value> {
    Ok(json!({
        "path": path.display().to_string(),
        "sha256": file_sha256(path)?,
    }))
}

/// SHA-256 of a safetensors file's header (length prefix and JSON) and its size: changes when
/// any tensor's name, dtype, shape or place changes, or the file is replaced by another.
fn safetensors_header_digest(path: &Path) -> Result<Value> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let size = file.metadata().map_err(|e| Error::file(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| Error::file(path, "not a safetensors file (shorter than its header)"))?;
    let header_len = u64::from_le_bytes(len).min(size.saturating_sub(8));
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::file(path, e))?;
    let mut hasher = Sha256::new();
    hasher.update(len);
    hasher.update(&header);
    Ok(json!({ "bytes": size, "header_sha256": hex(&hasher.finalize()) }))
}

/// The identity of a model folder: the SHA-256 of `config.json`, of the shard index when there
/// is one, and of every weight file's header. For a GGUF file: its size and the SHA-256 of
/// everything before the tensor data (header, metadata with config and tokenizer, tensor
/// directory).
pub fn model_identity(dir: &Path) -> Result<Value> {
    if let crate::models::source::ModelSource::Gguf(file) =
        crate::models::source::ModelSource::of(dir)?
    {
        return gguf_identity(&file);
    }
    let config = dir.join("config.json");
    let mut out = serde_json::Map::new();
    out.insert("path".into(), json!(dir.display().to_string()));
    out.insert("config_sha256".into(), json!(file_sha256(&config)?));
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        out.insert("index_sha256".into(), json!(file_sha256(&index)?));
    }
    let mut weights = serde_json::Map::new();
    for file in crate::models::loading::weight_files(dir)? {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        weights.insert(name, safetensors_header_digest(&file)?);
    }
    out.insert("weights".into(), Value::Object(weights));
    Ok(Value::Object(out))
}

fn gguf_identity(path: &Path) -> Result<Value> {
    let gguf = crate::models::gguf::file::GgufFile::open(path)?;
    let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let size = file.metadata().map_err(|e| Error::file(path, e))?.len();
    let mut head = Vec::new();
    file.by_ref()
        .take(gguf.data_offset())
        .read_to_end(&mut head)
        .map_err(|e| Error::file(path, e))?;
    let mut hasher = Sha256::new();
    hasher.update(&head);
    Ok(json!({
        "path": path.display().to_string(),
        "bytes": size,
        "gguf_header_sha256": hex(&hasher.finalize()),
    }))
}

/// Every leaf where `saved` and `now` differ, as `path: old → new` (at most `limit`).
pub fn differences(saved: &Value, now: &Value, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", saved, now, &mut out, limit);
    out
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(v) => {
            let text = v.to_string();
            if text.chars().count() > 80 {
                format!("{}…", text.chars().take(77).collect::<String>())
            } else {
                text
            }
        }
    }
}

fn diff_into(path: &str, a: &Value, b: &Value, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || a == b {
        return;
    }
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => diff_into(&child(key), p, q, out, limit),
                    (p, q) => {
                        if out.len() < limit {
                            out.push(format!("{}: {} → {}", child(key), short(p), short(q)));
                        }
                    }
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_into(&child(&i.to_string()), p, q, out, limit);
            }
        }
        _ => out.push(format!(
            "{}: {} → {}",
            if path.is_empty() { "(value)" } else { path },
            short(Some(a)),
            short(Some(b))
        )),
    }
}

/// One sentence naming where two fingerprints differ (the first few fields).
pub fn describe_difference(saved: &Value, now: &Value) -> String {
    const SHOWN: usize = 6;
    let found = differences(saved, now, SHOWN + 1);
    if found.is_empty() {
        return "its settings differ".into();
    }
    let more = if found.len() > SHOWN { "; …" } else { "" };
    let shown: Vec<&str> = found.iter().take(SHOWN).map(String::as_str).collect();
    format!(
        "what differs (checkpoint → now): {}{more}",
        shown.join("; ")
    )
}
