//! The user's own data sets: the run file's `dataset = { kind = ..., ... }` table, its
//! checks, and the assembly every format shares (labels, domains, the test split).
//!
//! ```toml
//! [scenario]
//! kind = "class-incremental"
//! dataset = { kind = "npz", path = "data.npz" }
//! ```
//!
//! Kinds and their keys (relative paths are taken from the run file's folder):
//!
//! - `idx`: `train-images`, `train-labels`, `test-images`, `test-labels` (IDX files of
//!   unsigned bytes, gzip or not; images (N, H, W) or features (N, D), scaled by 1/255;
//!   labels (N)).
//! - `npy`: `train-x`, `train-y`, `test-x`, `test-y`, optionally `train-domain`,
//!   `test-domain` (one `.npy` file each, gzip or not).
//! - `npz`: `path` (np.savez or np.savez_compressed) holding `x_train`, `y_train`, `x_test`,
//!   `y_test` and optionally `domain_train`, `domain_test`; other names with
//!   `arrays = { x-train = "images", y-train = "labels", ... }`.
//! - `csv`: `train` and `test`, or one `path` with `test-fraction`; `label` (the label
//!   column, default `"label"`), `domain` (a domain column), `features` (the feature columns;
//!   default every other column whose first row holds a number).
//! - `images`: `path`, a folder with `train/<class>/` and `test/<class>/` (or only class
//!   folders, with `test-fraction`); `size = [h, w]` resizes; `channels = 1 | 3`.
//!
//! Keys for every kind: `name` (the data set's name in the run's name; default: the first
//! file's name without its extensions), `num-classes` (default: the largest label + 1),
//! `test-fraction` (in (0, 1): the share of each class's examples drawn, seeded by the
//! scenario's seed, as the test set of a source without one; an error where every source
//! has its test set), and `domains` (below).
//!
//! Arrays (idx, npy, npz): x of shape (N, D) are feature vectors (`image-shape = [c, h, w]`
//! declares them images), (N, H, W) gray images, (N, C, H, W) or (N, H, W, C) images:
//! `layout = "nchw" | "nhwc"`, or without it channels-first when only the second size is 1
//! or 3, channels-last when only the last is, else an error asking for `layout`. uint8 values
//! are scaled by 1/255, float32 and float64 kept as they are (and must be finite); other
//! types are refused. Labels: any integer type (N or (N, 1)), each ≥ 0 and below
//! `num-classes`. CSV labels are integers when every label cell is one, else text mapped to
//! ids in sorted (byte) order, as are image folder classes; those names are kept
//! ([`super::Meta::classes`]).
//!
//! Domains (for the `domains` scenario, one task per domain): per example, from the npz
//! arrays `domain_train`/`domain_test`, the npy files `train-domain`/`test-domain` or the CSV
//! column `domain` (values integers or text, mapped to ids in sorted order); or a file per
//! domain: `domains = ["site-a.npz", "site-b.npz"]` (each entry a path, for the kinds with
//! `path`, or a table of the kind's file keys plus an optional `name`), domain d being entry
//! d, named by its `name` or its file's name. Not both.
//!
//! Every file read is recorded with its SHA-256 ([`DataFile`]; an image folder as one record).
//! A missing file is an error naming it, never a substitute.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use engram_weights::rng::Rng;

use super::numpy::{NpyArray, Npz, read_npy, shape_text};
use super::{DataError, DataFile, Dataset, Domains, Meta, Split};

/// Largest file read (also each array of an `.npz`, decompressed).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Most f32 values a data set may hold (4 GiB): data sets are held in memory.
pub const MAX_VALUES: usize = 1 << 30;

/// A scenario's `dataset`: a name (`fashion-mnist`, `mnist`, `blobs`) or the user's files.
#[derive(Clone, Debug, PartialEq)]
pub enum DatasetSpec {
    Name(String),
    User(Box<UserData>),
}

impl fmt::Display for DatasetSpec {
    /// The name a run's name uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Name(n) => f.write_str(n),
            DatasetSpec::User(u) => f.write_str(&u.name()),
        }
    }
}

impl From<&str> for DatasetSpec {
    fn from(s: &str) -> Self {
        DatasetSpec::Name(s.to_string())
    }
}

impl From<String> for DatasetSpec {
    fn from(s: String) -> Self {
        DatasetSpec::Name(s)
    }
}

impl From<UserData> for DatasetSpec {
    fn from(u: UserData) -> Self {
        DatasetSpec::User(Box::new(u))
    }
}

impl PartialEq<&str> for DatasetSpec {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, DatasetSpec::Name(n) if n == other)
    }
}

impl serde::Serialize for DatasetSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DatasetSpec::Name(n) => s.serialize_str(n),
            DatasetSpec::User(u) => u.serialize(s),
        }
    }
}

/// A string, or a table read by `T` (so that a table's errors name its keys).
struct StrOrTable<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for StrOrTable<T> {
    type Value = Result<String, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name or a table")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(v.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Err)
    }
}

impl<'de> serde::Deserialize<'de> for DatasetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match d.deserialize_any(StrOrTable::<UserData>(std::marker::PhantomData))? {
                Ok(name) => DatasetSpec::Name(name),
                Err(u) => DatasetSpec::User(Box::new(u)),
            },
        )
    }
}

/// The file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Idx,
    Npy,
    Npz,
    Csv,
    Images,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Idx => "idx",
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::Csv => "csv",
            Format::Images => "images",
        }
    }

    /// The file keys of one source (top level or a `domains` entry).
    fn file_keys(self) -> &'static [&'static str] {
        match self {
            Format::Idx => &["train-images", "train-labels", "test-images", "test-labels"],
            Format::Npy => &["train-x", "train-y", "test-x", "test-y"],
            Format::Npz | Format::Images => &["path"],
            Format::Csv => &["path", "train", "test"],
        }
    }

    /// Every other key the kind takes.
    fn option_keys(self) -> &'static [&'static str] {
        match self {
            Format::Idx => &["layout", "image-shape"],
            Format::Npy => &["train-domain", "test-domain", "layout", "image-shape"],
            Format::Npz => &["arrays", "layout", "image-shape"],
            Format::Csv => &["label", "domain", "features", "image-shape"],
            Format::Images => &["size", "channels"],
        }
    }
}

/// How 4-D image arrays are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// (N, C, H, W), channels first (PyTorch).
    Nchw,
    /// (N, H, W, C), channels last (TensorFlow, PIL).
    Nhwc,
}

/// The names of the arrays in an `.npz` archive.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NpzArrays {
    pub x_train: String,
    pub y_train: String,
    pub x_test: String,
    pub y_test: String,
    pub domain_train: String,
    pub domain_test: String,
}

impl Default for NpzArrays {
    fn default() -> Self {
        NpzArrays {
            x_train: "x_train".into(),
            y_train: "y_train".into(),
            x_test: "x_test".into(),
            y_test: "y_test".into(),
            domain_train: "domain_train".into(),
            domain_test: "domain_test".into(),
        }
    }
}

/// The files of one source: the top level of the table, or one `domains` entry.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Files {
    /// The domain's name (only in a `domains` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_labels: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_x: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_y: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_x: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_y: Option<PathBuf>,
}

impl Files {
    /// The keys given, with their paths.
    fn given(&self) -> Vec<(&'static str, &PathBuf)> {
        [
            ("path", &self.path),
            ("train", &self.train),
            ("test", &self.test),
            ("train-images", &self.train_images),
            ("train-labels", &self.train_labels),
            ("test-images", &self.test_images),
            ("test-labels", &self.test_labels),
            ("train-x", &self.train_x),
            ("train-y", &self.train_y),
            ("test-x", &self.test_x),
            ("test-y", &self.test_y),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|p| (k, p)))
        .collect()
    }

    fn paths_mut(&mut self) -> [&mut Option<PathBuf>; 11] {
        [
            &mut self.path,
            &mut self.train,
            &mut self.test,
            &mut self.train_images,
            &mut self.train_labels,
            &mut self.test_images,
            &mut self.test_labels,
            &mut self.train_x,
            &mut self.train_y,
            &mut self.test_x,
            &mut self.test_y,
        ]
    }

    /// The first file named (the source's name comes from it).
    fn first(&self) -> Option<&PathBuf> {
        self.given().first().map(|(_, p)| *p)
    }
}

/// A `domains` entry: a path (kinds with `path`) or a table of file keys.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainFiles(pub Files);

impl serde::Serialize for DomainFiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for DomainFiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(DomainFiles(
            match d.deserialize_any(StrOrTable::<Files>(std::marker::PhantomData))? {
                Ok(path) => Files {
                    path: Some(path.into()),
                    ..Files::default()
                },
                Err(f) => f,
            },
        ))
    }
}

/// The run file's `dataset = { kind = ..., ... }` table (see the module for the keys).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserData {
    pub kind: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_labels: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_x: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_y: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_x: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_y: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_domain: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_domain: Option<PathBuf>,
    /// A file (or a table of files) per domain, instead of the top-level file keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<DomainFiles>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrays: Option<NpzArrays>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[usize; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, DataError> {
    Err(DataError::Invalid(msg.into()))
}

/// `dir/name.tar.gz` → `name`: a file's name without its extensions.
fn stem(p: &Path) -> String {
    let name = p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match name.split_once('.') {
        Some((s, _)) if !s.is_empty() => s.to_string(),
        _ => name,
    }
}

impl UserData {
    /// A table of kind `kind` with no key set (for building one in code).
    pub fn new(kind: Format) -> UserData {
        UserData {
            kind,
            name: None,
            num_classes: None,
            test_fraction: None,
            path: None,
            train: None,
            test: None,
            train_images: None,
            train_labels: None,
            test_images: None,
            test_labels: None,
            train_x: None,
            train_y: None,
            test_x: None,
            test_y: None,
            train_domain: None,
            test_domain: None,
            domains: None,
            arrays: None,
            layout: None,
            image_shape: None,
            label: None,
            domain: None,
            features: None,
            size: None,
            channels: None,
        }
    }

    /// The top-level file keys as one source.
    fn top(&self) -> Files {
        Files {
            name: None,
            path: self.path.clone(),
            train: self.train.clone(),
            test: self.test.clone(),
            train_images: self.train_images.clone(),
            train_labels: self.train_labels.clone(),
            test_images: self.test_images.clone(),
            test_labels: self.test_labels.clone(),
            train_x: self.train_x.clone(),
            train_y: self.train_y.clone(),
            test_x: self.test_x.clone(),
            test_y: self.test_y.clone(),
        }
    }

    /// The sources: the top level, or each `domains` entry.
    fn sources(&self) -> Vec<Files> {
        match &self.domains {
            Some(d) => d.iter().map(|e| e.0.clone()).collect(),
            None => vec![self.top()],
        }
    }

    /// The data set's name: `name`, else the first file's name without its extensions.
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        self.sources()
            .first()
            .and_then(|f| f.first().map(|p| stem(p)))
            .unwrap_or_else(|| self.kind.name().to_string())
    }

    /// Takes relative paths from `dir` (the run file's folder).
    pub fn resolve(&mut self, dir: &Path) {
        let join = |p: &mut Option<PathBuf>| {
            if let Some(v) = p.as_mut().filter(|v| v.is_relative()) {
                *v = dir.join(&*v);
            }
        };
        for p in [
            &mut self.path,
            &mut self.train,
            &mut self.test,
            &mut self.train_images,
            &mut self.train_labels,
            &mut self.test_images,
            &mut self.test_labels,
            &mut self.train_x,
            &mut self.train_y,
            &mut self.test_x,
            &mut self.test_y,
            &mut self.train_domain,
            &mut self.test_domain,
        ] {
            join(p);
        }
        for d in self.domains.iter_mut().flatten() {
            for p in d.0.paths_mut() {
                join(p);
            }
        }
    }

    /// The keys set, other than `kind`, `name`, `num-classes`, `test-fraction`, `domains`
    /// and the file keys.
    fn options_given(&self) -> Vec<&'static str> {
        [
            ("train-domain", self.train_domain.is_some()),
            ("test-domain", self.test_domain.is_some()),
            ("arrays", self.arrays.is_some()),
            ("layout", self.layout.is_some()),
            ("image-shape", self.image_shape.is_some()),
            ("label", self.label.is_some()),
            ("domain", self.domain.is_some()),
            ("features", self.features.is_some()),
            ("size", self.size.is_some()),
            ("channels", self.channels.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// Checks the table without reading any file: the keys the kind takes, the files each
    /// source needs, the values' ranges.
    pub fn check(&self) -> Result<(), DataError> {
        let kind = self.kind;
        let at = format!("dataset (kind = \"{}\")", kind.name());
        let all_keys = || {
            let mut k = vec!["name", "num-classes", "test-fraction", "domains"];
            k.extend(kind.file_keys());
            k.extend(kind.option_keys());
            k.join(", ")
        };
        let top = self.top();
        let stray = top
            .given()
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !kind.file_keys().contains(k))
            .chain(
                self.options_given()
                    .into_iter()
                    .filter(|k| !kind.option_keys().contains(k)),
            )
            .next();
        if let Some(k) = stray {
            return invalid(format!(
                "{at}: key `{k}` does not apply to this kind (its keys: {})",
                all_keys()
            ));
        }
        if let Some(d) = &self.domains {
            if let Some((k, _)) = top.given().first() {
                return invalid(format!(
                    "{at}: `{k}` and `domains` both given: give the files at the top (one \
                     data set) or in `domains` (a file per domain), not both"
                ));
            }
            if d.is_empty() {
                return invalid(format!("{at}: domains is empty"));
            }
            let per_example = [
                ("train-domain", self.train_domain.is_some()),
                ("domain", self.domain.is_some()),
            ];
            if let Some((k, _)) = per_example.iter().find(|(_, s)| *s) {
                return invalid(format!(
                    "{at}: `{k}` and `domains` both given: domains come from each example \
                     or from the files, not both"
                ));
            }
            let mut names = Vec::new();
            for (i, e) in d.iter().enumerate() {
                check_files(kind, &e.0, &format!("{at}: domains[{i}]"))?;
                let name =
                    e.0.name
                        .clone()
                        .unwrap_or_else(|| e.0.first().map_or_else(|| format!("{i}"), |p| stem(p)));
                if let Some(j) = names.iter().position(|n| *n == name) {
                    return invalid(format!(
                        "{at}: domains[{j}] and domains[{i}] are both named '{name}'; give each \
                         a `name`"
                    ));
                }
                names.push(name);
            }
        } else {
            check_files(kind, &top, &at)?;
        }
        if self.train_domain.is_some() != self.test_domain.is_some() && self.test_x.is_some() {
            return invalid(format!(
                "{at}: give both train-domain and test-domain, or neither"
            ));
        }
        if let Some(f) = self.test_fraction.filter(|f| !(*f > 0.0 && *f < 1.0)) {
            return invalid(format!("{at}: test-fraction = {f} must be in (0, 1)"));
        }
        let has_test =
            |f: &Files| f.test.is_some() || f.test_images.is_some() || f.test_x.is_some();
        let needs_test = |f: &Files| match kind {
            // npz and image folders may or may not hold a test part: known once read.
            Format::Npz | Format::Images => None,
            _ => Some(!has_test(f)),
        };
        let sources = self.sources();
        let missing = sources.iter().filter_map(needs_test).any(|v| v);
        let all_have = sources.iter().all(|f| needs_test(f) == Some(false));
        if missing && self.test_fraction.is_none() {
            let keys = match kind {
                Format::Idx => "test-images and test-labels",
                Format::Npy => "test-x and test-y",
                _ => "test",
            };
            return invalid(format!(
                "{at}: no test set: give {keys}, or test-fraction (the share of each class held \
                 out for testing)"
            ));
        }
        if all_have && self.test_fraction.is_some() {
            return invalid(format!(
                "{at}: test-fraction has no effect: the files give the test set"
            ));
        }
        if self.num_classes == Some(0) {
            return invalid(format!("{at}: num-classes must be at least 1"));
        }
        if let Some(s) = self.image_shape
            && s.contains(&0)
        {
            return invalid(format!("{at}: image-shape {s:?} has a zero size"));
        }
        if let Some(s) = self.image_shape
            && s.iter()
                .try_fold(1usize, |a, &v| a.checked_mul(v))
                .is_none_or(|n| n > MAX_VALUES)
        {
            return invalid(format!(
                "{at}: image-shape {s:?} holds more than {MAX_VALUES} values"
            ));
        }
        if let Some(c) = self.channels.filter(|c| !matches!(c, 1 | 3)) {
            return invalid(format!("{at}: channels = {c}: 1 (gray) or 3 (RGB)"));
        }
        if let Some(s) = self.size
            && s.iter()
                .any(|&v| v == 0 || v > super::image_folder::MAX_SIZE)
        {
            return invalid(format!(
                "{at}: size = [{}, {}]: each side in 1..={}",
                s[0],
                s[1],
                super::image_folder::MAX_SIZE
            ));
        }
        if self.features.as_ref().is_some_and(Vec::is_empty) {
            return invalid(format!("{at}: features is empty"));
        }
        if let Some(n) = &self.name
            && n.is_empty()
        {
            return invalid(format!("{at}: name is empty"));
        }
        Ok(())
    }

    /// The table with its defaults filled in (the name, npz array names, the CSV label
    /// column), as a checkpoint records it.
    pub fn normalized(&self) -> UserData {
        UserData {
            name: Some(self.name()),
            arrays: match self.kind {
                Format::Npz => Some(self.arrays.clone().unwrap_or_default()),
                _ => self.arrays.clone(),
            },
            label: match self.kind {
                Format::Csv => Some(self.label.clone().unwrap_or_else(|| "label".into())),
                _ => self.label.clone(),
            },
            ..self.clone()
        }
    }
}

/// Checks that one source names the files its kind needs.
fn check_files(kind: Format, f: &Files, at: &str) -> Result<(), DataError> {
    if let Some((k, _)) = f
        .given()
        .iter()
        .find(|(k, _)| !kind.file_keys().contains(k))
    {
        return invalid(format!(
            "{at}: key `{k}` does not apply to this kind (its file keys: {})",
            kind.file_keys().join(", ")
        ));
    }
    let need = |keys: &[(&str, bool)]| -> Result<(), DataError> {
        match keys.iter().find(|(_, set)| !set) {
            Some((k, _)) => invalid(format!("{at}: `{k}` is missing")),
            None => Ok(()),
        }
    };
    match kind {
        Format::Idx => {
            need(&[
                ("train-images", f.train_images.is_some()),
                ("train-labels", f.train_labels.is_some()),
            ])?;
            if f.test_images.is_some() != f.test_labels.is_some() {
                return invalid(format!(
                    "{at}: give both test-images and test-labels, or neither"
                ));
            }
        }
        Format::Npy => {
            need(&[
                ("train-x", f.train_x.is_some()),
                ("train-y", f.train_y.is_some()),
            ])?;
            if f.test_x.is_some() != f.test_y.is_some() {
                return invalid(format!("{at}: give both test-x and test-y, or neither"));
            }
        }
        Format::Npz | Format::Images => need(&[("path", f.path.is_some())])?,
        Format::Csv => match (&f.path, &f.train, &f.test) {
            (Some(_), None, None) | (None, Some(_), _) => {}
            (Some(_), _, _) => {
                return invalid(format!(
                    "{at}: `path` (one file) or `train` and `test`, not both"
                ));
            }
            (None, None, _) => return invalid(format!("{at}: `train` (or `path`) is missing")),
        },
    }
    Ok(())
}

/// A user's data table and the seed of the test split: what [`super::DataSource::User`]
/// loads.
#[derive(Clone, Debug, PartialEq)]
pub struct UserSource {
    pub spec: UserData,
    /// Seeds `test-fraction`'s split (the scenario's seed).
    pub seed: u64,
    name: String,
}

impl UserSource {
    pub fn new(spec: UserData, seed: u64) -> UserSource {
        UserSource {
            name: spec.name(),
            spec,
            seed,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn load(&self) -> Result<Split, DataError> {
        load(&self.spec, self.seed)
    }
}

/// Labels (or domains) as read: integers, or text (CSV cells, image class folders).
#[derive(Clone, Debug, PartialEq)]
enum Values {
    Int(Vec<i64>),
    Text(Vec<String>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    /// Text that is all integers becomes integers.
    fn ints_if_possible(self) -> Values {
        match self {
            Values::Text(t) => match t.iter().map(|s| s.parse::<i64>()).collect() {
                Ok(v) => Values::Int(v),
                Err(_) => Values::Text(t),
            },
            v => v,
        }
    }
}

/// One part (train or test) of one source, as read.
struct Part {
    x: Vec<f32>,
    labels: Values,
    domains: Option<Values>,
    /// The file the labels came from, for messages.
    label_file: PathBuf,
}

/// One source (the data set, or one domain's files) as read.
struct Source {
    /// Domain name (a file per domain).
    name: String,
    dim: usize,
    image: Option<(usize, usize, usize)>,
    /// The file the examples came from, for messages.
    x_file: PathBuf,
    train: Part,
    test: Option<Part>,
    files: Vec<DataFile>,
}

/// Loads the data set `spec` (checked first); `seed` draws `test-fraction`'s split.
pub fn load(spec: &UserData, seed: u64) -> Result<Split, DataError> {
    spec.check()?;
    let per_file = spec.domains.is_some();
    let mut sources = Vec::new();
    for (i, f) in spec.sources().iter().enumerate() {
        let name = f
            .name
            .clone()
            .unwrap_or_else(|| f.first().map_or_else(|| format!("{i}"), |p| stem(p)));
        sources.push(read_source(spec, f, name)?);
    }
    assemble(spec, sources, per_file, seed)
}

fn read_source(spec: &UserData, f: &Files, name: String) -> Result<Source, DataError> {
    let req = |p: &Option<PathBuf>, key: &str| {
        p.clone()
            .ok_or_else(|| DataError::Invalid(format!("dataset: `{key}` is missing")))
    };
    match spec.kind {
        Format::Idx => {
            let (xi, yi) = (
                req(&f.train_images, "train-images")?,
                req(&f.train_labels, "train-labels")?,
            );
            let test = f.test_images.clone().zip(f.test_labels.clone());
            let mut files = Vec::new();
            let mut read = |x: &Path, y: &Path| -> Result<(Shaped, Part), DataError> {
                let (xb, xf) = super::read_maybe_gz(x, MAX_FILE_BYTES)?;
                let (yb, yf) = super::read_maybe_gz(y, MAX_FILE_BYTES)?;
                files.extend([xf, yf]);
                let xa = super::idx::parse(&xb, x, None, "images")?;
                let ya = super::idx::parse(&yb, y, None, "labels")?;
                let vals = xa.data.iter().map(|&v| v as f32 / 255.0).collect();
                let shaped = shape_examples(&xa.dims, vals, spec, x)?;
                let labels = label_vector(&ya.dims, ya.data.iter().map(|&v| v as i64), y)?;
                Ok((shaped, Part::new(Values::Int(labels), None, y)))
            };
            let (s, train) = read(&xi, &yi)?;
            let test = test.map(|(x, y)| read(&x, &y)).transpose()?;
            Source::new(name, xi, s, train, test, files)
        }
        Format::Npy => {
            let (xp, yp) = (req(&f.train_x, "train-x")?, req(&f.train_y, "train-y")?);
            let mut files = Vec::new();
            let mut read = |x: &Path, y: &Path, d: Option<&PathBuf>| {
                let (xa, xf) = read_npy(x, MAX_FILE_BYTES)?;
                let (ya, yf) = read_npy(y, MAX_FILE_BYTES)?;
                files.extend([xf, yf]);
                let shaped = array_examples(&xa, spec, x, "x")?;
                let labels = array_labels(&ya, y, "labels")?;
                let domains = match d {
                    Some(d) => {
                        let (da, df) = read_npy(d, MAX_FILE_BYTES)?;
                        files.push(df);
                        Some(Values::Int(array_labels(&da, d, "domains")?))
                    }
                    None => None,
                };
                Ok::<_, DataError>((shaped, Part::new(Values::Int(labels), domains, y)))
            };
            let (s, train) = read(&xp, &yp, spec.train_domain.as_ref())?;
            let test = match (&f.test_x, &f.test_y) {
                (Some(x), Some(y)) => Some(read(x, y, spec.test_domain.as_ref())?),
                _ => None,
            };
            Source::new(name, xp, s, train, test, files)
        }
        Format::Npz => {
            let path = req(&f.path, "path")?;
            let names = spec.arrays.clone().unwrap_or_default();
            let mut npz = Npz::open(&path, MAX_FILE_BYTES)?;
            let mut get = |array: &str, required: bool| -> Result<Option<NpyArray>, DataError> {
                let a = npz.array(array)?;
                if a.is_none() && required {
                    return Err(DataError::corrupt(
                        &path,
                        format!(
                            "has no array '{array}' (its arrays: {}); name yours with \
                             dataset.arrays",
                            npz.names().join(", ")
                        ),
                    ));
                }
                Ok(a)
            };
            let x_train = get(&names.x_train, true)?;
            let y_train = get(&names.y_train, true)?;
            let x_test = get(&names.x_test, false)?;
            let y_test = get(&names.y_test, x_test.is_some())?;
            let d_train = get(&names.domain_train, false)?;
            let d_test = get(&names.domain_test, d_train.is_some() && x_test.is_some())?;
            if x_test.is_none() && spec.test_fraction.is_none() {
                return Err(DataError::corrupt(
                    &path,
                    format!(
                        "has no array '{}': give the test set, or dataset.test-fraction",
                        names.x_test
                    ),
                ));
            }
            if x_test.is_some() && spec.test_fraction.is_some() {
                return Err(DataError::corrupt(
                    &path,
                    format!(
                        "holds '{}': dataset.test-fraction has no effect; remove it",
                        names.x_test
                    ),
                ));
            }
            let at = |a: &str| path.join(a);
            let part = |x: NpyArray,
                        y: Option<NpyArray>,
                        d: Option<NpyArray>,
                        (xn, yn, dn): (&str, &str, &str)|
             -> Result<(Shaped, Part), DataError> {
                let shaped = array_examples(&x, spec, &at(xn), "x")?;
                let y = y.ok_or_else(|| DataError::corrupt(&at(yn), "missing"))?;
                let labels = array_labels(&y, &at(yn), "labels")?;
                let domains = d
                    .map(|d| array_labels(&d, &at(dn), "domains").map(Values::Int))
                    .transpose()?;
                Ok((shaped, Part::new(Values::Int(labels), domains, &at(yn))))
            };
            let Some(x_train) = x_train else {
                return invalid("npz: x_train");
            };
            if d_train.is_some() && spec.domains.is_some() {
                return Err(DataError::corrupt(
                    &path,
                    format!(
                        "holds '{}' but the data set's domains are its files \
                         (dataset.domains): remove one",
                        names.domain_train
                    ),
                ));
            }
            let (s, train) = part(
                x_train,
                y_train,
                d_train,
                (&names.x_train, &names.y_train, &names.domain_train),
            )?;
            let test = x_test
                .map(|x| {
                    part(
                        x,
                        y_test,
                        d_test,
                        (&names.x_test, &names.y_test, &names.domain_test),
                    )
                })
                .transpose()?;
            let xf = at(&names.x_train);
            Source::new(name, xf, s, train, test, vec![npz.file])
        }
        Format::Csv => {
            let label = spec.label.as_deref().unwrap_or("label");
            let domain = spec.domain.as_deref();
            let train_path = f.train.clone().or(f.path.clone());
            let train_path = req(&train_path, "train")?;
            let tr = super::csv::read(
                &train_path,
                label,
                domain,
                spec.features.as_deref(),
                MAX_FILE_BYTES,
            )?;
            let dim = tr.features.len();
            let shaped = |x: Vec<f32>, p: &Path| shape_examples(&[x.len() / dim, dim], x, spec, p);
            let mut files = vec![tr.file.clone()];
            let train = Part::new(
                Values::Text(tr.labels),
                tr.domains.map(Values::Text),
                &train_path,
            );
            let s = shaped(tr.x, &train_path)?;
            let test = match &f.test {
                Some(tp) => {
                    let te =
                        super::csv::read(tp, label, domain, Some(&tr.features), MAX_FILE_BYTES)?;
                    files.push(te.file.clone());
                    let shaped = shaped(te.x, tp)?;
                    let part = Part::new(Values::Text(te.labels), te.domains.map(Values::Text), tp);
                    Some((shaped, part))
                }
                None => None,
            };
            Source::new(name, train_path, s, train, test, files)
        }
        Format::Images => {
            let root = req(&f.path, "path")?;
            let set = super::image_folder::read(
                &root,
                super::image_folder::ImageOptions {
                    size: spec.size,
                    channels: spec.channels,
                },
            )?;
            if set.test.is_none() && spec.test_fraction.is_none() {
                return Err(DataError::corrupt(
                    &root,
                    "has no train/ and test/ folders: give dataset.test-fraction",
                ));
            }
            if set.test.is_some() && spec.test_fraction.is_some() {
                return Err(DataError::corrupt(
                    &root,
                    "has train/ and test/ folders: dataset.test-fraction has no effect; remove \
                     it",
                ));
            }
            let (c, h, w) = set.image;
            let names = |labels: &[u32]| {
                Values::Text(
                    labels
                        .iter()
                        .map(|&l| set.classes[l as usize].clone())
                        .collect(),
                )
            };
            let shaped = |x: Vec<f32>| Shaped {
                n: x.len() / (c * h * w),
                dim: c * h * w,
                image: Some(set.image),
                x,
            };
            let train = (
                shaped(set.train.x.clone()),
                Part::new(names(&set.train.labels), None, &root),
            );
            let test = set.test.as_ref().map(|t| {
                (
                    shaped(t.x.clone()),
                    Part::new(names(&t.labels), None, &root.join("test")),
                )
            });
            let (s, train) = train;
            Source::new(name, root.clone(), s, train, test, vec![set.file])
        }
    }
}

impl Part {
    fn new(labels: Values, domains: Option<Values>, file: &Path) -> Part {
        Part {
            x: Vec::new(),
            labels,
            domains,
            label_file: file.to_path_buf(),
        }
    }
}

/// Examples with their shape.
struct Shaped {
    n: usize,
    dim: usize,
    image: Option<(usize, usize, usize)>,
    x: Vec<f32>,
}

impl Source {
    fn new(
        name: String,
        x_file: PathBuf,
        s: Shaped,
        mut train: Part,
        test: Option<(Shaped, Part)>,
        files: Vec<DataFile>,
    ) -> Result<Source, DataError> {
        let check = |s: &Shaped, p: &Part, x: &Path| -> Result<(), DataError> {
            if s.n != p.labels.len() {
                return Err(DataError::corrupt(
                    &p.label_file,
                    format!(
                        "{} labels but {} holds {} examples",
                        p.labels.len(),
                        x.display(),
                        s.n
                    ),
                ));
            }
            if let Some(d) = p.domains.as_ref().filter(|d| d.len() != s.n) {
                return Err(DataError::corrupt(
                    &p.label_file,
                    format!("{} domain ids for {} examples", d.len(), s.n),
                ));
            }
            if s.n == 0 {
                return Err(DataError::corrupt(x, "holds no example"));
            }
            Ok(())
        };
        check(&s, &train, &x_file)?;
        let (dim, image) = (s.dim, s.image);
        train.x = s.x;
        let test = match test {
            Some((ts, mut tp)) => {
                check(&ts, &tp, &tp.label_file.clone())?;
                if (ts.dim, ts.image) != (dim, image) {
                    return Err(DataError::corrupt(
                        &tp.label_file,
                        format!(
                            "the test examples are {} but the training examples are {}",
                            shape_name(ts.dim, ts.image),
                            shape_name(dim, image)
                        ),
                    ));
                }
                tp.x = ts.x;
                Some(tp)
            }
            None => None,
        };
        Ok(Source {
            name,
            dim,
            image,
            x_file,
            train,
            test,
            files,
        })
    }
}

fn shape_name(dim: usize, image: Option<(usize, usize, usize)>) -> String {
    match image {
        Some((c, h, w)) => format!("{c}x{h}x{w} images"),
        None => format!("vectors of {dim} features"),
    }
}

/// An array's values as examples (see the module for the shapes and types).
fn array_examples(
    a: &NpyArray,
    spec: &UserData,
    path: &Path,
    what: &str,
) -> Result<Shaped, DataError> {
    let Some(vals) = a.features() else {
        return Err(DataError::corrupt(
            path,
            format!(
                "{what} is {}: examples must be uint8 (scaled by 1/255), float32 or float64",
                a.dtype.name()
            ),
        ));
    };
    shape_examples(&a.shape, vals, spec, path)
}

/// Values of shape `shape` (examples first) as examples, channels-first.
fn shape_examples(
    shape: &[usize],
    x: Vec<f32>,
    spec: &UserData,
    path: &Path,
) -> Result<Shaped, DataError> {
    let bad = |msg: String| DataError::corrupt(path, msg);
    let n = shape.first().copied().unwrap_or(0);
    if x.len() > MAX_VALUES {
        return Err(bad(format!(
            "holds {} values, more than {MAX_VALUES}: engram holds data sets in memory",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        let d = x.len() / n.max(1);
        return Err(bad(format!(
            "example {} holds {}, not a finite number (as f32)",
            i / d.max(1),
            x[i]
        )));
    }
    let no =
        |key: &str, why: &str| bad(format!("dataset.{key} {why} (shape {})", shape_text(shape)));
    let (dim, image, x) = match *shape {
        [_, d] => {
            if spec.layout.is_some() {
                return Err(no("layout", "applies to 4-dimensional image arrays"));
            }
            let image = match spec.image_shape {
                Some([c, h, w]) if c * h * w == d => Some((c, h, w)),
                Some([c, h, w]) => {
                    return Err(bad(format!(
                        "dataset.image-shape = [{c}, {h}, {w}] holds {} values, the examples \
                         {d}",
                        c * h * w
                    )));
                }
                None => None,
            };
            (d, image, x)
        }
        [_, h, w] => {
            if spec.layout.is_some() || spec.image_shape.is_some() {
                let key = if spec.layout.is_some() {
                    "layout"
                } else {
                    "image-shape"
                };
                return Err(no(
                    key,
                    "applies to other shapes than (N, H, W) gray images",
                ));
            }
            (h * w, Some((1, h, w)), x)
        }
        [_, a, b, c] => {
            if spec.image_shape.is_some() {
                return Err(no("image-shape", "applies to (N, D) feature arrays"));
            }
            let chan = |v: usize| v == 1 || v == 3;
            let layout = match spec.layout {
                Some(l) => l,
                None if chan(a) && !chan(c) => Layout::Nchw,
                None if chan(c) && !chan(a) => Layout::Nhwc,
                None => {
                    return Err(bad(format!(
                        "shape {} does not say where the channels are: set dataset.layout = \
                         \"nchw\" (N, C, H, W) or \"nhwc\" (N, H, W, C)",
                        shape_text(shape)
                    )));
                }
            };
            match layout {
                Layout::Nchw => (a * b * c, Some((a, b, c)), x),
                Layout::Nhwc => {
                    let (h, w, ch) = (a, b, c);
                    let d = h * w * ch;
                    let mut out = vec![0.0; x.len()];
                    for (src, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                        for (p, px) in src.chunks_exact(ch).enumerate() {
                            for (k, &v) in px.iter().enumerate() {
                                dst[k * h * w + p] = v;
                            }
                        }
                    }
                    (d, Some((ch, h, w)), out)
                }
            }
        }
        _ => {
            return Err(bad(format!(
                "examples of shape {}: expected (N, D) feature vectors, (N, H, W) gray images, \
                 or (N, C, H, W) / (N, H, W, C) images",
                shape_text(shape)
            )));
        }
    };
    if dim == 0 {
        return Err(bad(format!(
            "examples of shape {} hold no value",
            shape_text(shape)
        )));
    }
    Ok(Shaped { n, dim, image, x })
}

/// An integer array of shape (N) or (N, 1) as values.
fn array_labels(a: &NpyArray, path: &Path, what: &str) -> Result<Vec<i64>, DataError> {
    let Some(v) = a.integers() else {
        return Err(DataError::corrupt(
            path,
            format!("{what} are {}, not integers", a.dtype.name()),
        ));
    };
    label_vector(&a.shape, v.into_iter(), path)
}

fn label_vector(
    shape: &[usize],
    v: impl Iterator<Item = i64>,
    path: &Path,
) -> Result<Vec<i64>, DataError> {
    match shape {
        [_] | [_, 1] => Ok(v.collect()),
        s => Err(DataError::corrupt(
            path,
            format!("labels of shape {}: expected (N) or (N, 1)", shape_text(s)),
        )),
    }
}

/// Integer ids for `parts`' values: integers as they are (each ≥ 0), or text mapped to ids
/// in sorted order. Returns the ids per part and the names (empty for integers).
fn to_ids(
    parts: Vec<(&Values, &Path)>,
    what: &str,
) -> Result<(Vec<Vec<u32>>, Vec<String>), DataError> {
    let text = parts.iter().any(|(v, _)| matches!(v, Values::Text(_)));
    if !text {
        let mut out = Vec::new();
        for (v, path) in parts {
            let Values::Int(v) = v else { continue };
            let mut ids = Vec::with_capacity(v.len());
            for (i, &l) in v.iter().enumerate() {
                let id = u32::try_from(l).map_err(|_| {
                    let why = match l < 0 {
                        true => "is negative (ids are 0, 1, ...)",
                        false => "is too large for an id",
                    };
                    DataError::corrupt(path, format!("{what} {l} of example {i} {why}"))
                })?;
                ids.push(id);
            }
            out.push(ids);
        }
        return Ok((out, Vec::new()));
    }
    let mut names = BTreeSet::new();
    for (v, _) in &parts {
        match v {
            Values::Text(t) => names.extend(t.iter().cloned()),
            Values::Int(t) => names.extend(t.iter().map(i64::to_string)),
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let id = |s: &str| names.binary_search_by(|n| n.as_str().cmp(s)).unwrap_or(0) as u32;
    let out = parts
        .iter()
        .map(|(v, _)| match v {
            Values::Text(t) => t.iter().map(|s| id(s)).collect(),
            Values::Int(t) => t.iter().map(|s| id(&s.to_string())).collect(),
        })
        .collect();
    Ok((out, names))
}

/// Like [`to_ids`], but integers too are mapped to ids in sorted order (domain values need
/// not be 0, 1, ...): returns ids and names.
fn dense_ids(parts: Vec<(&Values, &Path)>) -> (Vec<Vec<u32>>, Vec<String>) {
    let text = parts.iter().any(|(v, _)| matches!(v, Values::Text(_)));
    if text {
        return to_ids(parts, "domain").unwrap_or_default();
    }
    let mut vals = BTreeSet::new();
    for (v, _) in &parts {
        if let Values::Int(t) = v {
            vals.extend(t.iter().copied());
        }
    }
    let vals: Vec<i64> = vals.into_iter().collect();
    let ids = parts
        .iter()
        .map(|(v, _)| match v {
            Values::Int(t) => t
                .iter()
                .map(|x| vals.binary_search(x).unwrap_or(0) as u32)
                .collect(),
            Values::Text(_) => Vec::new(),
        })
        .collect();
    (ids, vals.iter().map(i64::to_string).collect())
}

/// Puts the sources together: shapes agree, labels to ids, the test split drawn, domains.
fn assemble(
    spec: &UserData,
    mut sources: Vec<Source>,
    per_file: bool,
    seed: u64,
) -> Result<Split, DataError> {
    let name = spec.name();
    let first = &sources[0];
    let (dim, image) = (first.dim, first.image);
    for s in &sources[1..] {
        if (s.dim, s.image) != (dim, image) {
            return Err(DataError::corrupt(
                &s.x_file,
                format!(
                    "holds {} but {} holds {}: every domain's examples have one shape",
                    shape_name(s.dim, s.image),
                    first.x_file.display(),
                    shape_name(dim, image)
                ),
            ));
        }
    }
    // CSV labels that are all integers are integers.
    if spec.kind == Format::Csv {
        let all_int = sources.iter().all(|s| {
            std::iter::once(&s.train)
                .chain(&s.test)
                .all(|p| match &p.labels {
                    Values::Text(t) => t.iter().all(|c| c.parse::<i64>().is_ok()),
                    Values::Int(_) => true,
                })
        });
        if all_int {
            for s in &mut sources {
                for p in std::iter::once(&mut s.train).chain(s.test.as_mut()) {
                    let v = std::mem::replace(&mut p.labels, Values::Int(Vec::new()));
                    p.labels = v.ints_if_possible();
                }
            }
        }
    }
    let parts: Vec<(&Values, &Path)> = sources
        .iter()
        .flat_map(|s| std::iter::once(&s.train).chain(&s.test))
        .map(|p| (&p.labels, p.label_file.as_path()))
        .collect();
    let (ids, classes) = to_ids(parts, "label")?;
    let max = ids
        .iter()
        .flatten()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let num_classes = match spec.num_classes {
        Some(n) if !classes.is_empty() && n < classes.len() => {
            return invalid(format!(
                "dataset {name}: num-classes = {n} but the labels name {} classes ({})",
                classes.len(),
                classes.join(", ")
            ));
        }
        Some(n) => n,
        None => max.max(classes.len()),
    };
    // Labels below num-classes, naming the first that is not.
    let mut k = 0;
    for s in &sources {
        for p in std::iter::once(&s.train).chain(&s.test) {
            if let Some(i) = ids[k].iter().position(|&l| l as usize >= num_classes) {
                return Err(DataError::corrupt(
                    &p.label_file,
                    format!(
                        "label {} of example {i} is not below num-classes = {num_classes}",
                        ids[k][i]
                    ),
                ));
            }
            k += 1;
        }
    }
    // Per-example domains.
    let has_dom = sources.iter().any(|s| s.train.domains.is_some());
    let dom_parts: Vec<(&Values, &Path)> = sources
        .iter()
        .flat_map(|s| std::iter::once(&s.train).chain(&s.test))
        .filter_map(|p| p.domains.as_ref().map(|d| (d, p.label_file.as_path())))
        .collect();
    let (dom_ids, dom_names) = match has_dom {
        true => dense_ids(dom_parts),
        false => (Vec::new(), Vec::new()),
    };
    // Assemble, drawing test-fraction's split where a source has no test part.
    let mut train = Collect::default();
    let mut test = Collect::default();
    let mut k = 0;
    for (si, s) in sources.iter().enumerate() {
        let ytr = &ids[k];
        let dom_of = |kk: usize, i: usize| -> u32 {
            if per_file {
                si as u32
            } else if has_dom {
                dom_ids[kk][i]
            } else {
                0
            }
        };
        let dtr = k;
        k += 1;
        match &s.test {
            Some(t) => {
                for (i, &y) in ytr.iter().enumerate() {
                    train.push(&s.train.x, dim, i, y, dom_of(dtr, i));
                }
                for (i, &y) in ids[k].iter().enumerate() {
                    test.push(&t.x, dim, i, y, dom_of(k, i));
                }
                k += 1;
            }
            None => {
                let frac = spec.test_fraction.unwrap_or(0.0);
                let mut held = vec![false; ytr.len()];
                let mut by_class = vec![Vec::new(); num_classes];
                for (i, &y) in ytr.iter().enumerate() {
                    by_class[y as usize].push(i);
                }
                for (c, members) in by_class.iter().enumerate() {
                    let n = (frac * members.len() as f64).round() as usize;
                    if n > 0 && n == members.len() {
                        return invalid(format!(
                            "dataset {name}: test-fraction = {frac} holds out every one of the \
                             {n} examples of class {c}, leaving none to train on; lower it"
                        ));
                    }
                    let mut rng = Rng::keyed(seed, &format!("test-fraction {si}"), c as u64);
                    for i in rng.choose_sorted(members, n) {
                        held[i] = true;
                    }
                }
                for i in 0..ytr.len() {
                    let to = if held[i] { &mut test } else { &mut train };
                    to.push(&s.train.x, dim, i, ytr[i], dom_of(dtr, i));
                }
            }
        }
    }
    if test.y.is_empty() {
        return invalid(format!(
            "dataset {name}: test-fraction = {} draws no test example; raise it",
            spec.test_fraction.unwrap_or(0.0)
        ));
    }
    if train.y.is_empty() {
        return invalid(format!("dataset {name}: no training example"));
    }
    let domains = if per_file {
        Some(Domains {
            names: sources.iter().map(|s| s.name.clone()).collect(),
            train: train.d,
            test: test.d,
        })
    } else if has_dom {
        Some(Domains {
            names: dom_names,
            train: train.d,
            test: test.d,
        })
    } else {
        None
    };
    let make = |x: Vec<f32>, y: Vec<u32>| Dataset {
        name: name.clone(),
        x,
        y,
        dim,
        image,
        num_classes,
    };
    let split = Split {
        train: make(train.x, train.y),
        test: make(test.x, test.y),
        files: sources.into_iter().flat_map(|s| s.files).collect(),
        meta: Meta { classes, domains },
    };
    split.train.check()?;
    split.test.check()?;
    Ok(split)
}

/// Examples gathered into one set.
#[derive(Default)]
struct Collect {
    x: Vec<f32>,
    y: Vec<u32>,
    d: Vec<u32>,
}

impl Collect {
    fn push(&mut self, x: &[f32], dim: usize, i: usize, y: u32, d: u32) {
        self.x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        self.y.push(y);
        self.d.push(d);
    }
}
