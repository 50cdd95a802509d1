// Ker-VLJEPA (arXiv 2603.23308): anisotropy and PCA whitening of embeddings.
// Card: shared/methods/robustness_safety.md, "Ker-VLJEPA parts".

//! `engram analyze --embeddings` and `engram whiten` end to end through the built binary on
//! small synthetic features: the numbers equal the library's, whitened fitting rows have
//! identity covariance, a stored transform whitens to the same bytes, and bad flags and
//! inputs are clear errors.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use engram_weights::embed::anisotropy;
use std::path::Path;

mod common;
use common::{engram, fails, ok, s};

/// Anisotropic two-class features: a large common offset, unequal variances, a small class
/// signal on the last dimension.
fn features(n: usize, d: usize) -> (Vec<f32>, Vec<u32>) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let mut v = Vec::with_capacity(n * d);
    for &l in &labels {
        for j in 0..d {
            let noise = if j < 3 { 6.0 } else { 0.6 };
            let class = if j == d - 1 { l as f32 - 0.5 } else { 0.0 };
            v.push(10.0 + noise * next() + class);
        }
    }
    (v, labels)
}

/// Writes tensors (name, dtype, shape, values as f32) to `path`.
fn write(path: &Path, tensors: &[(&str, DType, Vec<usize>, Vec<f32>)]) {
    let specs = tensors
        .iter()
        .map(|(n, dt, sh, _)| TensorSpec::new(*n, *dt, sh))
        .collect();
    let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
    for (n, dt, _, v) in tensors {
        if *dt == DType::I64 {
            let b: Vec<u8> = v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect();
            w.write_bytes(n, &b).unwrap();
        } else {
            w.write_f32(n, v).unwrap();
        }
    }
    w.finish(&[]).unwrap();
}

fn values(path: &Path, name: &str) -> Vec<f32> {
    Model::open(path)
        .unwrap()
        .require(name)
        .unwrap()
        .to_f32()
        .unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("JSON")
}

#[test]
fn analyze_embeddings_reports_the_library_numbers() {
    let d = tempfile::tempdir().unwrap();
    let (n, dim) = (60, 6);
    let (x, labels) = features(n, dim);
    let lf: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let f = d.path().join("f.safetensors");
    write(
        &f,
        &[
            ("feats", DType::F32, vec![n, dim], x.clone()),
            ("feats16", DType::BF16, vec![n, dim], x.clone()),
            ("labels", DType::I64, vec![n], lf.clone()),
            ("labels_f", DType::F32, vec![n], lf.clone()),
            ("half", DType::F32, vec![n], vec![0.5; n]),
            ("cube", DType::F32, vec![2, 3, 10], vec![1.0; 60]),
        ],
    );
    let want = anisotropy(&x, n, dim, Some(&labels)).unwrap();
    let r = json(&[
        "analyze",
        s(&f),
        "--embeddings",
        "feats",
        "--labels",
        "labels",
        "--json",
    ]);
    assert_eq!(r["engram_analyze_embeddings"], 1);
    let a = &r["anisotropy"];
    assert_eq!(a["rows"], n);
    assert_eq!(a["dim"], dim);
    assert_eq!(a["mean_cos"].as_f64(), Some(want.mean_cos));
    assert_eq!(a["d_prime"].as_f64(), want.d_prime);
    assert_eq!(a["eff_dim"].as_f64(), Some(want.eff_dim));
    assert_eq!(a["pairs"]["matched"], 2 * (30 * 29 / 2));
    assert!(want.mean_cos > 0.9, "{}", want.mean_cos);
    // Float labels holding whole numbers are the same labels; bf16 embeddings are decoded.
    let r2 = json(&[
        "analyze",
        s(&f),
        "--embeddings",
        "feats",
        "--labels",
        "labels_f",
        "--json",
    ]);
    assert_eq!(r2["anisotropy"], r["anisotropy"]);
    let x16 = values(&f, "feats16");
    let w16 = anisotropy(&x16, n, dim, None).unwrap();
    let r3 = json(&["analyze", s(&f), "--embeddings", "feats16", "--json"]);
    assert_eq!(r3["anisotropy"]["mean_cos"].as_f64(), Some(w16.mean_cos));
    assert!(r3["anisotropy"]["d_prime"].is_null());
    let line = ok(&[
        "analyze",
        s(&f),
        "--embeddings",
        "feats",
        "--labels",
        "labels",
    ]);
    assert!(
        line.contains("60 rows × 6 dims") && line.contains("mean cos") && line.contains("d' "),
        "{line}"
    );
    // Refusals name the tensor.
    let e = fails(&["analyze", s(&f), "--embeddings", "cube"]);
    assert!(e.contains("'cube'") && e.contains("not 2-D"), "{e}");
    let e = fails(&["analyze", s(&f), "--embeddings", "nope"]);
    assert!(e.contains("'nope'"), "{e}");
    let e = fails(&[
        "analyze",
        s(&f),
        "--embeddings",
        "feats",
        "--labels",
        "half",
    ]);
    assert!(
        e.contains("'half'") && e.contains("element 0 is 0.5"),
        "{e}"
    );
    let e = fails(&[
        "analyze",
        s(&f),
        "--embeddings",
        "feats",
        "--labels",
        "cube",
    ]);
    assert!(e.contains("'cube'") && e.contains("[60]"), "{e}");
    // --embeddings is a mode of its own: spectral options are refused with it.
    let out = engram(&["analyze", s(&f), "--embeddings", "feats", "--top-k", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let out = engram(&["analyze", s(&f), "--labels", "labels"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn whiten_fits_on_training_rows_and_applies_a_stored_transform() {
    let d = tempfile::tempdir().unwrap();
    let (n, dim, fit) = (300, 8, 200);
    let (x, labels) = features(n, dim);
    let lf: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let f = d.path().join("f.safetensors");
    write(
        &f,
        &[
            ("feats", DType::F32, vec![n, dim], x.clone()),
            ("labels", DType::I64, vec![n], lf),
            ("small", DType::F32, vec![n, 3], x[..n * 3].to_vec()),
        ],
    );
    let out = d.path().join("w.safetensors");
    let r = json(&[
        "whiten",
        s(&f),
        "--tensor",
        "feats",
        "--labels",
        "labels",
        "--k",
        "8",
        "--eps",
        "1e-9",
        "--fit-rows",
        "200",
        "-o",
        s(&out),
        "--json",
    ]);
    assert_eq!(r["engram_whiten"], 1);
    assert_eq!(r["mode"], "fit");
    assert_eq!(r["transform"]["k"], 8);
    assert_eq!(r["transform"]["fitted_rows"], fit);
    assert!(r["before"]["mean_cos"].as_f64().unwrap() > 0.9);
    assert!(r["after"]["mean_cos"].as_f64().unwrap().abs() < 0.05);
    let dp = |v: &serde_json::Value| v["d_prime"].as_f64().unwrap();
    assert!(dp(&r["after"]) > dp(&r["before"]), "{r}");
    // The whitened fitting rows: mean 0, covariance I.
    let z = values(&out, "feats");
    let k = 8;
    assert_eq!(z.len(), n * k);
    for i in 0..k {
        let m: f64 = (0..fit).map(|r| z[r * k + i] as f64).sum::<f64>() / fit as f64;
        assert!(m.abs() < 1e-4, "mean {i}: {m}");
        for j in 0..k {
            let c: f64 = (0..fit)
                .map(|r| z[r * k + i] as f64 * z[r * k + j] as f64)
                .sum::<f64>()
                / (fit - 1) as f64;
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((c - want).abs() < 1e-3, "cov[{i}][{j}] = {c}");
        }
    }
    // The after numbers are the library's on the written matrix.
    let after = anisotropy(&z, n, k, Some(&labels)).unwrap();
    assert_eq!(r["after"]["mean_cos"].as_f64(), Some(after.mean_cos));
    // The output is a transform: applied to the same rows it gives the same bytes.
    let out2 = d.path().join("w2.safetensors");
    let r2 = json(&[
        "whiten",
        s(&f),
        "--tensor",
        "feats",
        "--apply",
        s(&out),
        "-o",
        s(&out2),
        "--json",
    ]);
    assert_eq!(r2["mode"], "apply");
    assert_eq!(values(&out2, "feats"), z);
    let line = ok(&[
        "whiten",
        s(&f),
        "--tensor",
        "feats",
        "--k",
        "4",
        "-o",
        s(&out2),
    ]);
    assert!(
        line.contains("of variance kept") && line.contains("after:"),
        "{line}"
    );

    // Refusals, each naming its flag or tensor; the earlier output is untouched.
    let before = std::fs::read(&out).unwrap();
    let base = ["whiten", s(&f), "--tensor", "feats", "-o", s(&out)];
    for (extra, says) in [
        (&["--k", "0"][..], "--k 0"),
        (&["--k", "9"], "--k 9: keep 1 to 8"),
        (&["--fit-rows", "5", "--k", "5"], "--k 5: keep 1 to 4"),
        (&["--fit-rows", "1"], "--fit-rows 1"),
        (&["--fit-rows", "301"], "--fit-rows 301: give 2 to 300"),
        (&["--eps", "-1"], "--eps -1"),
        (&["--eps", "nan"], "--eps nan"),
        (&["--eps", "x"], "--eps 'x'"),
    ] {
        let e = fails(&[&base[..], extra].concat());
        assert!(e.contains(says), "{extra:?}: {e}");
    }
    let e = fails(&[
        "whiten",
        s(&f),
        "--tensor",
        "small",
        "--apply",
        s(&out),
        "-o",
        s(&out2),
    ]);
    assert!(
        e.contains("8 dimensions") && e.contains("'small' has 3"),
        "{e}"
    );
    let e = fails(&[
        "whiten",
        s(&f),
        "--tensor",
        "feats",
        "--apply",
        s(&f),
        "-o",
        s(&out2),
    ]);
    assert!(e.contains("not a whitening transform"), "{e}");
    let e = fails(&["whiten", s(&f), "--tensor", "feats", "-o", s(&f)]);
    assert!(e.contains("input of this run"), "{e}");
    let e = fails(&[
        "whiten",
        s(&out),
        "--tensor",
        "feats",
        "--apply",
        s(&out),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("input of this run"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let c = engram(&[
        "whiten",
        s(&f),
        "--tensor",
        "feats",
        "--apply",
        s(&out),
        "--k",
        "3",
        "-o",
        s(&out2),
    ]);
    assert_eq!(c.status.code(), Some(2));
    // A zero row (a padding row) has no cosine: it is left out of c̄ and d′ and counted.
    let mut zx = x.clone();
    zx[7 * dim..8 * dim].fill(0.0);
    let g = d.path().join("g.safetensors");
    write(&g, &[("feats", DType::F32, vec![n, dim], zx.clone())]);
    let r = json(&[
        "whiten",
        s(&g),
        "--tensor",
        "feats",
        "-o",
        s(&out2),
        "--json",
    ]);
    assert_eq!(r["before"]["zero_rows"], 1);
    assert_eq!(r["after"]["zero_rows"], 0);
    let want = anisotropy(&zx, n, dim, None).unwrap();
    assert_eq!(r["before"]["mean_cos"].as_f64(), Some(want.mean_cos));
    let line = ok(&["analyze", s(&g), "--embeddings", "feats"]);
    assert!(line.contains("1 zero row(s) left out"), "{line}");
    let r = json(&["analyze", s(&g), "--embeddings", "feats", "--json"]);
    assert_eq!(r["anisotropy"]["zero_rows"], 1);
    let line = ok(&["analyze", s(&f), "--embeddings", "feats"]);
    assert!(!line.contains("zero row"), "{line}");
    // A row equal to μ whitens to zero: pairs of rows mirrored about c, and c itself, in
    // whole numbers (μ = c exactly).
    let half: Vec<f32> = features(10, 4).0.iter().map(|v| v.round()).collect();
    let mut mx = half.clone();
    mx.extend(half.iter().map(|v| 20.0 - v));
    mx.extend([10.0; 4]);
    let h = d.path().join("h.safetensors");
    write(&h, &[("feats", DType::F32, vec![21, 4], mx)]);
    let r = json(&[
        "whiten",
        s(&h),
        "--tensor",
        "feats",
        "-o",
        s(&out2),
        "--json",
    ]);
    assert_eq!(r["before"]["zero_rows"], 0);
    assert_eq!(r["after"]["zero_rows"], 1);
    let z = values(&out2, "feats");
    assert!(z[20 * 4..].iter().all(|&v| v == 0.0), "{:?}", &z[20 * 4..]);
    let line = ok(&["whiten", s(&h), "--tensor", "feats", "-o", s(&out2)]);
    assert!(line.contains("1 zero row(s) left out"), "{line}");
    // Only one non-zero row: no cosine at all; the error names the tensor.
    let mut one = vec![0f32; n * dim];
    one[..dim].copy_from_slice(&x[..dim]);
    write(&g, &[("feats", DType::F32, vec![n, dim], one)]);
    let e = fails(&["analyze", s(&g), "--embeddings", "feats"]);
    assert!(
        e.contains("'feats'") && e.contains(&format!("{} of the {n} rows have zero norm", n - 1)),
        "{e}"
    );
}
