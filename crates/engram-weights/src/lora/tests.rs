//! Tests of LoRA extraction, merge-and-unload, expansion and recombination on small models
//! whose task vectors have known ranks and spectra.

use super::*;
use crate::rng::Rng;
use crate::testutil::{values, write_model};
use engram_ckpt::peft::Adapter;

const NOOP: &(dyn Fn(u64) + Sync) = &|_| ();

fn normal(seed: u64, what: &str, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| Rng::keyed(seed, what, i as u64).normal())
        .collect()
}

/// A row-major m × n matrix Σ_k σ_k·u_k·v_kᵀ with random (not orthogonal) u, v.
fn low_rank(seed: u64, m: usize, n: usize, sv: &[f32]) -> Vec<f32> {
    let mut w = vec![0f32; m * n];
    for (k, s) in sv.iter().enumerate() {
        let u = normal(seed, &format!("u{k}"), m);
        let v = normal(seed, &format!("v{k}"), n);
        for i in 0..m {
            for j in 0..n {
                w[i * n + j] += s * u[i] * v[j] / (m as f32 * n as f32).sqrt();
            }
        }
    }
    w
}

const SHAPES: &[(&str, &[usize])] = &[
    ("model.embed_tokens.weight", &[12, 8]),
    ("model.layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.layers.0.mlp.up_proj.weight", &[16, 8]),
    ("model.layers.0.input_layernorm.weight", &[8]),
    ("model.layers.0.self_attn.k_proj.weight", &[4, 8]),
    ("lm_head.weight", &[12, 8]),
];

/// Base and a fine-tune: rank-3 deltas on q_proj and up_proj, a changed norm and embedding,
/// an unchanged k_proj and lm_head.
fn family(dir: &Path, dtype: DType) -> (Model, Model) {
    let base = write_model(&dir.join("base"), dtype, SHAPES, &|n, i| {
        Rng::keyed(1, n, i as u64).normal() * 0.1
    });
    let q = low_rank(2, 8, 8, &[3.0, 2.0, 1.0]);
    let up = low_rank(3, 16, 8, &[4.0, 1.0, 0.5]);
    let ft = write_model(&dir.join("ft"), dtype, SHAPES, &|n, i| {
        let b = Rng::keyed(1, n, i as u64).normal() * 0.1;
        b + match n {
            "model.layers.0.self_attn.q_proj.weight" => q[i],
            "model.layers.0.mlp.up_proj.weight" => up[i],
            "model.layers.0.input_layernorm.weight" => 0.01,
            "model.embed_tokens.weight" => 0.02,
            _ => 0.0,
        }
    });
    (base, ft)
}

fn md() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn extraction_at_the_true_rank_rebuilds_the_fine_tune() {
    let d = tempfile::tempdir().unwrap();
    let (base, ft) = family(d.path(), DType::F32);
    let ad = d.path().join("adapter");
    let mut o = ExtractOptions::new(3);
    o.dtype = Some(DType::F32);
    let rep = extract(&base, &ft, &ad, &o, &md(), NOOP).unwrap();
    let mods: Vec<&str> = rep.modules.iter().map(|m| m.module.as_str()).collect();
    assert_eq!(
        mods,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj"
        ]
    );
    for m in &rep.modules {
        assert!(m.energy > 1.0 - 1e-9 && m.rel_error < 1e-4, "{m:?}");
        assert!(m.exact);
    }
    assert_eq!(
        rep.unchanged,
        ["model.layers.0.self_attn.k_proj", "lm_head"]
    );
    let reason = |t: &str| {
        rep.left_out
            .iter()
            .find(|l| l.tensor == t)
            .unwrap_or_else(|| panic!("{t} not listed"))
    };
    let norm = reason("model.layers.0.input_layernorm.weight");
    assert!(norm.reason.contains("not a matrix"));
    assert!(norm.rel_change.unwrap() > 0.0);
    assert!(
        reason("model.embed_tokens.weight")
            .reason
            .contains("embedding")
    );
    assert_eq!(rep.adapter_params, (3 * 8 + 8 * 3 + 3 * 8 + 16 * 3) as u64);

    // Merge-and-unload gives the fine-tune's matrices back.
    let a = Adapter::open(&ad).unwrap();
    assert_eq!(a.config.r, 3);
    let out = d.path().join("merged");
    let o = ApplyOptions {
        dtype: None,
        multiplier: 1.0,
    };
    let rep = apply(&base, &a, &out, &o, &md(), NOOP).unwrap();
    assert_eq!(rep.applied.len(), 2);
    assert!(rep.applied.iter().all(|x| x.rel_rounding_error == 0.0));
    assert_eq!(rep.kept, SHAPES.len() - 2);
    let merged = Model::open(&out).unwrap();
    for (name, _) in SHAPES {
        let (got, ft_v, b) = (
            values(&merged, name),
            values(&ft, name),
            values(&base, name),
        );
        if name.ends_with("q_proj.weight") || name.ends_with("up_proj.weight") {
            for (x, y) in got.iter().zip(&ft_v) {
                assert!((x - y).abs() < 1e-5, "{name}: {x} vs {y}");
            }
        } else {
            assert_eq!(got, b, "{name} must be the base's");
        }
    }
}

#[test]
fn truncated_extraction_captures_the_top_singular_values_on_both_svd_paths() {
    let d = tempfile::tempdir().unwrap();
    let (base, ft) = family(d.path(), DType::F32);
    let mut o = ExtractOptions::new(1);
    o.targets = vec!["*q_proj".into()];
    let rep = extract(&base, &ft, &d.path().join("a1"), &o, &md(), NOOP).unwrap();
    let q = &rep.modules[0];
    assert_eq!(rep.modules.len(), 1);
    // The reference: the exact spectrum of ΔW.
    let dq: Vec<f32> = values(&ft, "model.layers.0.self_attn.q_proj.weight")
        .iter()
        .zip(values(&base, "model.layers.0.self_attn.q_proj.weight"))
        .map(|(a, b)| a - b)
        .collect();
    let sp = crate::spectral::spectrum(&dq, 8, 8, &Default::default()).unwrap();
    let tot: f64 = sp.singular_values.iter().map(|s| s * s).sum();
    let want = sp.singular_values[0].powi(2) / tot;
    assert!((q.energy - want).abs() < 1e-9, "{} vs {want}", q.energy);
    assert!(q.energy < 0.99);
    assert!(
        rep.left_out
            .iter()
            .any(|l| l.reason.contains("not matched"))
    );
    // Randomized path (forced): the same top value on a decaying spectrum.
    o.svd.max_dim = 2;
    let rep2 = extract(&base, &ft, &d.path().join("a2"), &o, &md(), NOOP).unwrap();
    assert!(!rep2.modules[0].exact);
    assert!((rep2.modules[0].energy - want).abs() < 1e-6);
}

#[test]
fn a_rank_above_a_matrix_side_is_recorded_per_module_and_reads_back() {
    let d = tempfile::tempdir().unwrap();
    let (base, ft) = family(d.path(), DType::F32);
    let ad = d.path().join("a");
    let mut o = ExtractOptions::new(12);
    o.dtype = Some(DType::F32);
    let rep = extract(&base, &ft, &ad, &o, &md(), NOOP).unwrap();
    assert!(rep.modules.iter().all(|m| m.rank == 8));
    let a = Adapter::open(&ad).unwrap();
    assert_eq!(a.config.rank_pattern["model.layers.0.self_attn.q_proj"], 8);
    for m in &a.modules {
        assert!((m.scaling - 1.0).abs() < 1e-12, "{m:?}");
    }
}

#[test]
fn apply_records_rounding_and_refuses_adapters_that_do_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let (base, ft) = family(d.path(), DType::BF16);
    let ad = d.path().join("a");
    let rep = extract(&base, &ft, &ad, &ExtractOptions::new(3), &md(), NOOP).unwrap();
    assert_eq!(rep.dtype, "BF16");
    let a = Adapter::open(&ad).unwrap();
    let o = ApplyOptions {
        dtype: Some(DType::BF16),
        multiplier: 1.0,
    };
    let r = apply(&base, &a, &d.path().join("m"), &o, &md(), NOOP).unwrap();
    assert!(r.applied.iter().all(|x| x.rel_rounding_error > 0.0
        && x.rel_rounding_error < 1e-2
        && x.max_rounding_error > 0.0));
    let o = ApplyOptions {
        dtype: Some(DType::F32),
        multiplier: 0.0,
    };
    apply(&base, &a, &d.path().join("m0"), &o, &md(), NOOP).unwrap();
    let m0 = Model::open(&d.path().join("m0")).unwrap();
    for (n, _) in SHAPES {
        assert_eq!(values(&m0, n), values(&base, n), "{n}");
    }
    // A base without the module, and one with another shape.
    let other = write_model(
        &d.path().join("other"),
        DType::F32,
        &[("model.layers.0.self_attn.q_proj.weight", &[8, 4])],
        &|_, _| 0.0,
    );
    let e = apply(&other, &a, &d.path().join("x"), &o, &md(), NOOP)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("q_proj") && e.contains("does not fit"), "{e}");
    let none = write_model(
        &d.path().join("none"),
        DType::F32,
        &[("x.weight", &[2, 2])],
        &|_, _| 0.0,
    );
    let e = apply(&none, &a, &d.path().join("y"), &o, &md(), NOOP)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has no tensor"), "{e}");
    assert!(!d.path().join("y").exists());
}

#[test]
fn extraction_refuses_what_it_cannot_do() {
    let d = tempfile::tempdir().unwrap();
    let (base, ft) = family(d.path(), DType::F32);
    let e = |o: ExtractOptions, ft: &Model| {
        extract(&base, ft, &d.path().join("e"), &o, &md(), NOOP)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(e(ExtractOptions::new(0), &ft).contains("rank"));
    let mut o = ExtractOptions::new(2);
    o.targets = vec!["*nothing*".into()];
    assert!(e(o, &ft).contains("matches no linear weight"));
    assert!(e(ExtractOptions::new(2), &base).contains("nothing to extract"));
    let bad = write_model(
        &d.path().join("bad"),
        DType::F32,
        &[("lm_head.weight", &[8, 12])],
        &|_, _| 0.0,
    );
    assert!(e(ExtractOptions::new(2), &bad).contains("differs from the base"));
    assert!(!d.path().join("e").exists());
}

/// Two adapters on overlapping modules.
fn two_adapters(d: &Path) -> (Model, Adapter, Adapter) {
    let (base, ft) = family(d, DType::F32);
    let ft2 = write_model(&d.join("ft2"), DType::F32, SHAPES, &|n, i| {
        let b = Rng::keyed(1, n, i as u64).normal() * 0.1;
        let k = low_rank(9, 4, 8, &[2.0, 1.0]);
        let q = low_rank(8, 8, 8, &[1.5, 0.5]);
        b + match n {
            "model.layers.0.self_attn.k_proj.weight" => k[i],
            "model.layers.0.self_attn.q_proj.weight" => q[i],
            _ => 0.0,
        }
    });
    let mut o = ExtractOptions::new(2);
    o.dtype = Some(DType::F32);
    o.targets = vec!["*proj".into()];
    extract(&base, &ft, &d.join("a1"), &o, &md(), NOOP).unwrap();
    o.alpha = Some(4.0); // scale 2: recombination must honour each adapter's scale
    extract(&base, &ft2, &d.join("a2"), &o, &md(), NOOP).unwrap();
    let a1 = Adapter::open(&d.join("a1")).unwrap();
    let a2 = Adapter::open(&d.join("a2")).unwrap();
    (base, a1, a2)
}

#[test]
fn recombination_at_full_stacked_rank_is_exact_and_below_it_is_the_best_approximation() {
    let d = tempfile::tempdir().unwrap();
    let (_base, a1, a2) = two_adapters(d.path());
    let (w1, w2) = (0.7, -0.4);
    let dense = |name: &str| -> Vec<f32> {
        let mut sum = vec![0f32; 0];
        for (a, w) in [(&a1, w1), (&a2, w2)] {
            if let Some(m) = a.module(name) {
                let dm = module_delta(a, m).unwrap();
                if sum.is_empty() {
                    sum = vec![0.0; dm.len()];
                }
                for (s, x) in sum.iter_mut().zip(dm) {
                    *s += w as f32 * x;
                }
            }
        }
        sum
    };
    let out = d.path().join("r4");
    let rep = recombine(&[(&a1, w1), (&a2, w2)], 4, DType::F32, &out, &md()).unwrap();
    let q = "model.layers.0.self_attn.q_proj";
    let rq = rep.modules.iter().find(|m| m.module == q).unwrap();
    assert_eq!((rq.stacked_rank, rq.rank), (4, 4));
    assert!(rq.energy > 1.0 - 1e-12);
    let r = Adapter::open(&out).unwrap();
    assert_eq!(r.modules.len(), 3);
    for m in &r.modules {
        let got = module_delta(&r, m).unwrap();
        for (x, y) in got.iter().zip(dense(&m.name)) {
            assert!((x - y).abs() < 1e-5, "{}: {x} vs {y}", m.name);
        }
    }
    // Rank 1: the energy of the best rank-1 approximation of the dense sum.
    let rep = recombine(
        &[(&a1, w1), (&a2, w2)],
        1,
        DType::F32,
        &d.path().join("r1"),
        &md(),
    )
    .unwrap();
    let rq = rep.modules.iter().find(|m| m.module == q).unwrap();
    let sp = crate::spectral::spectrum(&dense(q), 8, 8, &Default::default()).unwrap();
    let tot: f64 = sp.singular_values.iter().map(|s| s * s).sum();
    assert!((rq.energy - sp.singular_values[0].powi(2) / tot).abs() < 1e-6);
}

#[test]
fn expansion_holds_the_union_of_touched_tensors_with_the_base_elsewhere() {
    let d = tempfile::tempdir().unwrap();
    let (base, a1, a2) = two_adapters(d.path());
    let t = touched(&base, &[&a1, &a2]).unwrap();
    assert_eq!(
        t,
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.self_attn.k_proj.weight"
        ]
    );
    let out = d.path().join("x1");
    expand(&base, &a1, &t, &out, &md()).unwrap();
    let x = Model::open(&out).unwrap();
    assert_eq!(x.len(), 3);
    // a1 does not touch k_proj: the base's values, so its task vector is zero.
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(values(&x, k), values(&base, k));
    let up = "model.layers.0.mlp.up_proj.weight";
    let m = a1.module("model.layers.0.mlp.up_proj").unwrap();
    let du = module_delta(&a1, m).unwrap();
    for ((x, b), dd) in values(&x, up).iter().zip(values(&base, up)).zip(du) {
        assert!((x - (b + dd)).abs() < 1e-6);
    }
}
