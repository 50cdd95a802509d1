//! Task vectors: extract (θ_ft − θ₀), apply (θ₀ + Σ λ_i·τ_i), negate, add, scale.
//! Paper: Editing Models with Task Arithmetic (arXiv 2212.04089); card: methods/merging.md.
//!
//! All of these are one operation, a linear combination `out = Σ_i c_i·x_i` over tensors,
//! streamed chunk by chunk. A term that lacks a tensor contributes zero to it (a task vector
//! or a weight patch may cover only some tensors); the first term (the template) fixes the
//! output's tensors, dtypes and side files. Task vectors record a fingerprint of the base they
//! were taken from, and applying one to another base is refused (card pitfall).

use crate::rng::hash_str;
use crate::stream::TensorChunks;
use engram_ckpt::{DType, Error, Model, Result, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FINGERPRINT_KEY: &str = "engram.base_fingerprint";

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
    /// Float tensors of the template that some term lacks (they got zero from that term).
    pub partial: Vec<String>,
    pub files: Vec<String>,
}

/// out = Σ_i c_i·x_i over the template's (first term's) tensors.
///
/// `only`: restrict the output to tensors for which it returns true (others are dropped).
#[allow(clippy::too_many_arguments)]
pub fn combine(
    terms: &[Term],
    out: &Path,
    out_dtype: Option<DType>,
    only: Option<&(dyn Fn(&str) -> bool + Sync)>,
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
        .filter(|v| only.is_none_or(|f| f(v.name())))
        .collect();
    let mut report = CombineReport::default();
    for v in &selected {
        if !v.dtype().is_float() {
            continue;
        }
        for t in &terms[1..] {
            if t.decode.is_some() {
                continue;
            }
            match t.model.get(v.name()) {
                Some(x) if x.shape() != v.shape() => {
                    return Err(Error::tensor(
                        t.model.source(),
                        v.name(),
                        format!(
                            "shape {:?} differs from {:?} in {}",
                            x.shape(),
                            v.shape(),
                            template.source().display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    if !report.partial.iter().any(|p| p == v.name()) {
                        report.partial.push(v.name().to_string());
                    }
                }
            }
        }
    }
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
            if check_finite && acc.iter().any(|x| !x.is_finite()) {
                return Err(Error::tensor(out, name, "result includes NaN or infinity"));
            }
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
            None,
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
            None,
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
            None,
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

    #[test]
    fn a_partial_term_contributes_zero_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 1, 4);
        let part = dir.path().join("part");
        let only = |n: &str| n == "b";
        combine(
            &[Term::new(&models[0], 1.0), Term::new(&base, -1.0)],
            &part,
            None,
            Some(&only),
            &BTreeMap::new(),
            &[],
            false,
            &|_| {},
        )
        .unwrap();
        let part = Model::open(&part).unwrap();
        assert_eq!(part.len(), 1);
        let out = dir.path().join("out");
        let rep = combine(
            &[Term::new(&base, 1.0), Term::new(&part, 2.0)],
            &out,
            None,
            None,
            &BTreeMap::new(),
            &[],
            false,
            &|_| {},
        )
        .unwrap();
        assert_eq!(rep.partial, vec!["a"]);
        let out = Model::open(&out).unwrap();
        assert_eq!(values(&out, "a"), values(&base, "a"));
        let (b, f) = (values(&base, "b"), values(&models[0], "b"));
        for (k, x) in values(&out, "b").iter().enumerate() {
            assert!((x - (b[k] + 2.0 * (f[k] - b[k]))).abs() < 1e-6);
        }
    }
}
