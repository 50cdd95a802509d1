//! Task-vector compression: one bundle holding θ₀, τ_MTL and one packed bit mask per task;
//! any task's model is rebuilt as θ₀ + m_t ⊙ τ_MTL, bit for bit.
//! Paper: Localizing Task Information for Improved Model Merging and Compression (arXiv 2405.07813); card: methods/merging.md ("TALL compression storage").
//!
//! Layout (engram choice, from the card): a safetensors file `bundle.safetensors` with the
//! base under `base.<name>` (its own dtype), τ_MTL under `tau.<name>` (`tau_dtype`), and U8
//! tensors `tall.mask.<task>.<name>` packed MSB first per tensor; `__metadata__` records the
//! tasks, λ's, recipe and bit order. The base's side files sit beside it in the bundle folder.

use crate::stream::{bit, pack_bits};
use crate::tall::Tall;
use engram_ckpt::dtype::encode_f32;
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, WriteOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const BUNDLE_FILE: &str = "bundle.safetensors";

#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleReport {
    pub bundle_bytes: u64,
    /// Base plus every fine-tuned checkpoint the bundle replaces.
    pub replaced_bytes: u64,
    pub ratio: f64,
    pub mask_bytes: u64,
    pub tasks: Vec<String>,
}

fn mask_name(task: &str, tensor: &str) -> String {
    format!("tall.mask.{task}.{tensor}")
}

/// Writes the bundle folder `out` (the bundle file plus the base's side files).
pub fn write_bundle(
    tall: &Tall,
    out: &Path,
    tau_dtype: DType,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BundleReport> {
    for t in &tall.tasks {
        if t.is_empty() || t.contains('.') {
            return Err(Error::Invalid(format!(
                "task name '{t}' must be non-empty and contain no '.'"
            )));
        }
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
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let file = out.join(BUNDLE_FILE);
    let w = ModelWriter::create(
        &file,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: md,
        },
    )?;
    for v in tall.base.tensors() {
        w.write_bytes(&format!("base.{}", v.name()), v.bytes)?;
    }
    for name in &tall.tensors {
        tall.visit(name, &|c| {
            let mut bytes = vec![0u8; c.tau.len() * tau_dtype.size()];
            encode_f32(tau_dtype, &c.tau, &mut bytes);
            w.write_bytes_at(&format!("tau.{name}"), c.start, &bytes)?;
            for (t, m) in tall.tasks.iter().zip(&c.masks) {
                // Chunks start at multiples of 8 elements, so packed chunks tile the tensor.
                w.write_bytes_at(&mask_name(t, name), c.start / 8, &pack_bits(m))?;
            }
            progress(c.tau.len() as u64);
            Ok(())
        })?;
    }
    w.finish(&[])?;
    for f in tall.base.side_files() {
        if let Some(n) = f.file_name() {
            let data = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            engram_ckpt::write_atomic(&out.join(n), &data)?;
        }
    }
    let bundle_bytes = std::fs::metadata(&file)
        .map_err(|e| Error::io(&file, e))?
        .len();
    let replaced_bytes =
        tall.base.file_bytes() + tall.models.iter().map(|m| m.file_bytes()).sum::<u64>();
    let mask_bytes = tall
        .tensors
        .iter()
        .map(|n| tall.base.require(n).map(|v| v.numel().div_ceil(8) as u64))
        .sum::<Result<u64>>()?
        * tall.tasks.len() as u64;
    Ok(BundleReport {
        bundle_bytes,
        replaced_bytes,
        ratio: replaced_bytes as f64 / bundle_bytes.max(1) as f64,
        mask_bytes,
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
        path.join(BUNDLE_FILE)
    } else {
        path.to_path_buf()
    };
    let m = Model::open(&file)?;
    bundle_tasks(&m)?;
    Ok(m)
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
    let tasks = bundle_tasks(&bundle)?;
    if !tasks.iter().any(|t| t == task) {
        return Err(Error::Invalid(format!(
            "{}: no task '{task}' in the bundle; it holds: {}",
            bundle.source().display(),
            tasks.join(", ")
        )));
    }
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
        let mask = bundle.require(&mask_name(task, name))?;
        if tau.shape() != b.shape() || mask.numel() != b.numel().div_ceil(8) {
            return Err(Error::tensor(
                bundle.source(),
                name,
                "tau or mask shape does not match the base",
            ));
        }
        let tv = [*b, tau];
        crate::stream::visit_chunks(&tv, &|c| {
            let (base, tau) = (&c.values[0], &c.values[1]);
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
            progress(out.len() as u64);
            w.write_f32_at(name, c.start, &out)
        })?;
    }
    let dir = bundle.source().parent().unwrap_or(Path::new("."));
    let side: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().is_none_or(|e| e != "safetensors")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(".")
                    .starts_with('.')
        })
        .collect();
    w.finish(&side)
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
        let bdir = dir.path().join("bundle");
        let rep = write_bundle(&tall, &bdir, DType::BF16, &BTreeMap::new(), &|_| {}).unwrap();
        assert_eq!(rep.mask_bytes, 3 * (420_000 / 8 + 2));
        for (i, t) in tasks.iter().enumerate() {
            let ex = dir.path().join(format!("ex-{t}"));
            extract_task(&bdir, t, &ex, &BTreeMap::new(), &|_| {}).unwrap();
            let mem = dir.path().join(format!("mem-{t}"));
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
                "task {t}"
            );
        }
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
}
