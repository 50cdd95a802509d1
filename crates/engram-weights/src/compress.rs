//! Task-vector compression: one bundle holding θ₀, τ_MTL and one packed bit mask per task;
//! any task's model is rebuilt as θ₀ + m_t ⊙ τ_MTL, bit for bit.
//! Paper: Localizing Task Information for Improved Model Merging and Compression (arXiv 2405.07813); card: methods/merging.md ("TALL compression storage").
//!
//! Layout (engram choice, from the card): a safetensors file `bundle.safetensors` with the
//! base under `base.<name>` (its own dtype), τ_MTL under `tau.<name>` (`tau_dtype`), and U8
//! tensors `tall.mask.<task>.<name>` packed MSB first per tensor; `__metadata__` records the
//! tasks, λ's, recipe and bit order. The base's side files sit beside it in the bundle folder.
//!
//! With `MaskCoding::Arith` the masks are entropy coded instead (`maskcode.rs`) and live in
//! `masks.safetensors` beside the bundle: U8 tensors `tall.maskac.<task>.<name>`. The bundle
//! folder (bundle, masks, side files) is committed as one (`engram_ckpt::Staged`), and every
//! file carries per-tensor checksums, verified before anything is extracted.

use crate::maskcode;
use crate::stream::{TensorChunks, bit, pack_bits};
use crate::tall::Tall;
use engram_ckpt::dtype::{encode_f32, round_through};
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, WriteOptions, model};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const BUNDLE_FILE: &str = "bundle.safetensors";
/// Entropy-coded masks beside the bundle file (`MaskCoding::Arith`).
pub const MASKS_FILE: &str = "masks.safetensors";
/// Bundle metadata: the identity (`engram.output`) of the masks file written with it, so that
/// masks of another bundle are refused.
const MASKS_OUTPUT: &str = "tall.masks_output";
use engram_ckpt::checksum::OUTPUT_KEY;

/// How the task masks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskCoding {
    /// One bit per weight per task, packed MSB first (the reference layout).
    Packed,
    /// Adaptive binary range coding under magnitude and neighbouring-bit contexts.
    Arith,
}

impl MaskCoding {
    pub fn parse(s: &str) -> Result<MaskCoding> {
        match s {
            "packed" => Ok(MaskCoding::Packed),
            "arith" => Ok(MaskCoding::Arith),
            _ => Err(Error::Invalid(format!(
                "unknown mask coding '{s}'; use packed or arith"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MaskCoding::Packed => "packed",
            MaskCoding::Arith => "arith",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleReport {
    pub bundle_bytes: u64,
    /// Base plus every fine-tuned checkpoint the bundle replaces.
    pub replaced_bytes: u64,
    pub ratio: f64,
    /// Bytes the masks take as stored.
    pub mask_bytes: u64,
    /// What one packed bit per weight per task would take.
    pub packed_mask_bytes: u64,
    pub mask_coding: MaskCoding,
    pub tasks: Vec<String>,
}

fn mask_name(task: &str, tensor: &str) -> String {
    format!("tall.mask.{task}.{tensor}")
}

fn coded_name(task: &str, tensor: &str) -> String {
    format!("tall.maskac.{task}.{tensor}")
}

/// Coded streams of one chunk, one per task.
type ChunkStreams = Vec<Vec<u8>>;

/// Codes the masks of one chunk (τ_MTL as the bundle stores it gives the contexts).
fn code_chunk(tau: &[f32], masks: &[Vec<bool>], tau_dtype: DType, row: usize) -> ChunkStreams {
    let mut tau = tau.to_vec();
    round_through(tau_dtype, &mut tau);
    let buckets = maskcode::magnitude_buckets(&tau);
    masks
        .iter()
        .map(|m| maskcode::encode_bits(m, &buckets, maskcode::BUCKETS, row))
        .collect()
}

/// Coded mask streams spooled to a temporary file while the bundle is written, then copied
/// into `masks.safetensors` once their sizes are known (memory stays one tensor's streams).
struct Spool {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    entries: Vec<(String, u64, u64)>,
    offset: u64,
}

impl Spool {
    fn new(dir: &Path) -> Result<Spool> {
        let path = dir.join(format!(".masks.engram-spool-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Spool {
            file: std::io::BufWriter::new(file),
            path,
            entries: Vec::new(),
            offset: 0,
        })
    }

    fn push(&mut self, name: String, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.entries.push((name, self.offset, bytes.len() as u64));
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes `masks.safetensors` in `dir`; returns the coded bytes. The spool file is
    /// removed when the spool drops, also on error.
    fn finish(mut self, dir: &Path, metadata: &BTreeMap<String, String>) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        let file = self.file.get_ref();
        let specs = self
            .entries
            .iter()
            .map(|(n, _, len)| TensorSpec::new(n.clone(), DType::U8, &[*len as usize]))
            .collect();
        let w = ModelWriter::create(
            &dir.join(MASKS_FILE),
            specs,
            &WriteOptions {
                max_shard_bytes: None,
                metadata: metadata.clone(),
            },
        )?;
        let mut buf = Vec::new();
        for (name, off, len) in &self.entries {
            buf.resize(*len as usize, 0);
            file.read_exact_at(&mut buf, *off)
                .map_err(|e| Error::io(&self.path, e))?;
            w.write_bytes(name, &buf)?;
        }
        w.finish(&[])?;
        Ok(self.offset)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the bundle folder `out` (the bundle file plus the base's side files).
pub fn write_bundle(
    tall: &Tall,
    out: &Path,
    tau_dtype: DType,
    coding: MaskCoding,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BundleReport> {
    // Tensor names hold the task between dots; `Tall::new` checked the rest.
    if let Some(t) = tall.tasks.iter().find(|t| t.contains('.')) {
        return Err(Error::Invalid(format!(
            "task name '{t}' contains a '.': bundle tensor names separate tasks by dots"
        )));
    }
    let mut specs = Vec::new();
    for v in tall.base.tensors() {
        specs.push(TensorSpec::new(
            format!("base.{}", v.name()),
            v.dtype(),
            v.shape(),
        ));
    }
    for name in &tall.tensors {
        let v = tall.base.require(name)?;
        specs.push(TensorSpec::new(format!("tau.{name}"), tau_dtype, v.shape()));
        if coding == MaskCoding::Arith {
            continue;
        }
        for t in &tall.tasks {
            specs.push(TensorSpec::new(
                mask_name(t, name),
                DType::U8,
                &[v.numel().div_ceil(8)],
            ));
        }
    }
    let mut md = metadata.clone();
    md.insert("engram.bundle".into(), "tall".into());
    md.insert(
        "tall.tasks".into(),
        serde_json::to_string(&tall.tasks).unwrap_or_default(),
    );
    md.insert(
        "tall.lambdas".into(),
        serde_json::to_string(&tall.lambdas).unwrap_or_default(),
    );
    md.insert(
        "tall.recipe".into(),
        serde_json::to_string(&tall.recipe).unwrap_or_default(),
    );
    md.insert("tall.bit_order".into(), "msb_first_per_tensor".into());
    md.insert("tall.tau_dtype".into(), tau_dtype.name().into());
    md.insert("tall.mask_coding".into(), coding.name().into());
    if coding == MaskCoding::Arith {
        md.insert("tall.masks_file".into(), MASKS_FILE.into());
        // The masks file's identity, known once it is written (a placeholder until then).
        md.insert(
            MASKS_OUTPUT.into(),
            engram_ckpt::checksum::output_placeholder(),
        );
        md.insert(
            "tall.mask_contexts".into(),
            "|tau| octave vs chunk mean (16), two previous bits, bits 1 and 2 rows above".into(),
        );
    }
    // The bundle file, the masks file and the side files are built in a staging folder and
    // switched in together (the spool too lives there, so a killed run leaves nothing).
    let staged = engram_ckpt::Staged::new(out)?;
    let stage = staged.path().to_path_buf();
    let mut spool = match coding {
        MaskCoding::Arith => Some(Spool::new(&stage)?),
        MaskCoding::Packed => None,
    };
    let file = stage.join(BUNDLE_FILE);
    let w = ModelWriter::create(
        &file,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: md.clone(),
        },
    )?;
    for v in tall.base.tensors() {
        crate::output::copy_bytes_released(&w, &format!("base.{}", v.name()), &v)?;
    }
    for name in &tall.tensors {
        let view = tall.base.require(name)?;
        let chunks = TensorChunks::new(Some(view), &[]).count();
        let row = maskcode::row_len(view.shape());
        let coded: Mutex<Vec<Option<ChunkStreams>>> = Mutex::new(vec![None; chunks]);
        tall.visit(name, &|c| {
            let mut bytes = vec![0u8; c.tau.len() * tau_dtype.size()];
            encode_f32(tau_dtype, &c.tau, &mut bytes);
            w.write_bytes_at(&format!("tau.{name}"), c.start, &bytes)?;
            match coding {
                MaskCoding::Packed => {
                    for (t, m) in tall.tasks.iter().zip(&c.masks) {
                        // Chunks start at multiples of 8 elements, so packed chunks tile
                        // the tensor.
                        w.write_bytes_at(&mask_name(t, name), c.start / 8, &pack_bits(m))?;
                    }
                }
                MaskCoding::Arith => {
                    let streams = code_chunk(&c.tau, &c.masks, tau_dtype, row);
                    if let Ok(mut g) = coded.lock() {
                        g[c.index] = Some(streams);
                    }
                }
            }
            progress(c.tau.len() as u64);
            Ok(())
        })?;
        if let Some(spool) = spool.as_mut() {
            let coded = coded
                .into_inner()
                .map_err(|_| Error::Invalid("a mask coding thread panicked".into()))?;
            let coded: Vec<ChunkStreams> = coded.into_iter().flatten().collect();
            if coded.len() != chunks {
                return Err(Error::Invalid(format!(
                    "{name}: a mask chunk was not coded"
                )));
            }
            for (i, t) in tall.tasks.iter().enumerate() {
                let own: Vec<Vec<u8>> = coded.iter().map(|c| c[i].clone()).collect();
                spool.push(coded_name(t, name), &maskcode::join_chunks(&own))?;
            }
        }
    }
    let coded_bytes = match spool {
        Some(s) => {
            let bytes = s.finish(&stage, &md)?;
            let masks = Model::open(&stage.join(MASKS_FILE))?;
            let id = masks
                .metadata()
                .get(OUTPUT_KEY)
                .cloned()
                .unwrap_or_default();
            w.set_metadata(MASKS_OUTPUT, &id)?;
            Some(bytes)
        }
        None => None,
    };
    w.finish(&[])?;
    for f in tall.base.side_files() {
        if let Some(n) = f
            .file_name()
            .filter(|n| !engram_ckpt::writer::users_own(staged.dest(), n))
        {
            engram_ckpt::writer::copy_side_file(f, &stage.join(n))?;
        }
    }
    let mut bundle_bytes = std::fs::metadata(&file)
        .map_err(|e| Error::io(&file, e))?
        .len();
    if coding == MaskCoding::Arith {
        let m = stage.join(MASKS_FILE);
        bundle_bytes += std::fs::metadata(&m).map_err(|e| Error::io(&m, e))?.len();
    }
    staged.commit(&|n| {
        n == BUNDLE_FILE || n == MASKS_FILE || engram_ckpt::writer::is_weight_name(n)
    })?;
    let replaced_bytes =
        tall.base.file_bytes() + tall.models.iter().map(|m| m.file_bytes()).sum::<u64>();
    let packed_mask_bytes = tall
        .tensors
        .iter()
        .map(|n| tall.base.require(n).map(|v| v.numel().div_ceil(8) as u64))
        .sum::<Result<u64>>()?
        * tall.tasks.len() as u64;
    Ok(BundleReport {
        bundle_bytes,
        replaced_bytes,
        ratio: replaced_bytes as f64 / bundle_bytes.max(1) as f64,
        mask_bytes: coded_bytes.unwrap_or(packed_mask_bytes),
        packed_mask_bytes,
        mask_coding: coding,
        tasks: tall.tasks.clone(),
    })
}

/// Task names stored in a bundle.
pub fn bundle_tasks(bundle: &Model) -> Result<Vec<String>> {
    let md = bundle.metadata();
    if md.get("engram.bundle").map(String::as_str) != Some("tall") {
        return Err(Error::format(
            bundle.source(),
            "not an engram TALL bundle (no engram.bundle=tall metadata)",
        ));
    }
    let tasks = md.get("tall.tasks").map(String::as_str).unwrap_or("[]");
    serde_json::from_str(tasks)
        .map_err(|e| Error::format(bundle.source(), format!("bad tall.tasks metadata: {e}")))
}

/// Opens a bundle folder (or the bundle file itself).
pub fn open_bundle(path: &Path) -> Result<Model> {
    let file = if path.is_dir() {
        let f = path.join(BUNDLE_FILE);
        model::inside(&model::confinement_root(path)?, &f, BUNDLE_FILE)?;
        f
    } else {
        path.to_path_buf()
    };
    let m = Model::open(&file)?;
    bundle_tasks(&m)?;
    verify_bundle_file(&m)?;
    Ok(m)
}

/// A bundle file must carry engram's checksums, and they must hold: extracting from a
/// damaged bundle would silently return other weights.
fn verify_bundle_file(m: &Model) -> Result<()> {
    if let Some(f) = m
        .files()
        .iter()
        .find(|f| !f.metadata().contains_key(engram_ckpt::checksum::KEY))
    {
        return Err(Error::format(
            f.path(),
            format!(
                "carries no checksums ({}); rewrite it with `engram compress`",
                engram_ckpt::checksum::KEY
            ),
        ));
    }
    m.verify()
}

/// Rebuilds task `task`'s model from a bundle into the model folder `out`.
pub fn extract_task(
    bundle_dir: &Path,
    task: &str,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PathBuf>> {
    let bundle = open_bundle(bundle_dir)?;
    let out_dir = out;
    let tasks = bundle_tasks(&bundle)?;
    if !tasks.iter().any(|t| t == task) {
        return Err(Error::Invalid(format!(
            "{}: no task '{task}' in the bundle; it holds: {}",
            bundle.source().display(),
            tasks.join(", ")
        )));
    }
    let coding = match bundle.metadata().get("tall.mask_coding") {
        None => MaskCoding::Packed,
        Some(c) => {
            MaskCoding::parse(c).map_err(|e| Error::format(bundle.source(), e.to_string()))?
        }
    };
    let dir = bundle.source().parent().unwrap_or(Path::new("."));
    let masks_file = match coding {
        MaskCoding::Arith => {
            let f = dir.join(MASKS_FILE);
            model::inside(&model::confinement_root(dir)?, &f, MASKS_FILE)?;
            let m = Model::open(&f)?;
            verify_bundle_file(&m)?;
            if m.metadata().get(OUTPUT_KEY) != bundle.metadata().get(MASKS_OUTPUT) {
                return Err(Error::format(
                    &f,
                    format!(
                        "is not the masks file written with {}",
                        bundle.source().display()
                    ),
                ));
            }
            Some(m)
        }
        MaskCoding::Packed => None,
    };
    let bases: Vec<_> = bundle
        .tensors()
        .filter_map(|v| v.name().strip_prefix("base.").map(|n| (n.to_string(), v)))
        .collect();
    let specs = bases
        .iter()
        .map(|(n, v)| TensorSpec::new(n.clone(), v.dtype(), v.shape()))
        .collect();
    let w = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: metadata.clone(),
        },
    )?;
    for (name, b) in &bases {
        let tau = bundle.get(&format!("tau.{name}"));
        let (Some(tau), true) = (tau, b.dtype().is_float()) else {
            w.write_bytes(name, b.bytes)?;
            progress(b.numel() as u64);
            continue;
        };
        if tau.shape() != b.shape() {
            return Err(Error::tensor(
                bundle.source(),
                name,
                "tau shape does not match the base",
            ));
        }
        let tv = [*b, tau];
        if let Some(mf) = &masks_file {
            extract_coded(mf, task, name, &tv, out, &w, progress)?;
            continue;
        }
        let mask = bundle.require(&mask_name(task, name))?;
        if mask.numel() != b.numel().div_ceil(8) {
            return Err(Error::tensor(
                bundle.source(),
                name,
                "mask size does not match the base",
            ));
        }
        TensorChunks::new(Some(*b), &[tau]).for_each(&|c| {
            let (base, tau) = (c.base, &c.models[0]);
            let bits = &mask.bytes[c.start / 8..(c.start + base.len()).div_ceil(8)];
            let out: Vec<f32> = (0..base.len())
                .map(|k| {
                    if bit(bits, k) {
                        base[k] + tau[k]
                    } else {
                        base[k]
                    }
                })
                .collect();
            check_rebuilt(out_dir, &w, name, c.start, &out, base, tau)?;
            progress(out.len() as u64);
            w.write_f32_at(name, c.start, &out)
        })?;
    }
    let side = engram_ckpt::model::side_files_in(dir)?;
    w.finish(&side)
}

/// The rebuilt values θ₀ + m ⊙ τ must fit the output dtype wherever base and τ are finite
/// (the one output check, `output::check_values`).
fn check_rebuilt(
    dest: &Path,
    w: &ModelWriter,
    name: &str,
    start: usize,
    out: &[f32],
    base: &[f32],
    tau: &[f32],
) -> Result<()> {
    let dt = w.spec(name).map_or(DType::F32, |s| s.dtype);
    crate::output::check_values(dest, name, dt, start, out, false, &|k| {
        base[k].is_finite() && tau[k].is_finite()
    })
}

/// Rebuilds tensor `name` of `task` from entropy-coded masks, chunk by chunk in parallel.
fn extract_coded(
    masks: &Model,
    task: &str,
    name: &str,
    tv: &[engram_ckpt::TensorView; 2],
    out_dir: &Path,
    w: &ModelWriter,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let chunks = TensorChunks::new(Some(tv[0]), &tv[1..]);
    let row = maskcode::row_len(tv[0].shape());
    let src = masks.source();
    let own_t = masks.require(&coded_name(task, name))?;
    let own = maskcode::split_chunks(own_t.bytes, chunks.count())
        .map_err(|e| Error::tensor(src, own_t.name(), e))?;
    chunks.for_each(&|c| {
        let (base, tau) = (c.base, &c.models[0]);
        let n = base.len();
        let buckets = maskcode::magnitude_buckets(tau);
        let mut m = vec![false; n];
        maskcode::decode_bits(own[c.index], &buckets, maskcode::BUCKETS, row, &mut m)
            .map_err(|e| Error::tensor(src, own_t.name(), e))?;
        let out: Vec<f32> = (0..n)
            .map(|k| if m[k] { base[k] + tau[k] } else { base[k] })
            .collect();
        check_rebuilt(out_dir, w, name, c.start, &out, base, tau)?;
        progress(n as u64);
        w.write_f32_at(name, c.start, &out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tall::MtlRecipe;
    use crate::testutil::random_family;

    #[test]
    fn extract_equals_in_memory_reconstruction_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("layers.0.w", &[700, 600]), ("layers.0.b", &[13])];
        let (base, models) = random_family(dir.path(), shapes, 3, 11);
        let tasks: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            tasks.clone(),
            MtlRecipe::Sum,
            vec![0.4; 3],
        )
        .unwrap();
        for coding in [MaskCoding::Packed, MaskCoding::Arith] {
            let bdir = dir.path().join(format!("bundle-{}", coding.name()));
            let rep =
                write_bundle(&tall, &bdir, DType::BF16, coding, &BTreeMap::new(), &|_| {}).unwrap();
            assert_eq!(rep.packed_mask_bytes, 3 * (420_000 / 8 + 2));
            if coding == MaskCoding::Packed {
                assert_eq!(rep.mask_bytes, rep.packed_mask_bytes);
            } else {
                assert!(bdir.join(MASKS_FILE).is_file());
                assert!(rep.mask_bytes > 0);
                // No spool file is left behind.
                let stray = std::fs::read_dir(&bdir)
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with('.')
                    })
                    .count();
                assert_eq!(stray, 0);
            }
            for (i, t) in tasks.iter().enumerate() {
                let ex = dir.path().join(format!("ex-{t}-{}", coding.name()));
                extract_task(&bdir, t, &ex, &BTreeMap::new(), &|_| {}).unwrap();
                let mem = dir.path().join(format!("mem-{t}-{}", coding.name()));
                tall.write_model(
                    &mem,
                    None,
                    &BTreeMap::new(),
                    &|_| {},
                    &Tall::reconstruct_kernel(i, DType::BF16),
                )
                .unwrap();
                assert_eq!(
                    std::fs::read(ex.join("model.safetensors")).unwrap(),
                    std::fs::read(mem.join("model.safetensors")).unwrap(),
                    "task {t}, {coding:?}"
                );
            }
        }
        let bdir = dir.path().join("bundle-packed");
        let e = extract_task(
            &bdir,
            "zz",
            &dir.path().join("x"),
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("no task 'zz'"));
    }

    #[test]
    fn a_rebuilt_value_beyond_the_dtype_is_an_error() {
        // f16 base at 60000, two fine-tunes each +5000: the merged vector is +10000, and the
        // rebuilt task (its mask on) would be 70000, beyond f16's range.
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("w", &[16])];
        let f16 = |name: &str, v: f32| {
            crate::testutil::write_model(&dir.path().join(name), DType::F16, shapes, &|_, _| v)
        };
        let base = f16("base", 60000.0);
        let models = [f16("a", 65000.0), f16("b", 65000.0)];
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            vec!["a".into(), "b".into()],
            MtlRecipe::Sum,
            vec![0.4; 2],
        )
        .unwrap();
        for coding in [MaskCoding::Packed, MaskCoding::Arith] {
            let bdir = dir.path().join(format!("bundle-{}", coding.name()));
            write_bundle(&tall, &bdir, DType::F32, coding, &BTreeMap::new(), &|_| {}).unwrap();
            let x = dir.path().join(format!("x-{}", coding.name()));
            let e = extract_task(&bdir, "a", &x, &BTreeMap::new(), &|_| {})
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("beyond the range of F16") && e.contains("'w'"),
                "{e}"
            );
            assert!(!x.exists());
        }
    }

    #[test]
    fn corrupt_coded_masks_are_errors_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: &[(&str, &[usize])] = &[("layers.0.w", &[300, 200])];
        let (base, models) = random_family(dir.path(), shapes, 2, 5);
        let tasks: Vec<String> = vec!["a".into(), "b".into()];
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            tasks,
            MtlRecipe::Sum,
            vec![0.4; 2],
        )
        .unwrap();
        let bdir = dir.path().join("b");
        write_bundle(
            &tall,
            &bdir,
            DType::F32,
            MaskCoding::Arith,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        // Rewrite the masks file with the task stream cut short.
        let mf = bdir.join(MASKS_FILE);
        let m = Model::open(&mf).unwrap();
        let names: Vec<String> = m.tensors().map(|t| t.name().to_string()).collect();
        let specs = m
            .tensors()
            .map(|t| {
                let n = if t.name().starts_with("tall.maskac.a.") {
                    t.numel() - 3
                } else {
                    t.numel()
                };
                TensorSpec::new(t.name(), DType::U8, &[n])
            })
            .collect();
        let data: Vec<Vec<u8>> = m.tensors().map(|t| t.bytes.to_vec()).collect();
        drop(m);
        let w = ModelWriter::create(
            &mf,
            specs,
            &WriteOptions {
                max_shard_bytes: None,
                metadata: BTreeMap::new(),
            },
        )
        .unwrap();
        for (n, d) in names.iter().zip(&data) {
            let len = if n.starts_with("tall.maskac.a.") {
                d.len() - 3
            } else {
                d.len()
            };
            w.write_bytes(n, &d[..len]).unwrap();
        }
        w.finish(&[]).unwrap();
        // As written, the bundle refuses masks that are not its own.
        let x = dir.path().join("x");
        let e = extract_task(&bdir, "a", &x, &BTreeMap::new(), &|_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the masks file written with"), "{e}");
        // Past that check (the bundle made to name the new masks), the decoder itself refuses
        // the short stream, naming the tensor.
        let id = |p: &Path| Model::open(p).unwrap().metadata()[OUTPUT_KEY].clone();
        let bf = bdir.join(BUNDLE_FILE);
        let old_id = Model::open(&bf).unwrap().metadata()[MASKS_OUTPUT].clone();
        let new_id = id(&mf);
        let mut bytes = std::fs::read(&bf).unwrap();
        let at = bytes
            .windows(old_id.len())
            .position(|w| w == old_id.as_bytes())
            .unwrap();
        bytes[at..at + new_id.len()].copy_from_slice(new_id.as_bytes());
        std::fs::write(&bf, bytes).unwrap();
        let e = extract_task(&bdir, "a", &x, &BTreeMap::new(), &|_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("tall.maskac.a.layers.0.w"), "{e}");
        // The other task is intact.
        extract_task(&bdir, "b", &dir.path().join("y"), &BTreeMap::new(), &|_| {}).unwrap();
    }
}
