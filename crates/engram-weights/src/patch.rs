//! Weight patches: Robust Weight Signatures (extract, quantize, apply with a scale, remove).
//! Paper: Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights? (arXiv 2302.12480); card: methods/patching.md.
//!
//! A patch is δ = θ_c − θ_pre over selected tensors, optionally with the clean fine-tuning
//! direction a = θ_clean − θ_pre projected out (per tensor: δ − (⟨δ,a⟩/⟨a,a⟩)·a, skipped where
//! ⟨a,a⟩ is 0), optionally quantized per tensor to L uniform min–max levels (stored as U8 codes
//! plus a `NAME.__range` F32 [min, max]; max = min stores a constant). Applying adds
//! Σ α_c·δ_c to the clean model; removing subtracts it. Each patch is processed one tensor at
//! a time (a few tensors in memory).

use crate::merge::engine::layer_index;
use crate::tv::{CombineReport, FINGERPRINT_KEY, Term, combine, fingerprint};
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

pub const RANGE_SUFFIX: &str = ".__range";
/// Metadata key of the fingerprint of the clean model a patch was extracted with (`--clean`).
pub const CLEAN_FINGERPRINT_KEY: &str = "patch.clean_fingerprint";

/// Which tensors a patch covers.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Substring patterns (`*` matches anything); empty = all tensors.
    pub include: Vec<String>,
    /// Only the first k layers: by layer number where names carry one (`layers.N.`),
    /// otherwise the first k distinct modules (name without its last component) in model order.
    pub first_layers: Option<usize>,
}

fn glob_match(pat: &str, s: &str) -> bool {
    // '*' wildcards; a pattern without '*' matches as a substring.
    if !pat.contains('*') {
        return s.contains(pat);
    }
    let parts: Vec<&str> = pat.split('*').collect();
    let mut at = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        match s[at..].find(p) {
            Some(pos) if i > 0 || pos == 0 => at += pos + p.len(),
            _ => return false,
        }
    }
    parts.last().is_none_or(|l| l.is_empty() || s.ends_with(l))
}

impl Selection {
    /// Names of `m`'s float tensors that the selection covers, in model order.
    pub fn select(&self, m: &Model) -> Vec<String> {
        let names: Vec<&str> = m
            .tensors()
            .filter(|v| v.dtype().is_float())
            .map(|v| v.name())
            .collect();
        let by_index = names.iter().any(|n| layer_index(n).is_some());
        let mut modules: Vec<&str> = Vec::new();
        names
            .into_iter()
            .filter(|n| self.include.is_empty() || self.include.iter().any(|p| glob_match(p, n)))
            .filter(|n| match self.first_layers {
                None => true,
                Some(k) if by_index => layer_index(n).is_some_and(|i| i < k),
                Some(k) => {
                    let module = n.rsplit_once('.').map_or(*n, |(a, _)| a);
                    if !modules.contains(&module) {
                        modules.push(module);
                    }
                    modules
                        .iter()
                        .position(|x| *x == module)
                        .is_some_and(|i| i < k)
                }
            })
            .map(str::to_string)
            .collect()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchReport {
    pub tensors: Vec<String>,
    pub params: u64,
    /// Tensors where the projection was skipped because ⟨a,a⟩ = 0.
    pub projection_skipped: Vec<String>,
    pub bytes: u64,
    /// Bytes of the same tensors stored in full as the corrupted model's dtype.
    pub full_copy_bytes: u64,
}

/// Quantizes to `levels` uniform min–max levels; returns codes, min, max.
pub fn quantize(x: &[f32], levels: u32) -> (Vec<u8>, f32, f32) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if x.is_empty() || max <= min {
        let c = if x.is_empty() { 0.0 } else { min };
        return (vec![0; x.len()], c, c);
    }
    let steps = (levels - 1) as f32;
    let codes = x
        .iter()
        .map(|v| {
            (((v - min) / (max - min)) * steps)
                .round()
                .clamp(0.0, steps) as u8
        })
        .collect();
    (codes, min, max)
}

pub fn dequantize(codes: &[u8], min: f32, max: f32, levels: u32, out: &mut [f32]) {
    let step = if levels > 1 {
        (max - min) / (levels - 1) as f32
    } else {
        0.0
    };
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = min + c as f32 * step;
    }
}

/// Extracts the patch of `corrupt` relative to `pre`, writing a safetensors file `out`.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    pre: &Model,
    clean: Option<&Model>,
    corrupt: &Model,
    sel: &Selection,
    levels: Option<u32>,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PatchReport> {
    if let Some(l) = levels
        && !(2..=256).contains(&l)
    {
        return Err(Error::Invalid(format!("--levels {l}: use 2 to 256 levels")));
    }
    // A patch holds float tensors only: the non-float ones must be the same in every input.
    let others: Vec<&Model> = std::iter::once(pre).chain(clean).collect();
    crate::output::same_non_floats(corrupt, &others)?;
    let names = sel.select(corrupt);
    // The selection over every input covers the same tensors: one the model lacks is an
    // error, not a patch without it.
    for m in std::iter::once(pre).chain(clean) {
        if let Some(n) = sel.select(m).into_iter().find(|n| !names.contains(n)) {
            return Err(Error::tensor(
                corrupt.source(),
                &n,
                format!(
                    "missing, or not a float tensor (it is one in {}); no tensor is skipped",
                    m.source().display()
                ),
            ));
        }
    }
    if names.is_empty() {
        return Err(Error::Invalid(format!(
            "the selection covers no float tensor of {}",
            corrupt.source().display()
        )));
    }
    let mut specs = Vec::new();
    let mut full_copy_bytes = 0u64;
    for n in &names {
        let v = corrupt.require(n)?;
        for m in std::iter::once(pre).chain(clean) {
            let t = m.require(n)?;
            if t.shape() != v.shape() {
                return Err(Error::tensor(
                    m.source(),
                    n,
                    format!("shape {:?} differs from {:?}", t.shape(), v.shape()),
                ));
            }
        }
        full_copy_bytes += v.bytes.len() as u64;
        match levels {
            Some(_) => {
                specs.push(TensorSpec::new(n.clone(), DType::U8, v.shape()));
                specs.push(TensorSpec::new(
                    format!("{n}{RANGE_SUFFIX}"),
                    DType::F32,
                    &[2],
                ));
            }
            None => specs.push(TensorSpec::new(n.clone(), DType::F32, v.shape())),
        }
    }
    let mut md = metadata.clone();
    md.insert("engram.patch".into(), "rws".into());
    md.insert(
        "patch.levels".into(),
        levels.map_or("none".into(), |l| l.to_string()),
    );
    md.insert("patch.projected".into(), clean.is_some().to_string());
    md.insert(FINGERPRINT_KEY.into(), fingerprint(pre));
    if let Some(clean) = clean {
        md.insert(CLEAN_FINGERPRINT_KEY.into(), fingerprint(clean));
    }
    let w = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: None,
            metadata: md,
        },
    )?;
    let mut skipped = Vec::new();
    let mut params = 0u64;
    for n in &names {
        let p = pre.require(n)?.to_f32()?;
        let mut d = corrupt.require(n)?.to_f32()?;
        for (x, b) in d.iter_mut().zip(&p) {
            *x -= b;
        }
        if let Some(clean) = clean {
            let mut a = clean.require(n)?.to_f32()?;
            for (x, b) in a.iter_mut().zip(&p) {
                *x -= b;
            }
            let aa: f64 = a.iter().map(|x| (*x as f64) * (*x as f64)).sum();
            if aa > 0.0 {
                let da: f64 = d
                    .iter()
                    .zip(&a)
                    .map(|(x, y)| (*x as f64) * (*y as f64))
                    .sum();
                let c = (da / aa) as f32;
                for (x, y) in d.iter_mut().zip(&a) {
                    *x -= c * y;
                }
            } else {
                skipped.push(n.clone());
            }
        }
        match levels {
            Some(l) => {
                let (codes, min, max) = quantize(&d, l);
                w.write_bytes(n, &codes)?;
                w.write_f32(&format!("{n}{RANGE_SUFFIX}"), &[min, max])?;
            }
            None => w.write_f32(n, &d)?,
        }
        params += d.len() as u64;
        progress(d.len() as u64);
    }
    let files = w.finish(&[])?;
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(PatchReport {
        tensors: names,
        params,
        projection_skipped: skipped,
        bytes,
        full_copy_bytes,
    })
}

/// A patch opened for applying: decodes quantized tensors on the fly.
pub struct Patch {
    pub model: Model,
    pub levels: Option<u32>,
}

impl Patch {
    /// Opens a patch and verifies its checksums ([`Model::verify`]).
    pub fn open(path: &Path) -> Result<Patch> {
        let model = Model::open(path)?;
        model.verify()?;
        let md = model.metadata();
        if md.get("engram.patch").map(String::as_str) != Some("rws") {
            return Err(Error::format(
                path,
                "not an engram weight patch (no engram.patch=rws metadata)",
            ));
        }
        let levels = match md.get("patch.levels").map(String::as_str) {
            None | Some("none") => None,
            Some(s) => Some(
                s.parse::<u32>()
                    .ok()
                    .filter(|l| (2..=256).contains(l))
                    .ok_or_else(|| Error::format(path, format!("bad patch.levels '{s}'")))?,
            ),
        };
        Ok(Patch { model, levels })
    }

    /// Reads patch values of tensor `name` from element `start`; false if not covered.
    pub fn read(&self, name: &str, start: usize, out: &mut [f32]) -> Result<bool> {
        let Some(v) = self.model.get(name) else {
            return Ok(false);
        };
        match self.levels {
            None => v.read_f32_into(start, out)?,
            Some(l) => {
                let range = self
                    .model
                    .require(&format!("{name}{RANGE_SUFFIX}"))?
                    .to_f32()?;
                let (&[min, max], DType::U8) = (range.as_slice(), v.dtype()) else {
                    return Err(Error::tensor(
                        self.model.source(),
                        name,
                        "quantized patch needs U8 codes and a [min, max] range",
                    ));
                };
                let end = start + out.len();
                if end > v.numel() {
                    return Err(Error::tensor(
                        self.model.source(),
                        name,
                        "read beyond the tensor",
                    ));
                }
                dequantize(&v.bytes[start..end], min, max, l, out);
            }
        }
        Ok(true)
    }
}

impl Patch {
    /// Refuses a patch taken from another θ_pre than `model`'s (as `tv apply` refuses a task
    /// vector of another base). A patch records its θ_pre's fingerprint and, with `--clean`,
    /// the clean model's; `model` qualifies if it is either, or records the same θ_pre
    /// (every model `apply` writes does, so `remove` finds it). A patch that records no
    /// fingerprint is not checked.
    pub fn check_target(&self, model: &Model) -> Result<()> {
        let md = self.model.metadata();
        let Some(pre) = md.get(FINGERPRINT_KEY) else {
            return Ok(());
        };
        let fp = fingerprint(model);
        if *pre == fp
            || md.get(CLEAN_FINGERPRINT_KEY) == Some(&fp)
            || model.metadata().get(FINGERPRINT_KEY) == Some(pre)
        {
            return Ok(());
        }
        Err(Error::format(
            self.model.source(),
            format!(
                "was extracted against another base (fingerprint {pre}): {} is neither that base, \
                 nor the clean model of the patch, nor records it (fingerprint {fp}); use --force \
                 to apply anyway",
                model.source().display()
            ),
        ))
    }

    /// Checks every tensor of the patch against `model`: the model holds it, as a float
    /// tensor of the same shape; the patch stores it as float values, or as U8 codes with a
    /// `[min, max]` range; nothing in the patch is left unused.
    fn check_tensors(&self, model: &Model) -> Result<()> {
        let src = self.model.source();
        for v in self.model.tensors() {
            let (name, range) = match v.name().strip_suffix(RANGE_SUFFIX) {
                Some(n) => (n, true),
                None => (v.name(), false),
            };
            let bad = |msg: String| Err(Error::tensor(src, v.name(), msg));
            let Some(t) = model.get(name) else {
                return bad(format!("not in the model {}", model.source().display()));
            };
            if !t.dtype().is_float() {
                return bad(format!(
                    "the model's tensor is {}, not a float type",
                    t.dtype()
                ));
            }
            let want = match (range, self.levels) {
                (true, None) => return bad("a quantization range in an unquantized patch".into()),
                (true, Some(_)) => (vec![2], "F32", v.dtype() == DType::F32),
                (false, Some(_)) => (t.shape().to_vec(), "U8", v.dtype() == DType::U8),
                (false, None) => (t.shape().to_vec(), "a float type", v.dtype().is_float()),
            };
            if v.shape() != want.0.as_slice() {
                return bad(format!("shape {:?}, expected {:?}", v.shape(), want.0));
            }
            if !want.2 {
                return bad(format!("dtype {}, expected {}", v.dtype(), want.1));
            }
            if range && self.model.get(name).is_none() {
                return bad("a quantization range without its codes".into());
            }
            if self.levels.is_some() && !range {
                self.model.require(&format!("{name}{RANGE_SUFFIX}"))?;
            }
        }
        Ok(())
    }
}

/// Applies (sign +1) or removes (sign −1) patches, each with its scale, to `model`. Every
/// patch must fit `model` tensor by tensor, and come from its θ_pre unless `force`
/// ([`Patch::check_target`]).
pub fn apply(
    model: &Model,
    patches: &[(Patch, f32)],
    sign: f32,
    force: bool,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CombineReport> {
    for (p, _) in patches {
        if !force {
            p.check_target(model)?;
        }
        p.check_tensors(model)?;
    }
    let decoders: Vec<Box<crate::tv::Decode<'_>>> = patches
        .iter()
        .map(|(p, _)| Box::new(move |n: &str, s: usize, o: &mut [f32]| p.read(n, s, o)) as Box<_>)
        .collect();
    let mut terms = vec![Term::new(model, 1.0)];
    for ((p, alpha), d) in patches.iter().zip(&decoders) {
        terms.push(Term {
            model: &p.model,
            coef: sign * alpha,
            decode: Some(d.as_ref()),
        });
    }
    // Record what was applied, on top of what the input model already records.
    let mut applied: Vec<serde_json::Value> = model
        .metadata()
        .get("engram.patches")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    for (p, alpha) in patches {
        applied.push(serde_json::json!({"patch": p.model.source().display().to_string(), "alpha": sign * alpha}));
    }
    let mut md = metadata.clone();
    // The output descends from the same θ_pre: `remove` and further patches accept it.
    let pre = patches
        .iter()
        .find_map(|(p, _)| p.model.metadata().get(FINGERPRINT_KEY).cloned());
    if let Some(fp) = pre.or_else(|| model.metadata().get(FINGERPRINT_KEY).cloned()) {
        md.insert(FINGERPRINT_KEY.into(), fp);
    }
    md.insert(
        "engram.patches".into(),
        serde_json::Value::Array(applied).to_string(),
    );
    combine(
        &terms,
        out,
        None,
        false,
        &md,
        model.side_files(),
        true,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_family, values};

    const SHAPES: &[(&str, &[usize])] = &[
        ("layers.0.conv.weight", &[16, 3, 3, 3]),
        ("layers.0.conv.bias", &[16]),
        ("layers.1.conv.weight", &[16, 16, 3, 3]),
        ("layers.2.fc.weight", &[10, 64]),
    ];

    #[test]
    fn selection_by_layers_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _) = random_family(dir.path(), SHAPES, 0, 1);
        let s = Selection {
            include: vec![],
            first_layers: Some(1),
        };
        assert_eq!(
            s.select(&base),
            vec!["layers.0.conv.weight", "layers.0.conv.bias"]
        );
        let s = Selection {
            include: vec!["*.weight".into()],
            first_layers: Some(2),
        };
        assert_eq!(
            s.select(&base),
            vec!["layers.0.conv.weight", "layers.1.conv.weight"]
        );
        assert!(glob_match("layers.*.bias", "layers.0.conv.bias"));
        assert!(!glob_match("layers.*.bias", "layers.0.conv.weight"));
    }

    #[test]
    fn projection_removes_the_clean_direction_and_apply_remove_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(dir.path(), SHAPES, 2, 5);
        let (clean, corrupt) = (&ms[0], &ms[1]);
        let sel = Selection {
            include: vec![],
            first_layers: Some(2),
        };
        let p = dir.path().join("p.safetensors");
        let rep = extract(
            &pre,
            Some(clean),
            corrupt,
            &sel,
            None,
            &p,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(rep.tensors.len(), 3);
        let patch = Patch::open(&p).unwrap();
        for n in &rep.tensors {
            let d = values(&patch.model, n);
            let a: Vec<f32> = values(clean, n)
                .iter()
                .zip(values(&pre, n))
                .map(|(x, y)| x - y)
                .collect();
            let dot: f64 = d
                .iter()
                .zip(&a)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!(dot.abs() < 1e-4, "{n}: residual {dot}");
        }
        let patched = dir.path().join("patched");
        apply(
            clean,
            &[(patch, 0.7)],
            1.0,
            false,
            &patched,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        let patched_m = Model::open(&patched).unwrap();
        let rec: serde_json::Value =
            serde_json::from_str(&patched_m.metadata()["engram.patches"]).unwrap();
        assert!(
            (rec[0]["alpha"].as_f64().unwrap() - 0.7).abs() < 1e-6,
            "{rec}"
        );
        let back = dir.path().join("back");
        apply(
            &patched_m,
            &[(Patch::open(&p).unwrap(), 0.7)],
            -1.0,
            false,
            &back,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        let back = Model::open(&back).unwrap();
        for (n, _) in SHAPES {
            for (x, y) in values(&back, n).iter().zip(values(clean, n)) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}");
            }
        }
        // Untouched deep layer stays bit-identical.
        assert!(values(&back, "layers.2.fc.weight") == values(clean, "layers.2.fc.weight"));
    }

    /// A patch goes onto its θ_pre, its clean model, or a model that records its θ_pre;
    /// another model is refused (unless forced), and so is a patch that does not fit.
    #[test]
    fn patches_check_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(&dir.path().join("a"), SHAPES, 3, 7);
        let (other, _) = random_family(&dir.path().join("b"), SHAPES, 0, 8);
        let p = dir.path().join("p.safetensors");
        let sel = Selection::default();
        let md = BTreeMap::new();
        extract(&pre, Some(&ms[0]), &ms[1], &sel, None, &p, &md, &|_| {}).unwrap();
        let patch = Patch::open(&p).unwrap();
        for ok in [&pre, &ms[0]] {
            patch.check_target(ok).unwrap();
        }
        for bad in [&ms[2], &other] {
            let e = patch.check_target(bad).unwrap_err().to_string();
            assert!(e.contains("another base") && e.contains("--force"), "{e}");
        }
        let out = dir.path().join("forced");
        apply(&other, &[(patch, 1.0)], 1.0, true, &out, &md, &|_| {}).unwrap();
        // The output records θ_pre, so the patch can be removed from it.
        Patch::open(&p)
            .unwrap()
            .check_target(&Model::open(&out).unwrap())
            .unwrap();

        let (small, _) = random_family(&dir.path().join("c"), &SHAPES[..2], 0, 9);
        let e = apply(
            &small,
            &[(Patch::open(&p).unwrap(), 1.0)],
            1.0,
            true,
            &dir.path().join("x"),
            &md,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("layers.1.conv.weight") && e.contains("not in the model"),
            "{e}"
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn quantized_patches_stay_within_half_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let (pre, ms) = random_family(dir.path(), SHAPES, 1, 6);
        let sel = Selection::default();
        let p = dir.path().join("q.safetensors");
        let rep = extract(
            &pre,
            None,
            &ms[0],
            &sel,
            Some(16),
            &p,
            &BTreeMap::new(),
            &|_| {},
        )
        .unwrap();
        assert!(rep.bytes < rep.full_copy_bytes);
        let patch = Patch::open(&p).unwrap();
        for (n, shape) in SHAPES {
            let exact: Vec<f32> = values(&ms[0], n)
                .iter()
                .zip(values(&pre, n))
                .map(|(x, y)| x - y)
                .collect();
            let mut got = vec![0f32; shape.iter().product()];
            assert!(patch.read(n, 0, &mut got).unwrap());
            let (min, max) = exact
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let half_step = (max - min) / 15.0 / 2.0;
            for (g, e) in got.iter().zip(&exact) {
                assert!((g - e).abs() <= half_step * 1.0001, "{n}");
            }
        }
        // A constant tensor quantizes to that constant.
        let (codes, min, max) = quantize(&[0.5, 0.5], 4);
        let mut out = [0f32; 2];
        dequantize(&codes, min, max, 4, &mut out);
        assert_eq!(out, [0.5, 0.5]);
    }
}
