//! A model: one safetensors file, or a Hugging Face folder (a single `model.safetensors`, or
//! shards named by `model.safetensors.index.json`), plus the side files (config, tokenizer,
//! generation config) that outputs carry along.

use crate::checksum;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::file::{MemTensor, SafetensorsFile, TensorView};
use crate::header::HeaderError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

/// Files in a model folder that are weights (never copied as side files).
const WEIGHT_EXTENSIONS: &[&str] = &[
    "safetensors",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "gguf",
    "h5",
    "msgpack",
    "onnx",
    "npz",
    "npy",
];

pub struct Model {
    /// What the user named (file, folder or index).
    source: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor order: shards in index order, tensors in data order within each.
    order: Vec<(usize, usize)>,
    by_name: HashMap<String, usize>,
    side_files: Vec<PathBuf>,
    index_metadata: BTreeMap<String, Value>,
}

impl Model {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a model folder.
    pub fn open(path: &Path) -> Result<Model> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let side_files = side_files_in(path)?;
            let index = path.join(INDEX_NAME);
            let single = path.join(SINGLE_NAME);
            if exists(&index) && exists(&single) {
                return Err(Error::format(
                    path,
                    format!(
                        "holds both {SINGLE_NAME} and {INDEX_NAME}: two models (tools differ in which they load); remove one"
                    ),
                ));
            }
            let root = confinement_root(path)?;
            let mut m = if exists(&index) {
                inside(&root, &index, INDEX_NAME)?;
                Self::open_index(&index)?
            } else if exists(&single) {
                inside(&root, &single, SINGLE_NAME)?;
                Self::from_files(path, vec![SafetensorsFile::open(&single)?])?
            } else {
                let mut st: Vec<PathBuf> = list_dir(path)?
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                    .collect();
                st.sort();
                match st.len() {
                    0 => {
                        return Err(Error::format(
                            path,
                            "folder holds no .safetensors file (and no model.safetensors.index.json)",
                        ));
                    }
                    1 => {
                        inside(&root, &st[0], "the model file")?;
                        Self::from_files(path, vec![SafetensorsFile::open(&st[0])?])?
                    }
                    n => {
                        return Err(Error::format(
                            path,
                            format!(
                                "folder holds {n} .safetensors files but no {INDEX_NAME} saying how they form one model"
                            ),
                        ));
                    }
                }
            };
            m.source = path.to_path_buf();
            m.side_files = side_files;
            Ok(m)
        } else if path.extension().is_some_and(|e| e == "json") {
            let mut m = Self::open_index(path)?;
            m.side_files = side_files_in(parent_dir(path))?;
            Ok(m)
        } else {
            Self::from_files(path, vec![SafetensorsFile::open(path)?])
        }
    }

    fn open_index(index: &Path) -> Result<Model> {
        let dir = parent_dir(index);
        crate::file::regular_file(index, "a model.safetensors.index.json file")?;
        let text = std::fs::read(index).map_err(|e| Error::io(index, e))?;
        let parsed = parse_index(&text).map_err(|e| match e.tensor {
            Some(t) => Error::tensor(index, &t, e.msg),
            None => Error::format(index, e.msg),
        })?;
        let ParsedIndex {
            weight_map: pairs,
            metadata: index_metadata,
        } = parsed;
        let mut shard_names: Vec<String> = Vec::new();
        let mut wanted: HashMap<String, String> = HashMap::new();
        for (tensor, shard) in pairs {
            if !shard_names.contains(&shard) {
                shard_names.push(shard.clone());
            }
            wanted.insert(tensor, shard);
        }
        shard_names.sort();
        let mut files = Vec::with_capacity(shard_names.len());
        let root = confinement_root(dir)?;
        for s in &shard_names {
            let p = dir.join(s);
            if !p.exists() {
                return Err(Error::format(
                    index,
                    format!(
                        "names shard '{s}', which does not exist in {}",
                        dir.display()
                    ),
                ));
            }
            // Symlinks pointing outside the folder are refused like '../' names.
            let canon = p.canonicalize().map_err(|e| Error::io(&p, e))?;
            if !canon.starts_with(&root) {
                return Err(Error::format(
                    index,
                    format!("shard '{s}' resolves outside the model folder"),
                ));
            }
            files.push(SafetensorsFile::open(&p)?);
        }
        // Every listed tensor must be in its shard, and every shard tensor must be listed.
        for (fi, f) in files.iter().enumerate() {
            for t in f.tensors() {
                match wanted.get(&t.name) {
                    Some(s) if *s == shard_names[fi] => {}
                    Some(s) => {
                        return Err(Error::tensor(
                            f.path(),
                            &t.name,
                            format!("index places this tensor in '{s}', but it is (also) here"),
                        ));
                    }
                    None => {
                        return Err(Error::tensor(
                            f.path(),
                            &t.name,
                            format!("not listed in {}", index.display()),
                        ));
                    }
                }
            }
        }
        for (t, s) in &wanted {
            let fi = shard_names.iter().position(|n| n == s).unwrap_or(0);
            if files[fi].get(t).is_none() {
                return Err(Error::tensor(
                    index,
                    t,
                    format!("listed in weight_map but missing from shard '{s}'"),
                ));
            }
        }
        // A shard file the index does not name holds tensors of no model: a leftover of
        // another model or a damaged index.
        for p in list_dir(dir)? {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if crate::writer::is_shard_name(name) && !shard_names.iter().any(|s| s == name) {
                return Err(Error::format(
                    index,
                    format!(
                        "does not name the shard file '{name}' in its folder; its tensors belong to no model (remove it or fix the index)"
                    ),
                ));
            }
        }
        let mut m = Self::from_files(index, files)?;
        m.index_metadata = index_metadata;
        Ok(m)
    }

    /// A model held in memory, its tensors' bytes borrowed rather than copied (one in-memory
    /// file: [`SafetensorsFile::from_memory`], which validates them). `name` stands for its
    /// path in errors and reports; it has no side files and no metadata.
    pub fn from_tensors(name: &Path, tensors: Vec<MemTensor>) -> Result<Model> {
        Self::from_files(name, vec![SafetensorsFile::from_memory(name, tensors)?])
    }

    fn from_files(source: &Path, files: Vec<SafetensorsFile>) -> Result<Model> {
        // Files engram wrote as one output share its identity; two identities are two outputs.
        let ids: Vec<(&Path, Option<&String>)> = files
            .iter()
            .map(|f| (f.path(), f.metadata().get(checksum::OUTPUT_KEY)))
            .collect();
        if let Some((a, b)) = ids.iter().zip(ids.iter().skip(1)).find(|(a, b)| a.1 != b.1) {
            return Err(Error::format(
                source,
                format!(
                    "mixes files of different outputs: {} has {} {}, {} has {}",
                    a.0.display(),
                    checksum::OUTPUT_KEY,
                    a.1.map_or("none", String::as_str),
                    b.0.display(),
                    b.1.map_or("none", String::as_str)
                ),
            ));
        }
        let mut order = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors().iter().enumerate() {
                if by_name.insert(t.name.clone(), order.len()).is_some() {
                    return Err(Error::tensor(f.path(), &t.name, "appears in two shards"));
                }
                order.push((fi, ti));
            }
        }
        Ok(Model {
            source: source.to_path_buf(),
            files,
            order,
            by_name,
            side_files: Vec::new(),
            index_metadata: BTreeMap::new(),
        })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Tensors in model order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        self.order.iter().map(|&(f, t)| self.files[f].view(t))
    }

    pub fn tensor_at(&self, i: usize) -> TensorView<'_> {
        let (f, t) = self.order[i];
        self.files[f].view(t)
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name.get(name).map(|&i| self.tensor_at(i))
    }

    /// The tensor, or an error naming the model and the missing tensor.
    pub fn require(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name)
            .ok_or_else(|| Error::tensor(&self.source, name, "not present in this model"))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors().map(|t| t.name())
    }

    /// The dtype of the first float tensor (f32 if there is none): the dtype a vector
    /// computed over this model is stored in unless the user says otherwise.
    pub fn float_dtype(&self) -> DType {
        self.tensors()
            .find(|v| v.dtype().is_float())
            .map(|v| v.dtype())
            .unwrap_or(DType::F32)
    }

    pub fn param_count(&self) -> u64 {
        self.tensors().map(|t| t.numel() as u64).sum()
    }

    pub fn data_bytes(&self) -> u64 {
        self.tensors().map(|t| t.bytes.len() as u64).sum()
    }

    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len_bytes()).sum()
    }

    /// `__metadata__` of the first file (shards of one model normally carry the same).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.files
            .first()
            .map(|f| f.metadata().clone())
            .unwrap_or_default()
    }

    pub fn index_metadata(&self) -> &BTreeMap<String, Value> {
        &self.index_metadata
    }

    /// Side files (config.json, tokenizer files, ...) that outputs carry along.
    pub fn side_files(&self) -> &[PathBuf] {
        &self.side_files
    }

    /// Whether `other` holds the same tensors as this model: the same names, dtypes, shapes and
    /// bytes, whatever their order, files or metadata (which records the command line).
    pub fn same_tensors(&self, other: &Model) -> bool {
        self.len() == other.len()
            && self.tensors().all(|t| {
                other.get(t.name()).is_some_and(|u| {
                    u.dtype() == t.dtype() && u.shape() == t.shape() && u.bytes == t.bytes
                })
            })
    }

    /// Verifies the checksums engram stores in each file's metadata (`engram.crc32`): every
    /// listed tensor is present with the recorded name, dtype, shape and bytes. Files without
    /// checksums (written by other tools) pass. The error names the file and the tensor.
    pub fn verify(&self) -> Result<()> {
        self.files.iter().try_for_each(SafetensorsFile::verify)?;
        // The files' shared identity must be that of their tensors taken together (a shard
        // of another output, with valid checksums of its own, does not fit).
        let Some(first) = self.files.first() else {
            return Ok(());
        };
        let Some(id) = first.metadata().get(checksum::OUTPUT_KEY) else {
            return Ok(());
        };
        let n: usize = id
            .split('/')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if self.files.len() == 1 && n != 1 {
            return Ok(()); // one shard opened on its own
        }
        let mut all = BTreeMap::new();
        for f in &self.files {
            let text = f
                .metadata()
                .get(checksum::KEY)
                .map(String::as_str)
                .unwrap_or("{}");
            all.extend(checksum::decode(text).map_err(|e| Error::format(f.path(), e))?);
        }
        if checksum::output_id(all.iter(), self.files.len()) != *id {
            return Err(Error::format(
                &self.source,
                format!(
                    "its {} file(s) do not form the output they were written as ({} {id}): a file is missing, extra or from another output",
                    self.files.len(),
                    checksum::OUTPUT_KEY
                ),
            ));
        }
        Ok(())
    }

    /// Checks every float tensor for NaN and infinite values (`--check-finite`).
    pub fn check_finite(&self) -> Result<()> {
        use rayon::prelude::*;
        self.order
            .par_iter()
            .try_for_each(|&(f, t)| self.files[f].view(t).check_finite())
    }
}

/// A parsed `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedIndex {
    /// (tensor, shard file name) in file order; names unique, paths relative and inside the
    /// folder.
    pub weight_map: Vec<(String, String)>,
    /// The index's `metadata` object (e.g. `total_size`).
    pub metadata: BTreeMap<String, Value>,
}

/// Parses and validates an index file's bytes (pure, for fuzzing): a JSON object with a
/// `weight_map` of tensor name to shard file name; every shard name a plain relative path,
/// no tensor named twice. The caller adds the index's path to errors.
pub fn parse_index(bytes: &[u8]) -> std::result::Result<ParsedIndex, HeaderError> {
    let err = |msg: String| HeaderError { tensor: None, msg };
    let terr = |t: &str, msg: String| HeaderError {
        tensor: Some(t.to_string()),
        msg,
    };
    if bytes.is_empty() {
        return Err(err("index file is empty".into()));
    }
    let top: RawJson =
        serde_json::from_slice(bytes).map_err(|e| err(format!("index is not valid JSON: {e}")))?;
    let RawJson::Object(top) = top else {
        return Err(err("index is not a JSON object".into()));
    };
    let mut weight_map = None;
    let mut metadata = BTreeMap::new();
    for (k, v) in top {
        match k.as_str() {
            "weight_map" => {
                if weight_map.is_some() {
                    return Err(err("index has two 'weight_map' entries".into()));
                }
                weight_map = Some(v)
            }
            "metadata" => {
                if let Value::Object(o) = v.into_value() {
                    metadata = o.into_iter().collect();
                }
            }
            _ => {}
        }
    }
    let weight_map = weight_map.ok_or_else(|| err("index has no 'weight_map'".into()))?;
    // Entries in file order with duplicates kept, so that a name given twice is refused.
    let RawJson::Object(pairs) = weight_map else {
        return Err(err("'weight_map' is not an object".into()));
    };
    if pairs.is_empty() {
        return Err(err("index has an empty 'weight_map' (no tensors)".into()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (tensor, shard) in pairs {
        let RawJson::Scalar(Value::String(shard)) = shard else {
            return Err(terr(&tensor, "weight_map value is not a file name".into()));
        };
        if !is_plain_relative(&shard) {
            return Err(terr(
                &tensor,
                format!("shard path '{shard}' is absolute or leaves the model folder"),
            ));
        }
        if !seen.insert(tensor.clone()) {
            return Err(terr(&tensor, "listed twice in weight_map".into()));
        }
        out.push((tensor, shard));
    }
    Ok(ParsedIndex {
        weight_map: out,
        metadata,
    })
}

/// A JSON value whose objects keep every entry, duplicates included, in file order (a
/// `serde_json::Value` keeps only the last of two equal keys).
enum RawJson {
    Object(Vec<(String, RawJson)>),
    Array(Vec<RawJson>),
    Scalar(Value),
}

impl RawJson {
    fn into_value(self) -> Value {
        match self {
            RawJson::Object(e) => {
                Value::Object(e.into_iter().map(|(k, v)| (k, v.into_value())).collect())
            }
            RawJson::Array(a) => Value::Array(a.into_iter().map(RawJson::into_value).collect()),
            RawJson::Scalar(v) => v,
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<RawJson, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, RawJson>()? {
                    v.push((k, val));
                }
                Ok(RawJson::Object(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<RawJson, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = s.next_element::<RawJson>()? {
                    v.push(x);
                }
                Ok(RawJson::Array(v))
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::from(n)))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::from(n)))
            }
            fn visit_f64<E>(self, n: f64) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::from(n)))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::String(s)))
            }
            fn visit_unit<E>(self) -> std::result::Result<RawJson, E> {
                Ok(RawJson::Scalar(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_plain_relative(shard: &str) -> bool {
    let p = Path::new(shard);
    !shard.is_empty()
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)))
}

/// The folder holding `file`; `.` for a bare file name (whose `parent()` is the empty path,
/// which the file system refuses).
fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        out.push(e.path());
    }
    Ok(out)
}

/// The folder a model folder's files must resolve into: the folder itself, or for a snapshot
/// of a Hugging Face hub cache (`<repo>/snapshots/<rev>/`, whose files are symlinks into
/// `<repo>/blobs/`) the repository folder. Canonical.
pub fn confinement_root(dir: &Path) -> Result<PathBuf> {
    let canon = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let repo = canon
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .filter(|r| r.join("blobs").is_dir());
    Ok(repo.map(Path::to_path_buf).unwrap_or(canon))
}

/// Refuses a file of a model folder that resolves outside it (through a symlink).
pub fn inside(root: &Path, file: &Path, what: &str) -> Result<()> {
    if std::fs::symlink_metadata(file).is_err() {
        return Err(Error::format(file, format!("{what} is missing")));
    }
    let ok = file.canonicalize().is_ok_and(|c| c.starts_with(root));
    if !ok {
        return Err(Error::format(
            file,
            format!("{what} is a symlink leading outside the model folder (or nowhere); refused"),
        ));
    }
    Ok(())
}

/// Whether anything (even a dangling symlink or a FIFO) is at `p`.
fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Regular, visible, non-weight files of a model folder, sorted by name. A side file that is
/// a FIFO, socket or device, or a symlink leading outside the folder, is an error: outputs
/// copy side files, and must neither block on them nor copy files from elsewhere.
pub fn side_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let root = confinement_root(dir)?;
    let mut out = Vec::new();
    for p in list_dir(dir)? {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let lmeta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
        if name.starts_with('.')
            || name == INDEX_NAME
            || crate::commit::is_temporary(name)
            || WEIGHT_EXTENSIONS.contains(&ext)
            || lmeta.is_dir()
        {
            continue;
        }
        if lmeta.file_type().is_symlink() {
            inside(&root, &p, "side file")?;
            let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            if meta.is_dir() {
                continue;
            }
        }
        crate::file::regular_file(&p, "a regular side file (config, tokenizer)")?;
        out.push(p);
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::file::SharedBytes;
    use std::sync::Arc;

    fn f32_bytes(v: &[f32]) -> SharedBytes {
        Arc::new(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    fn mem(name: &str, dtype: DType, shape: &[usize], bytes: SharedBytes) -> MemTensor {
        MemTensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }

    #[test]
    fn in_memory_model_borrows_its_buffers() {
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b: SharedBytes = Arc::new(vec![1u8, 0, 1]);
        let a_ptr = AsRef::<[u8]>::as_ref(&*a).as_ptr();
        let m = Model::from_tensors(
            Path::new("<memory>"),
            vec![
                mem("w", DType::F32, &[2, 3], a.clone()),
                mem("mask", DType::Bool, &[3], b),
                mem("empty", DType::F16, &[0, 4], Arc::new(Vec::<u8>::new())),
            ],
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.names().collect::<Vec<_>>(), ["w", "mask", "empty"]);
        let w = m.require("w").unwrap();
        // No copy: the view is the caller's buffer.
        assert_eq!(w.bytes.as_ptr(), a_ptr);
        assert_eq!(w.to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        w.release(0, w.numel()); // a no-op in memory
        assert_eq!(w.to_f32().unwrap()[5], 6.0);
        assert_eq!(w.path, Path::new("<memory>"));
        assert_eq!(m.get("mask").unwrap().bytes, [1, 0, 1]);
        assert_eq!(
            (m.param_count(), m.data_bytes(), m.file_bytes()),
            (9, 27, 27)
        );
        assert_eq!(
            [m.tensor_at(1).info.start, m.tensor_at(1).info.end],
            [24, 27]
        );
        assert!(m.side_files().is_empty() && m.metadata().is_empty());
        m.verify().unwrap();
        m.check_finite().unwrap();
        let e = m.require("nope").err().unwrap().to_string();
        assert!(e.contains("<memory>") && e.contains("nope"), "{e}");
    }

    #[test]
    fn in_memory_model_equals_the_written_file() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("m.safetensors");
        let vals = [0.5f32, -1.0, 2.25, 8.0];
        let w = crate::ModelWriter::create(
            &out,
            vec![crate::TensorSpec::new("x", DType::F32, &[2, 2])],
            &crate::WriteOptions {
                max_shard_bytes: None,
                metadata: Default::default(),
            },
        )
        .unwrap();
        w.write_f32("x", &vals).unwrap();
        w.finish(&[]).unwrap();
        let file = Model::open(&out).unwrap();
        let m = Model::from_tensors(
            Path::new("mem"),
            vec![mem("x", DType::F32, &[2, 2], f32_bytes(&vals))],
        )
        .unwrap();
        assert!(m.same_tensors(&file) && file.same_tensors(&m));
    }

    #[test]
    fn in_memory_model_refuses_bad_tensors() {
        let e = |tensors: Vec<MemTensor>| {
            Model::from_tensors(Path::new("mem"), tensors)
                .err()
                .unwrap()
                .to_string()
        };
        let msg = e(vec![
            mem("a", DType::F32, &[1], f32_bytes(&[1.0])),
            mem("a", DType::F32, &[1], f32_bytes(&[2.0])),
        ]);
        assert!(msg.contains("'a'") && msg.contains("given twice"), "{msg}");
        let msg = e(vec![mem("b", DType::F32, &[3], f32_bytes(&[1.0, 2.0]))]);
        assert!(
            msg.contains("'b'") && msg.contains("holds 8 bytes"),
            "{msg}"
        );
        assert!(msg.contains("needs 12"), "{msg}");
        let msg = e(vec![mem("c", DType::F32, &[usize::MAX, 2], f32_bytes(&[]))]);
        assert!(msg.contains("'c'") && msg.contains("overflows"), "{msg}");
        let msg = e(vec![mem("__metadata__", DType::U8, &[0], f32_bytes(&[]))]);
        assert!(msg.contains("reserved"), "{msg}");
    }
}
