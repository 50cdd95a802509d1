//! The weight-space commands end to end through the built binary: merge by config and by
//! flags, TALL, Consensus, compress/extract, task vectors and patches, and their errors.

use engram_ckpt::Model;
use std::path::{Path, PathBuf};

mod common;
use common::{engram, ok, s};

/// Runs a failing command: exit code 1, no panic, stderr returned.
fn fails(args: &[&str]) -> String {
    let out = engram(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A tiny synthetic family: base, ft-1 .. ft-n (bf16).
fn family(dir: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    ok(&[
        "synth",
        "-q",
        "-o",
        s(dir),
        "-n",
        &n.to_string(),
        "--seed",
        "7",
    ]);
    (
        dir.join("base"),
        (1..=n).map(|i| dir.join(format!("ft-{i}"))).collect(),
    )
}

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
