//! Errors of the checkpoint layer. Every error names the file it came from and, where one is
//! involved, the tensor, so that a user can find the defect without a debugger.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file (or index) is not a valid safetensors file.
    #[error("{}: {msg}", shown(path))]
    Format { path: PathBuf, msg: String },
    /// One tensor of the file is invalid or unusable for the requested operation.
    #[error("{}: tensor '{}': {msg}", shown(path), crate::names::esc(tensor))]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    /// The operating system refused a read or a write.
    #[error("{}: {source}", shown(path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The caller asked for something impossible (a missing tensor, a bad plan).
    #[error("{0}")]
    Invalid(String),
}

/// A path as printed in a message (control characters escaped, a line break included).
fn shown(path: &Path) -> String {
    crate::names::esc(&path.display().to_string()).into_owned()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn tensor(path: &Path, tensor: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
