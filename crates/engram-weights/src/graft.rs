// Checkpoint surgery: Ker-VLJEPA's warm initialisation from an earlier run (arXiv 2603.23308).
// Card: shared/methods/robustness_safety.md, "Ker-VLJEPA parts" (step 4).

//! Grafting copies named tensors of checkpoint A into checkpoint B: the output is B with
//! those tensors' bytes replaced by A's, every other tensor B's bytes unchanged, B's metadata
//! kept (plus provenance) and B's side files carried along.
//!
//! Planning is separate from writing ([`plan`], then [`write`]), and refuses anything that
//! would not be a plain byte copy: each pattern must match a tensor of A, and each matched
//! tensor must exist in B with the same dtype and shape (no conversion: a graft that changed
//! a dtype or a shape would no longer be the earlier run's values, or no longer fit B's
//! model). Patterns are anchored globs: `*` matches any run of characters (dots included),
//! everything else matches itself, and the whole name must match (`encoder.*` is a prefix,
//! `*.lora_A.*` a part, a name without `*` exactly that tensor).

use crate::output::{copy_bytes_released, specs, writer};
use engram_ckpt::{Error, Model, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Metadata key of a grafted output: JSON with the source checkpoint and the tensors copied.
pub const GRAFT_KEY: &str = "engram.graft";

/// Splits a comma-separated pattern list; empty items are refused.
pub fn parse_patterns(list: &str) -> Result<Vec<String>> {
    let pats: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
    if pats.iter().any(String::is_empty) {
        return Err(Error::Invalid(format!(
            "tensor patterns '{list}': an empty pattern (give names or globs separated by commas)"
        )));
    }
    Ok(pats)
}

/// Whether `name` matches the graft pattern `pat`: the anchored glob
/// [`engram_ckpt::names::glob`] as it is, so a pattern without `*` is exactly that tensor. A
/// graft overwrites B's values, so a bare name must not reach further (as a prefix or a
/// substring would: `enc.w` would also take `enc.w2`).
pub fn glob(pat: &str, name: &str) -> bool {
    engram_ckpt::names::glob(pat, name)
}

/// One tensor to graft.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Grafted {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// What a graft copies: tensors of A in A's order, each matched by at least one pattern.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GraftPlan {
    pub patterns: Vec<String>,
    pub tensors: Vec<Grafted>,
}

/// Plans grafting the tensors of `from` that `patterns` match into `into`. Errors: a pattern
/// that matches no tensor of `from`; a matched tensor missing in `into`, or there with
/// another dtype or shape (the message names the tensor and both dtypes and shapes).
pub fn plan(from: &Model, into: &Model, patterns: &[String]) -> Result<GraftPlan> {
    if patterns.is_empty() {
        return Err(Error::Invalid("no tensor pattern to graft".into()));
    }
    let (a, b) = (from.source().display(), into.source().display());
    for p in patterns {
        if !from.names().any(|n| glob(p, n)) {
            return Err(Error::format(
                from.source(),
                format!(
                    "tensor pattern '{p}' matches none of its {} tensors (patterns match whole names; `*` matches any run of characters)",
                    from.len()
                ),
            ));
        }
    }
    let mut tensors = Vec::new();
    for v in from
        .tensors()
        .filter(|v| patterns.iter().any(|p| glob(p, v.name())))
    {
        let x = into.get(v.name()).ok_or_else(|| {
            Error::tensor(
                into.source(),
                v.name(),
                format!("not in this checkpoint (it is in {a}): a graft only replaces tensors"),
            )
        })?;
        if (x.dtype(), x.shape()) != (v.dtype(), v.shape()) {
            return Err(Error::tensor(
                into.source(),
                v.name(),
                format!(
                    "{} {:?} in {b} but {} {:?} in {a}: a graft copies bytes and needs the same dtype and shape",
                    x.dtype(),
                    x.shape(),
                    v.dtype(),
                    v.shape()
                ),
            ));
        }
        tensors.push(Grafted {
            name: v.name().to_string(),
            dtype: v.dtype().name().to_string(),
            shape: v.shape().to_vec(),
        });
    }
    Ok(GraftPlan {
        patterns: patterns.to_vec(),
        tensors,
    })
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GraftReport {
    /// Tensors copied from A.
    pub grafted: Vec<String>,
    pub grafted_params: u64,
    /// Tensors kept from B.
    pub kept: usize,
    pub params: u64,
    pub files: Vec<String>,
}

/// Writes `into` with the planned tensors of `from` to `out` (one file, or a folder holding
/// `model.safetensors`), atomically, tensors in parallel, each copied byte for byte.
/// `metadata` (provenance) is added to `into`'s own, and [`GRAFT_KEY`] records the graft.
pub fn write(
    plan: &GraftPlan,
    from: &Model,
    into: &Model,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<GraftReport> {
    let grafted: BTreeSet<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut md = into.metadata();
    md.extend(metadata.clone());
    let record = serde_json::json!({
        "from": from.source().display().to_string(),
        "patterns": plan.patterns,
        "tensors": plan.tensors.iter().map(|t| &t.name).collect::<Vec<_>>(),
    });
    md.insert(GRAFT_KEY.into(), record.to_string());
    let w = writer(out, specs(into.tensors(), None), &md)?;
    (0..into.len()).into_par_iter().try_for_each(|i| {
        let v = into.tensor_at(i);
        let src = match grafted.contains(v.name()) {
            true => from.require(v.name())?,
            false => v,
        };
        // The plan checked this; checked again for a plan made against other models.
        if (src.dtype(), src.shape()) != (v.dtype(), v.shape()) {
            return Err(Error::tensor(
                src.path,
                v.name(),
                "differs in dtype or shape from the checkpoint the graft was planned for",
            ));
        }
        copy_bytes_released(&w, v.name(), &src)?;
        progress(v.numel() as u64);
        Ok(())
    })?;
    let files = w.finish(into.side_files())?;
    let size = |n: &str| into.get(n).map_or(0, |v| v.numel() as u64);
    Ok(GraftReport {
        grafted: plan.tensors.iter().map(|t| t.name.clone()).collect(),
        grafted_params: plan.tensors.iter().map(|t| size(&t.name)).sum(),
        kept: into.len() - plan.tensors.len(),
        params: into.param_count(),
        files: files.iter().map(|p| p.display().to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::write_model;
    use engram_ckpt::DType;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("a.b", "a.b") && !glob("a", "a.b"));
        assert!(glob("enc.*", "enc.0.w") && !glob("enc.*", "dec.enc.0.w"));
        assert!(glob("*.lora_A.*", "l.0.lora_A.weight") && !glob("*.lora_A.*", "lora_A.w"));
        assert!(glob("*", "") && glob("a*a", "aa") && !glob("a*a", "a"));
        assert!(glob("*x*y*", "axbxcy") && !glob("*x*y*", "ayx"));
        assert!(glob("l.*.w", "l.1.2.w") && !glob("l.*.w", "l.1.b"));
        assert_eq!(parse_patterns("a.*, b").unwrap(), ["a.*", "b"]);
        assert!(parse_patterns("a,,b").is_err());
    }

    #[test]
    fn grafts_bytes_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let t: &[(&str, &[usize])] = &[("enc.w", &[2, 3]), ("enc.b", &[3]), ("head.w", &[4])];
        let a = write_model(&d.path().join("a"), DType::BF16, t, &|_, i| i as f32 + 0.5);
        let b = write_model(&d.path().join("b"), DType::BF16, t, &|_, i| -(i as f32));
        let p = plan(&a, &b, &["enc.*".into(), "enc.b".into()]).unwrap();
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["enc.w", "enc.b"]);
        assert_eq!(p.tensors[0].dtype, "BF16");
        let out = d.path().join("o.safetensors");
        let r = write(&p, &a, &b, &out, &BTreeMap::new(), &|_| {}).unwrap();
        assert_eq!((r.kept, r.grafted_params, r.params), (1, 9, 13));
        let o = Model::open(&out).unwrap();
        for v in o.tensors() {
            let src = if v.name().starts_with("enc.") { &a } else { &b };
            assert_eq!(
                v.bytes,
                src.require(v.name()).unwrap().bytes,
                "{}",
                v.name()
            );
        }
        assert!(o.metadata()[GRAFT_KEY].contains("enc.w"));
    }

    #[test]
    fn refusals_name_the_tensor() {
        let d = tempfile::tempdir().unwrap();
        let a = write_model(
            &d.path().join("a"),
            DType::F32,
            &[("w", &[2, 3]), ("x", &[2]), ("y", &[2])],
            &|_, _| 1.0,
        );
        let b = write_model(
            &d.path().join("b"),
            DType::F32,
            &[("w", &[3, 2]), ("y", &[2])],
            &|_, _| 1.0,
        );
        let c = write_model(&d.path().join("c"), DType::F16, &[("y", &[2])], &|_, _| 1.0);
        let e = plan(&a, &b, &["w".into()]).unwrap_err().to_string();
        assert!(
            e.contains("'w'") && e.contains("[3, 2]") && e.contains("[2, 3]"),
            "{e}"
        );
        let e = plan(&a, &b, &["x".into()]).unwrap_err().to_string();
        assert!(
            e.contains("'x'") && e.contains("not in this checkpoint"),
            "{e}"
        );
        let e = plan(&a, &b, &["z*".into()]).unwrap_err().to_string();
        assert!(e.contains("'z*' matches none"), "{e}");
        let e = plan(&a, &c, &["y".into()]).unwrap_err().to_string();
        assert!(e.contains("F16") && e.contains("F32"), "{e}");
        assert!(plan(&a, &b, &[]).is_err());
    }
}
