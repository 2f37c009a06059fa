//! The crate's error type: every failure on user input is reported here, never as a panic.

use std::path::PathBuf;

/// Errors reported by burn-ipa.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor handed to the library has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// The tensor or argument concerned.
        what: String,
        /// The expected shape, as text.
        expected: String,
        /// The shape received, as text.
        got: String,
    },
    /// Input data contain NaN or infinite values.
    #[error("{0} contains NaN or infinite values")]
    NonFinite(String),
    /// A projector fit cannot finish or continue.
    #[error("projector fit: {0}")]
    Fit(String),
    /// A host-side decomposition failed.
    #[error("linear algebra: {0}")]
    LinearAlgebra(String),
    /// An adapter operation is not valid in the layer's current state.
    #[error("adapter state: {0}")]
    State(String),
    /// A file could not be read, parsed or written.
    #[error("{path}: {message}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor in a file does not fit the model.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor name in the file.
        tensor: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// Shorthand for a file error.
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The same error, its message prefixed by `what` (a layer, a flag) without repeating the
    /// error's kind.
    pub fn in_context(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::Config(m) => Error::Config(format!("{what}: {m}")),
            Error::Fit(m) => Error::Fit(format!("{what}: {m}")),
            Error::State(m) => Error::State(format!("{what}: {m}")),
            Error::NonFinite(m) => Error::NonFinite(format!("{what}: {m}")),
            Error::LinearAlgebra(m) => Error::LinearAlgebra(format!("{what}: {m}")),
            Error::Shape {
                what: inner,
                expected,
                got,
            } => Error::Shape {
                what: format!("{what}: {inner}"),
                expected,
                got,
            },
            // They name their file already.
            other @ (Error::File { .. } | Error::Tensor { .. }) => other,
        }
    }

    /// Shorthand for a shape error.
    pub fn shape(
        what: impl Into<String>,
        expected: impl std::fmt::Debug,
        got: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        }
    }
}

/// Result alias for burn-ipa.
pub type Result<T> = std::result::Result<T, Error>;
