//! Typed reads of HF `config.json` objects that name the file and key in every error.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// One JSON object of a config file; `prefix` is its key path (`text_config.`) for errors.
pub(crate) struct Fields<'a> {
    pub value: &'a Value,
    pub file: &'a Path,
    pub prefix: &'a str,
}

impl<'a> Fields<'a> {
    /// An error about `key`.
    pub fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(self.file, format!("`{}{key}`: {msg}", self.prefix))
    }
    /// The value of `key`, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }
    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {v}")))
    }
    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.usize(key)).transpose()
    }
    /// A non-negative integer with a default.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }
    /// A positive integer with a default.
    pub fn positive_or(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.usize_or(key, default)?;
        if v == 0 {
            return Err(self.err(key, "must be positive"));
        }
        Ok(v)
    }
    /// A required number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        v.as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, found {v}")))
    }
    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64(key)).transpose()
    }
    /// A number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }
    /// A boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }
    /// A string, if present.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }
    /// A required object.
    pub fn object(&self, key: &str) -> Result<&'a Value> {
        match self.get(key) {
            Some(v) if v.is_object() => Ok(v),
            Some(v) => Err(self.err(key, format!("expected an object, found {v}"))),
            None => Err(self.err(key, "missing")),
        }
    }
    /// Token ids: absent, one id, or a list.
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|x| x as u32)
                        .ok_or_else(|| self.err(key, format!("expected token ids, found {v}")))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|x| vec![x as u32])
                .ok_or_else(|| self.err(key, format!("expected a token id, found {v}"))),
        }
    }
}
