//! Task vectors: extract (θ_ft − θ₀), apply (θ₀ + Σ λ_i·τ_i), negate, add, scale.
//! Paper: Editing Models with Task Arithmetic (arXiv 2212.04089); card: methods/merging.md.
//!
//! All of these are one operation, a linear combination `out = Σ_i c_i·x_i` over tensors,
//! streamed chunk by chunk. The first term (the template) fixes the output's tensors, dtypes
//! and side files; every other term must hold the same float tensors (a weight patch, read
//! through its decoder, may cover only some). Task vectors record a fingerprint of the base they
//! were taken from, and applying one to another base is refused (card pitfall).

use crate::rng::hash_str;
use crate::stream::TensorChunks;
use engram_ckpt::{DType, Error, Model, Result, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FINGERPRINT_KEY: &str = "engram.base_fingerprint";
/// Marks a task vector (`tv extract`, `add`, `scale` write it); `apply`, `add` and `scale`
/// refuse a file without it (a model or a patch given by mistake).
pub const TASK_VECTOR_KEY: &str = "engram.task_vector";

/// Refuses a file that is not a task vector engram wrote.
pub fn check_task_vector(m: &Model) -> Result<()> {
    match m.metadata().get(TASK_VECTOR_KEY).map(String::as_str) {
        Some("1") => Ok(()),
        _ => Err(Error::format(
            m.source(),
            format!(
                "not a task vector (no {TASK_VECTOR_KEY}=1 metadata; write one with `engram tv extract`)"
            ),
        )),
    }
}

/// Reads elements of a tensor (by name, from an element offset) into a buffer as f32;
/// returns false if the source has no such tensor.
pub type Decode<'a> = dyn Fn(&str, usize, &mut [f32]) -> Result<bool> + Sync + 'a;

/// A term of a linear combination: a model (or task vector) and its coefficient, with an
/// optional decoder for stored forms such as quantized patches.
pub struct Term<'a> {
    pub model: &'a Model,
    pub coef: f32,
    /// Reads elements of tensor `name` starting at `start` into `out` as f32; `None` uses
    /// the stored float values. Returns false if the term has no such tensor.
    pub decode: Option<&'a Decode<'a>>,
}

impl<'a> Term<'a> {
    pub fn new(model: &'a Model, coef: f32) -> Self {
        Term {
            model,
            coef,
            decode: None,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CombineReport {
    pub tensors: usize,
    pub params: u64,
    pub files: Vec<String>,
}

/// out = Σ_i c_i·x_i over the template's (first term's) tensors; with `floats_only` its
/// other tensors are left out (a task vector holds float tensors only), else copied.
///
/// No tensor is skipped: every term read as stored holds each float tensor of the template
/// (same shape, a float dtype) and no tensor the template lacks, or the call fails naming
/// the tensor and the file. Terms with a decoder (patches) cover a subset, checked by their
/// owner ([`crate::patch::Patch`]).
#[allow(clippy::too_many_arguments)]
pub fn combine(
    terms: &[Term],
    out: &Path,
    out_dtype: Option<DType>,
    floats_only: bool,
    metadata: &BTreeMap<String, String>,
    side_files: &[PathBuf],
    check_finite: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CombineReport> {
    let template = terms
        .first()
        .ok_or_else(|| Error::Invalid("nothing to combine".into()))?
        .model;
    if let Some(t) = terms.iter().find(|t| !t.coef.is_finite()) {
        return Err(Error::format(
            t.model.source(),
            format!("scale {} is not a finite number", t.coef),
        ));
    }
    let selected: Vec<TensorView> = template
        .tensors()
        .filter(|v| !floats_only || v.dtype().is_float())
        .collect();
    let tpath = template.source().display();
    // With `floats_only` (extract) the non-float tensors are left out: they must be the same
    // in every input, or the task vector would lose them.
    if floats_only {
        let others: Vec<&Model> = terms[1..].iter().map(|t| t.model).collect();
        crate::output::same_non_floats(template, &others)?;
    }
    for t in terms[1..].iter().filter(|t| t.decode.is_none()) {
        for v in selected.iter().filter(|v| v.dtype().is_float()) {
            let why = match t.model.get(v.name()) {
                None => format!("missing (it is in {tpath}); no tensor is skipped"),
                Some(x) if x.shape() != v.shape() => {
                    format!(
                        "shape {:?} differs from {:?} in {tpath}",
                        x.shape(),
                        v.shape()
                    )
                }
                Some(x) if !x.dtype().is_float() => format!("{} is not a float type", x.dtype()),
                Some(_) => continue,
            };
            return Err(Error::tensor(t.model.source(), v.name(), why));
        }
        for x in t.model.tensors() {
            let why = match template.get(x.name()) {
                None => format!("not in {tpath}; no tensor is skipped"),
                Some(v) if v.dtype().is_float() != x.dtype().is_float() => {
                    format!("{} here but {} in {tpath}", x.dtype(), v.dtype())
                }
                Some(_) => continue,
            };
            return Err(Error::tensor(t.model.source(), x.name(), why));
        }
    }
    let mut report = CombineReport::default();
    let w = crate::output::writer(
        out,
        crate::output::specs(selected.iter().copied(), out_dtype),
        metadata,
    )?;
    for v in &selected {
        let name = v.name();
        if !v.dtype().is_float() {
            w.write_bytes(name, v.bytes)?;
            continue;
        }
        TensorChunks::new(None, std::slice::from_ref(v)).for_each(&|c| {
            let n = c.len;
            let mut acc: Vec<f32> = c.models[0].iter().map(|x| terms[0].coef * x).collect();
            let mut buf = vec![0f32; n];
            for t in &terms[1..] {
                let present = match t.decode {
                    Some(d) => d(name, c.start, &mut buf)?,
                    None => match t.model.get(name) {
                        Some(x) => {
                            x.read_f32_into(c.start, &mut buf)?;
                            true
                        }
                        None => false,
                    },
                };
                if present {
                    for (a, b) in acc.iter_mut().zip(&buf) {
                        *a += t.coef * b;
                    }
                }
            }
            // Where a value fails, whether every term was finite there (read again: rare).
            let finite = |k: usize| {
                let mut one = [0f32];
                terms.iter().all(|t| {
                    match t.decode {
                        Some(d) => d(name, c.start + k, &mut one).map(|p| !p || one[0].is_finite()),
                        None => t
                            .model
                            .require(name)
                            .and_then(|x| x.read_f32_into(c.start + k, &mut one))
                            .map(|_| one[0].is_finite()),
                    }
                    .unwrap_or(false)
                })
            };
            let dt = out_dtype.unwrap_or(v.dtype());
            crate::output::check_values(out, name, dt, c.start, &acc, check_finite, &finite)?;
            progress(n as u64);
            w.write_f32_at(name, c.start, &acc)
        })?;
        report.tensors += 1;
        report.params += v.numel() as u64;
    }
    report.files = w
        .finish(side_files)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok(report)
}

/// A cheap, stable fingerprint of a model: tensor names, shapes and dtypes, and up to 4 KiB
/// from the start, middle and end of each tensor's bytes. It tells bases apart without
/// reading whole models.
pub fn fingerprint(m: &Model) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for v in m.tensors() {
        feed(v.name().as_bytes());
        feed(format!("{:?}{}", v.shape(), v.dtype()).as_bytes());
        let b = v.bytes;
        let k = b.len().min(4096);
        let mid = b.len() / 2 - (b.len() / 2).min(k / 2);
        feed(&b[..k]);
        feed(&b[mid..mid + k.min(b.len() - mid)]);
        feed(&b[b.len() - k..]);
    }
    format!("{h:016x}-{:016x}", hash_str(&m.param_count().to_string()))
}

/// Refuses a task vector whose recorded base differs from `base` (unless it records none).
pub fn check_base(tv: &Model, base: &Model) -> Result<()> {
    if let Some(fp) = tv.metadata().get(FINGERPRINT_KEY) {
        let want = fingerprint(base);
        if *fp != want {
            return Err(Error::format(
                tv.source(),
                format!(
                    "was extracted against another base (fingerprint {fp}, {} has {want}); use --force to apply anyway",
                    base.source().display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_family, values};

    const SHAPES: &[(&str, &[usize])] = &[("a", &[300, 1000]), ("b", &[7])];

    #[test]
    fn extract_apply_negate_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 2, 3);
        let tv_path = dir.path().join("tv");
        let mut md = BTreeMap::new();
        md.insert(FINGERPRINT_KEY.to_string(), fingerprint(&base));
        combine(
            &[Term::new(&models[0], 1.0), Term::new(&base, -1.0)],
            &tv_path,
            Some(DType::F32),
            false,
            &md,
            &[],
            true,
            &|_| {},
        )
        .unwrap();
        let tv = Model::open(&tv_path).unwrap();
        check_base(&tv, &base).unwrap();
        assert!(check_base(&tv, &models[1]).is_err());
        // base + 1.0·τ = the fine-tune; base + 0.5·τ − 0.5·τ = the base.
        let applied = dir.path().join("applied");
        combine(
            &[Term::new(&base, 1.0), Term::new(&tv, 1.0)],
            &applied,
            None,
            false,
            &BTreeMap::new(),
            &[],
            true,
            &|_| {},
        )
        .unwrap();
        let back = dir.path().join("back");
        combine(
            &[
                Term::new(&base, 1.0),
                Term::new(&tv, 0.5),
                Term::new(&tv, -0.5),
            ],
            &back,
            None,
            false,
            &BTreeMap::new(),
            &[],
            true,
            &|_| {},
        )
        .unwrap();
        let applied = Model::open(&applied).unwrap();
        let back = Model::open(&back).unwrap();
        for (n, _) in SHAPES {
            let ft = values(&models[0], n);
            for (x, y) in values(&applied, n).iter().zip(&ft) {
                assert!((x - y).abs() < 1e-6);
            }
            for (x, y) in values(&back, n).iter().zip(values(&base, n)) {
                assert!((x - y).abs() <= 1e-7, "{n}: {x} vs {y}");
            }
        }
    }

    /// A term lacking a tensor of the template, or holding one it lacks, is an error naming
    /// the tensor and the file: nothing is skipped.
    #[test]
    fn a_partial_or_extra_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 4);
        let (small, _) = random_family(&dir.path().join("s"), &SHAPES[1..], 0, 4);
        let run = |terms: &[Term], floats_only| {
            combine(
                terms,
                &dir.path().join("o"),
                None,
                floats_only,
                &BTreeMap::new(),
                &[],
                false,
                &|_| {},
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let e = run(&[Term::new(&base, 1.0), Term::new(&small, 2.0)], false);
        assert!(e.contains("'a'") && e.contains("missing"), "{e}");
        let e = run(&[Term::new(&small, 1.0), Term::new(&models[0], -1.0)], true);
        assert!(e.contains("'a'") && e.contains("not in"), "{e}");
        assert!(!dir.path().join("o").exists());
    }
}
