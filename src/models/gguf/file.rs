//! The GGUF container: header, metadata and tensor directory, read and checked against the
//! file's size before any tensor data is touched.
//!
//! Layout (little-endian, versions 2 and 3): magic `GGUF`, version u32, tensor count u64,
//! metadata count u64; the metadata as `key (string), type u32, value`; per tensor `name,
//! n_dims u32, dims u64 × n_dims (fastest first), ggml type u32, offset u64`; then, aligned to
//! `general.alignment` (32 by default), the tensor data, each tensor at its offset.
//! Strings are a u64 length and UTF-8 bytes; arrays an element type u32, a u64 count and the
//! elements.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::dequant::{dequantize, type_name, GgmlType};
use crate::{Error, Result};

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f32.
    F32(f32),
    /// f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values of one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// One tensor of the directory.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first (ggml's `ne`): a `[out, in]` matrix is `[in, out]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major order (slowest first), as PyTorch and safetensors have it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    fn bytes(&self) -> u64 {
        self.ggml_type
            .bytes_for(self.elements())
            .expect("checked when the directory was read")
    }
}

/// An opened GGUF file: its metadata and tensor directory (the tensor data is read on demand).
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` is a file that starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == GGUF_MAGIC
}

// Metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// A reader that knows how many bytes the file has left, so that a corrupt length is an
/// error instead of a huge allocation.
struct Cursor {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
}

impl Cursor {
    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> std::result::Result<Vec<u8>, String> {
        if n > self.len - self.pos {
            return Err(format!(
                "{} needs {n} bytes at offset {} but the file ends at {} (truncated or corrupt)",
                what(),
                self.pos,
                self.len
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("{}: {e}", what()))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<[u8; N], String> {
        let v = self.bytes(N as u64, what)?;
        Ok(v.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 ({e})", what()))
    }

    fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<MetaValue, String> {
        Ok(match ty {
            T_U8 => MetaValue::U8(self.array::<1>(what)?[0]),
            T_I8 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            T_U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            T_I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            T_U32 => MetaValue::U32(self.u32(what)?),
            T_I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            T_U64 => MetaValue::U64(self.u64(what)?),
            T_I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            T_F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            T_BOOL => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("{}: {b} is not a bool (0 or 1)", what())),
            },
            T_STRING => MetaValue::Str(self.string(what)?),
            T_ARRAY => {
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the file is corrupt.
                if n > self.len - self.pos {
                    return Err(format!(
                        "{}: an array of {n} elements cannot fit in the {} bytes left",
                        what(),
                        self.len - self.pos
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, what)?);
                }
                MetaValue::Array(items)
            }
            other => return Err(format!("{}: unknown value type {other}", what())),
        })
    }
}

impl GgufFile {
    /// Where the tensor data starts: the header, metadata and tensor directory (with padding)
    /// are the bytes before it.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Reads the header, metadata and tensor directory of `path`. Every tensor's type must be
    /// one burn-ipa dequantizes and its data must lie within the file; errors name the file
    /// and the key or tensor.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |msg: String| Error::file(path, msg);
        let file = File::open(path).map_err(|e| Error::file(path, e))?;
        let len = file.metadata().map_err(|e| Error::file(path, e))?.len();
        let mut c = Cursor {
            inner: BufReader::with_capacity(1 << 20, file),
            pos: 0,
            len,
        };
        let header = || "the GGUF header".to_string();
        let magic: [u8; 4] = c.array(&header).map_err(|_| {
            err(format!(
                "not a GGUF file: {len} bytes, shorter than the header"
            ))
        })?;
        if &magic != GGUF_MAGIC {
            return Err(err(format!(
                "not a GGUF file: it starts with {:?}, not \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = c.u32(&header).map_err(err)?;
        if !(2..=3).contains(&version) {
            return Err(err(format!(
                "GGUF version {version} is not supported (2 or 3)"
            )));
        }
        let n_tensors = c.u64(&header).map_err(err)?;
        let n_meta = c.u64(&header).map_err(err)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_meta {
            let key = c
                .string(&|| format!("metadata entry {i}'s key"))
                .map_err(err)?;
            let what = || format!("metadata `{key}`");
            let ty = c.u32(&what).map_err(err)?;
            let value = c.value(ty, &what).map_err(err)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor {i}'s name")).map_err(err)?;
            let what = || format!("tensor `{name}`");
            let n_dims = c.u32(&what).map_err(err)?;
            if n_dims > 4 {
                return Err(err(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most 4)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&what))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(err)?;
            let type_id = c.u32(&what).map_err(err)?;
            let offset = c.u64(&what).map_err(err)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                err(format!(
                    "tensor `{name}` has ggml type {} ({type_id}), which burn-ipa does not \
                     dequantize (supported: {})",
                    type_name(type_id).unwrap_or("unknown"),
                    GgmlType::ALL.map(GgmlType::name).join(", ")
                ))
            })?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(err(format!(
                        "metadata `general.alignment` is {v:?}, not a power of two"
                    )))
                }
            },
        };
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            let elements = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    err(format!(
                        "tensor `{}`: dimensions {:?} overflow",
                        t.name, t.dims
                    ))
                })?;
            let bytes = t.ggml_type.bytes_for(elements).ok_or_else(|| {
                err(format!(
                    "tensor `{}`: {elements} values are not whole {} blocks of {}",
                    t.name,
                    t.ggml_type.name(),
                    t.ggml_type.block_size()
                ))
            })?;
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(bytes));
            if end.is_none_or(|end| end > len) {
                return Err(err(format!(
                    "tensor `{}` ({} bytes at data offset {}) lies past the end of the file \
                     ({len} bytes): the file is truncated",
                    t.name, bytes, t.offset
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// The value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// An error about metadata `key`.
    pub fn key_error(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(&self.path, format!("metadata `{key}`: {msg}"))
    }

    /// Required string metadata.
    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self
            .get(key)
            .ok_or_else(|| self.key_error(key, "missing"))?;
        v.as_str().ok_or_else(|| {
            self.key_error(key, format!("expected a string, found a {}", v.type_name()))
        })
    }

    /// Optional non-negative integer metadata.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.key_error(key, format!("expected an integer, found {v:?}")))
            })
            .transpose()
    }

    /// Required non-negative integer metadata.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?
            .ok_or_else(|| self.key_error(key, "missing"))
    }

    /// Optional float metadata.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.key_error(key, format!("expected a number, found {v:?}")))
            })
            .transpose()
    }

    /// Optional bool metadata.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.key_error(key, format!("expected a bool, found {v:?}")))
            })
            .transpose()
    }

    /// Required array metadata.
    pub fn array(&self, key: &str) -> Result<&[MetaValue]> {
        let v = self
            .get(key)
            .ok_or_else(|| self.key_error(key, "missing"))?;
        v.as_array().ok_or_else(|| {
            self.key_error(key, format!("expected an array, found a {}", v.type_name()))
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of `tensor`.
    pub fn read_raw(&self, tensor: &TensorInfo) -> Result<Vec<u8>> {
        let terr = |message: String| Error::Tensor {
            path: self.path.clone(),
            tensor: tensor.name.clone(),
            message,
        };
        let mut f = File::open(&self.path).map_err(|e| Error::file(&self.path, e))?;
        f.seek(SeekFrom::Start(self.data_offset + tensor.offset))
            .map_err(|e| terr(e.to_string()))?;
        let mut buf = vec![0u8; tensor.bytes() as usize];
        f.read_exact(&mut buf)
            .map_err(|e| terr(format!("reading its data: {e} (was the file truncated?)")))?;
        Ok(buf)
    }

    /// The values of `tensor` in f32, in row-major order of [`TensorInfo::shape`].
    pub fn read_f32(&self, tensor: &TensorInfo) -> Result<Vec<f32>> {
        let raw = self.read_raw(tensor)?;
        let mut out = vec![0f32; tensor.elements() as usize];
        dequantize(tensor.ggml_type, &raw, &mut out).map_err(|message| Error::Tensor {
            path: self.path.clone(),
            tensor: tensor.name.clone(),
            message,
        })?;
        Ok(out)
    }
}
