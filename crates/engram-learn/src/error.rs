//! engram-learn's one error type. Messages name the file, the tensor or the key and what is
//! wrong; the CLI prints them as they are.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data set could not be loaded.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A scenario could not be built.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// A checkpoint file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] engram_ckpt::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A run file, a parameter or a value out of range.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Invalid(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error::Invalid(s.to_string())
    }
}

/// `Err(err!("bad {key}"))`: an [`Error::Invalid`] with a formatted message.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => { $crate::Error::Invalid(format!($($t)*)) };
}
