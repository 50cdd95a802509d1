//! The weight-space commands end to end through the built binary: merge by config and by
//! flags, TALL, Consensus, compress/extract, task vectors and patches, and their errors.

use engram_ckpt::Model;
use std::path::Path;

mod common;
use common::{fails, family, ok, s};

/// Tensor data of a model (header metadata excluded), by name.
fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let m = Model::open(p).expect("open");
    m.tensors()
        .map(|t| (t.name().to_string(), t.bytes.to_vec()))
        .collect()
}

#[test]
fn config_and_flags_give_the_same_ties_merge() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(d.path(), 3);
    let cfg = d.path().join("ties.yml");
    std::fs::write(
        &cfg,
        format!(
            "merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\n  - model: {}\nparameters:\n  density: 0.3\n  lambda: 0.9\ndtype: bfloat16\n",
            s(&base), s(&base), s(&fts[0]), s(&fts[1])
        ),
    )
    .unwrap();
    let a = d.path().join("a");
    let b = d.path().join("b");
    ok(&["merge", "-q", s(&cfg), "-o", s(&a)]);
    ok(&[
        "merge",
        "-q",
        "--method",
        "ties",
        "--base",
        s(&base),
        "--density",
        "0.3",
        "--lambda",
        "0.9",
        s(&fts[0]),
        s(&fts[1]),
        "-o",
        s(&b),
    ]);
    assert_eq!(tensors(&a), tensors(&b));
    assert!(
        a.join("config.json").is_file(),
        "side files come from the base"
    );
    // The merge moved the base, and differs from a plain TA merge.
    assert_ne!(tensors(&a), tensors(&base));
}

#[test]
fn dare_is_reproducible_across_thread_counts() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(d.path(), 2);
    let run = |threads: &str, seed: &str, out: &str| {
        let o = d.path().join(out);
        ok(&[
            "merge",
            "-q",
            "--threads",
            threads,
            "--method",
            "dare_ties",
            "--base",
            s(&base),
            "--density",
            "0.5",
            "--seed",
            seed,
            s(&fts[0]),
            s(&fts[1]),
            "-o",
            s(&o),
        ]);
        tensors(&o)
    };
    let one = run("1", "3", "t1");
    assert_eq!(one, run("2", "3", "t2"));
    assert_ne!(one, run("2", "4", "t3"));
}

#[test]
fn unsupported_keys_missing_models_and_shape_mismatches_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("f"), 1);
    let cfg = d.path().join("bad.yml");
    std::fs::write(&cfg, format!("merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters:\n      densty: 0.5\n", s(&base), s(&fts[0]))).unwrap();
    let out = d.path().join("out");
    let e = fails(&["merge", s(&cfg), "-o", s(&out)]);
    assert!(e.contains("'densty'") && e.contains("bad.yml"), "{e}");
    assert!(!out.exists());
    std::fs::write(&cfg, "merge_method: ties\nslices: []\n").unwrap();
    assert!(fails(&["merge", s(&cfg), "-o", s(&out)]).contains("'slices'"));
    // Another architecture: same names, other shapes.
    ok(&[
        "synth",
        "-q",
        "-o",
        s(&d.path().join("g")),
        "-n",
        "1",
        "--params",
        "20M",
    ]);
    let other = d.path().join("g/ft-1");
    let e = fails(&[
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        s(&base),
        s(&other),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("shape") && e.contains("model.embed_tokens.weight") && e.contains(s(&other)),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn compress_then_extract_rebuilds_tall_reconstructions_exactly() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("f"), 3);
    let bundle = d.path().join("bundle");
    let mut args = vec![
        "compress",
        "-q",
        "--base",
        s(&base),
        "--tasks",
        "a,b,c",
        "--lambdas",
        "0.3,0.4,0.5",
        "-o",
        s(&bundle),
    ];
    let fts_s: Vec<&str> = fts.iter().map(|p| s(p)).collect();
    args.extend(&fts_s);
    ok(&args);
    let rec = d.path().join("rec");
    let mut args = vec![
        "tall",
        "-q",
        "--base",
        s(&base),
        "--tasks",
        "a,b,c",
        "--lambdas",
        "0.3,0.4,0.5",
        "--reconstruct",
        s(&rec),
    ];
    args.extend(&fts_s);
    ok(&args);
    for t in ["a", "b", "c"] {
        let ex = d.path().join(format!("ex-{t}"));
        ok(&["extract", "-q", s(&bundle), "--task", t, "-o", s(&ex)]);
        assert_eq!(tensors(&ex), tensors(&rec.join(t)), "task {t}");
        assert!(ex.join("config.json").is_file());
    }
    let e = fails(&[
        "extract",
        s(&bundle),
        "--task",
        "zz",
        "-o",
        s(&d.path().join("zz")),
    ]);
    assert!(e.contains("no task 'zz'") && e.contains("a, b, c"), "{e}");
    // Statistics as JSON: the histogram covers every parameter.
    let mut args = vec!["tall", "--json", "--base", s(&base)];
    args.extend(&fts_s);
    let stats: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let hist: u64 = stats["total"]["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(hist, stats["total"]["params"].as_u64().unwrap());
}

#[test]
fn task_vectors_and_patches_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("f"), 2);
    let tv = d.path().join("tv");
    ok(&[
        "tv",
        "extract",
        "-q",
        "--base",
        s(&base),
        "--model",
        s(&fts[0]),
        "-o",
        s(&tv),
    ]);
    // base + τ rounds back to the fine-tune (bf16 output).
    let applied = d.path().join("applied");
    ok(&[
        "tv",
        "apply",
        "-q",
        "--base",
        s(&base),
        &format!("{}:1.0", s(&tv)),
        "-o",
        s(&applied),
    ]);
    assert_eq!(tensors(&applied), tensors(&fts[0]));
    // A task vector refuses another base.
    let e = fails(&[
        "tv",
        "apply",
        "--base",
        s(&fts[1]),
        s(&tv),
        "-o",
        s(&d.path().join("x")),
    ]);
    assert!(e.contains("another base"), "{e}");

    let patch = d.path().join("p.safetensors");
    ok(&[
        "patch",
        "extract",
        "-q",
        "--pre",
        s(&base),
        "--clean",
        s(&fts[0]),
        "--model",
        s(&fts[1]),
        "--first-layers",
        "1",
        "-o",
        s(&patch),
    ]);
    let on = d.path().join("on");
    let off = d.path().join("off");
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&fts[0]),
        "--patch",
        &format!("{}:0.5", s(&patch)),
        "-o",
        s(&on),
    ]);
    ok(&[
        "patch",
        "remove",
        "-q",
        s(&on),
        "--patch",
        &format!("{}:0.5", s(&patch)),
        "-o",
        s(&off),
    ]);
    let (orig, mid, back) = (
        Model::open(&fts[0]).unwrap(),
        Model::open(&on).unwrap(),
        Model::open(&off).unwrap(),
    );
    for t in orig.tensors() {
        let a = t.to_f32().unwrap();
        let m = mid.require(t.name()).unwrap().to_f32().unwrap();
        let b = back.require(t.name()).unwrap().to_f32().unwrap();
        // Within the two bf16 roundings (of the patched and of the restored value).
        let half_ulp = 2f32.powi(-8);
        assert!(
            a.iter()
                .zip(&b)
                .zip(&m)
                .all(|((x, y), z)| (x - y).abs() <= half_ulp * (x.abs() + z.abs())),
            "{}",
            t.name()
        );
        if !t.name().starts_with("model.layers.0.") {
            assert_eq!(a, b, "{} is outside the patch", t.name());
        }
    }
}

/// Writes an F32 (and one I64) model of the given tensors to `path`.
fn write_model(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions};
    let mut specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, shape, _)| TensorSpec::new(*n, DType::F32, shape))
        .collect();
    specs.push(TensorSpec::new("position_ids", DType::I64, &[2, 3]));
    let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
    for (n, _, v) in tensors {
        w.write_f32(n, v).unwrap();
    }
    w.write_bytes("position_ids", &[0u8; 48]).unwrap();
    w.finish(&[]).unwrap();
}

#[test]
fn analyze_reports_known_spectra_lift_masks_and_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    // A 6×4 matrix with singular values 8, 4, 2, 0.5 on its diagonal (signs and order mixed),
    // a 4×2×3 kernel (a 4×6 matrix), a 16×12 pseudo-random matrix, and a bias.
    let mut diag = vec![0f32; 24];
    for (i, v) in [2.0f32, -8.0, 0.5, 4.0].iter().enumerate() {
        diag[i * 4 + i] = *v;
    }
    let mut x = 1u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let conv: Vec<f32> = (0..24).map(|_| next()).collect();
    let dense: Vec<f32> = (0..192).map(|_| next()).collect();
    let model = d.path().join("m.safetensors");
    write_model(
        &model,
        &[
            ("diag.weight", vec![6, 4], diag),
            ("conv.weight", vec![4, 2, 3], conv),
            ("dense.weight", vec![16, 12], dense),
            ("dense.bias", vec![16], vec![0.1; 16]),
        ],
    );
    let masks = d.path().join("lift.safetensors");
    let report = d.path().join("report");
    let doc: serde_json::Value = serde_json::from_str(&ok(&[
        "analyze",
        "-q",
        "--json",
        s(&model),
        "--lift-masks",
        s(&masks),
        "--filter-rank",
        "2",
        "--lift-rank",
        "1",
        "--out",
        s(&report),
    ]))
    .unwrap();
    assert_eq!(doc["engram_analyze"], 1);
    let tensors = doc["tensors"].as_array().unwrap();
    let names: Vec<&str> = tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["diag.weight", "conv.weight", "dense.weight"]);
    let skipped: Vec<&str> = doc["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["dense.bias", "position_ids"]);

    // The diagonal matrix: κ = 8 / (0.5 + 1e-8), effective rank from p = σ / Σσ.
    let t = &tensors[0];
    let kappa = t["kappa"].as_f64().unwrap();
    assert!((kappa - 8.0 / (0.5 + 1e-8)).abs() < 1e-9, "{kappa}");
    let sv = [8.0f64, 4.0, 2.0, 0.5];
    let total: f64 = sv.iter().sum();
    let erank = (-sv.iter().map(|s| s / total * (s / total).ln()).sum::<f64>()).exp();
    assert!((t["effective_rank"].as_f64().unwrap() - erank).abs() < 1e-9);
    let fro = sv.iter().map(|s| s * s).sum::<f64>().sqrt();
    assert!((t["frobenius_norm"].as_f64().unwrap() - fro).abs() < 1e-9);
    assert!((t["sigma_min"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(t["exact"], true);
    assert!(t.get("singular_values").is_none(), "only with --values");
    assert_eq!((t["rows"].as_u64(), t["cols"].as_u64()), (Some(6), Some(4)));
    assert_eq!(tensors[1]["cols"], 6);

    // One BOOL mask per matrix, same shape, exactly K = min((m + n)·1, m·n) entries set.
    let mm = Model::open(&masks).unwrap();
    assert_eq!(mm.len(), 3);
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let v = mm.require(name).unwrap();
        assert_eq!(v.dtype(), engram_ckpt::DType::Bool);
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(v.shape(), &shape[..]);
        let (m, n) = (shape[0], shape[1..].iter().product::<usize>());
        let k = (m + n).min(m * n);
        assert_eq!(t["lift_k"].as_u64(), Some(k as u64));
        assert_eq!(v.bytes.iter().filter(|&&b| b == 1).count(), k, "{name}");
        assert!(v.bytes.iter().all(|&b| b <= 1));
    }
    // The rank-2 part of the diagonal matrix is its two largest entries: both in the mask.
    let dm = mm.require("diag.weight").unwrap().bytes;
    assert_eq!((dm[4 + 1], dm[3 * 4 + 3]), (1, 1));
    assert!(mm.metadata()["engram.command"].contains("analyze"));

    // --out: the same document and an HTML page with both charts.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("analysis.json")).unwrap()).unwrap();
    assert_eq!(file["tensors"], doc["tensors"]);
    let html = std::fs::read_to_string(report.join("analysis.html")).unwrap();
    assert!(html.contains("log10 κ per tensor") && html.contains("Effective rank per tensor"));
    assert_eq!(html.matches("<svg").count(), 2);

    // Text table, filters, --values.
    let text = ok(&["analyze", s(&model), "--include", "diag", "--values"]);
    assert!(
        text.contains("diag.weight") && !text.contains("dense.weight"),
        "{text}"
    );
    assert!(text.contains("1.600e1"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&ok(&[
        "analyze",
        "--json",
        "--values",
        "--exclude",
        "conv",
        "--exclude",
        "diag",
        s(&model),
    ]))
    .unwrap();
    assert_eq!(doc["tensors"].as_array().unwrap().len(), 1);
    assert_eq!(
        doc["tensors"][0]["singular_values"]
            .as_array()
            .unwrap()
            .len(),
        12
    );

    // Above --max-dim: the randomized top values only, no κ.
    let doc: serde_json::Value = serde_json::from_str(&ok(&[
        "analyze",
        "--json",
        "--values",
        "--max-dim",
        "8",
        "--top-k",
        "3",
        s(&model),
    ]))
    .unwrap();
    let t = &doc["tensors"][2];
    assert_eq!(
        (t["name"].as_str(), &t["exact"]),
        (Some("dense.weight"), &false.into())
    );
    assert!(t["kappa"].is_null() && t["effective_rank"].is_null());
    assert_eq!(t["singular_values"].as_array().unwrap().len(), 3);
    assert_eq!(doc["tensors"][0]["exact"], true);

    // Missing, malformed and non-finite inputs: exit 1 naming the file (and the tensor).
    let missing = d.path().join("missing.safetensors");
    assert!(fails(&["analyze", s(&missing)]).contains("missing.safetensors"));
    let bad = d.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    assert!(fails(&["analyze", s(&bad)]).contains("bad.safetensors"));
    let nan = d.path().join("nan.safetensors");
    write_model(
        &nan,
        &[("w.weight", vec![2, 2], vec![1.0, f32::NAN, 0.0, 1.0])],
    );
    let e = fails(&[
        "analyze",
        s(&nan),
        "--lift-masks",
        s(&d.path().join("x.safetensors")),
    ]);
    assert!(
        e.contains("nan.safetensors") && e.contains("'w.weight'") && e.contains("non-finite"),
        "{e}"
    );
    assert!(!d.path().join("x.safetensors").exists());
}
