//! `engram patch` on a model with BatchNorm, through the built binary: the default scale
//! α/n, running statistics mixed linearly, the counter kept, removal with the recorded
//! scales, and a variance that would not stay positive refused.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::path::{Path, PathBuf};

mod common;
use common::{fails, ok, s};

const SHAPES: &[(&str, &[usize])] = &[
    ("conv1.weight", &[4, 1, 3, 3]),
    ("bn1.weight", &[4]),
    ("bn1.bias", &[4]),
    ("bn1.running_mean", &[4]),
    ("bn1.running_var", &[4]),
    ("bn1.num_batches_tracked", &[]),
    ("conv2.weight", &[4, 4, 3, 3]),
    ("bn2.weight", &[4]),
    ("bn2.bias", &[4]),
    ("bn2.running_mean", &[4]),
    ("bn2.running_var", &[4]),
    ("bn2.num_batches_tracked", &[]),
    ("fc.weight", &[3, 4]),
];

/// Model `k` of the family: values that differ per model and element, variances near 1
/// (`var` scales them), the counters 100·k.
fn model(dir: &Path, k: u64, var: f32) -> PathBuf {
    let path = dir.join(format!("m{k}.safetensors"));
    let specs: Vec<TensorSpec> = SHAPES
        .iter()
        .map(|(n, s)| {
            let dt = if n.ends_with("num_batches_tracked") {
                DType::I64
            } else {
                DType::F32
            };
            TensorSpec::new(*n, dt, s)
        })
        .collect();
    let w = ModelWriter::create(&path, specs.clone(), &WriteOptions::default()).unwrap();
    for (j, sp) in specs.iter().enumerate() {
        if sp.dtype == DType::I64 {
            w.write_bytes(&sp.name, &(100 * k as i64).to_le_bytes())
                .unwrap();
            continue;
        }
        let v: Vec<f32> = (0..sp.numel())
            .map(|i| {
                let x = ((i * 7 + j * 13 + k as usize * 29) % 17) as f32 / 17.0 - 0.5;
                if sp.name.ends_with("running_var") {
                    var * (1.0 + 0.2 * x + 0.1 * k as f32)
                } else {
                    x * (1.0 + k as f32)
                }
            })
            .collect();
        w.write_f32(&sp.name, &v).unwrap();
    }
    w.finish(&[]).unwrap();
    path
}

fn values(p: &Path, name: &str) -> Vec<f32> {
    Model::open(p)
        .unwrap()
        .require(name)
        .unwrap()
        .to_f32()
        .unwrap()
}

fn extract(pre: &Path, clean: &Path, m: &Path, out: &Path) -> serde_json::Value {
    let o = ok(&[
        "patch",
        "extract",
        "--pre",
        s(pre),
        "--clean",
        s(clean),
        "--model",
        s(m),
        "--first-layers",
        "1",
        "-o",
        s(out),
    ]);
    serde_json::from_str(&o).unwrap()
}

#[test]
fn batchnorm_patches_mix_statistics_with_alpha_over_n_and_come_off_again() {
    let d = tempfile::tempdir().unwrap();
    let (pre, clean) = (model(d.path(), 0, 1.0), model(d.path(), 1, 1.0));
    let cs = [model(d.path(), 2, 1.0), model(d.path(), 3, 1.0)];
    let ps = [d.path().join("p2"), d.path().join("p3")];
    for (c, p) in cs.iter().zip(&ps) {
        let rep = extract(&pre, &clean, c, p);
        assert_eq!(
            rep["bn_statistics"],
            serde_json::json!(["bn1.running_mean", "bn1.running_var"]),
            "{rep}"
        );
        assert_eq!(rep["tensors"].as_array().unwrap().len(), 5, "{rep}");
    }
    // Two patches without scales: α_c = 1/2 each.
    let on = d.path().join("on");
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&clean),
        "--patch",
        s(&ps[0]),
        "--patch",
        s(&ps[1]),
        "-o",
        s(&on),
    ]);
    for n in ["bn1.running_mean", "bn1.running_var"] {
        let (c0, c1, cl) = (values(&cs[0], n), values(&cs[1], n), values(&clean, n));
        for (i, got) in values(&on, n).iter().enumerate() {
            let want = cl[i] + 0.5 * (c0[i] - cl[i]) + 0.5 * (c1[i] - cl[i]);
            assert!((got - want).abs() <= 1e-6, "{n}[{i}]: {got} vs {want}");
        }
    }
    let m = Model::open(&on).unwrap();
    for n in ["bn1.num_batches_tracked", "bn2.num_batches_tracked"] {
        let clean_m = Model::open(&clean).unwrap();
        assert_eq!(
            m.require(n).unwrap().bytes,
            clean_m.require(n).unwrap().bytes
        );
    }
    for n in ["conv2.weight", "bn2.running_var", "fc.weight"] {
        assert_eq!(values(&on, n), values(&clean, n), "{n}");
    }
    let rec: serde_json::Value = serde_json::from_str(&m.metadata()["engram.patches"]).unwrap();
    let alphas: Vec<f64> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alpha"].as_f64().unwrap())
        .collect();
    assert_eq!(alphas, [0.5, 0.5], "{rec}");
    // --scale is α, divided among the patches given.
    let on3 = d.path().join("on3");
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&clean),
        "--patch",
        s(&ps[0]),
        "--patch",
        s(&ps[1]),
        "--scale",
        "3",
        "-o",
        s(&on3),
    ]);
    let rec: serde_json::Value =
        serde_json::from_str(&Model::open(&on3).unwrap().metadata()["engram.patches"]).unwrap();
    assert_eq!(rec[1]["alpha"].as_f64(), Some(1.5), "{rec}");

    // Remove without scales: the recorded ones.
    let off = d.path().join("off");
    ok(&[
        "patch",
        "remove",
        "-q",
        s(&on),
        "--patch",
        s(&ps[0]),
        "--patch",
        s(&ps[1]),
        "-o",
        s(&off),
    ]);
    for (n, _) in SHAPES.iter().filter(|(n, _)| !n.contains("num_batches")) {
        let (b, c) = (values(&off, n), values(&clean, n));
        for (x, y) in b.iter().zip(&c) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}: {x} vs {y}");
        }
    }
    // A second removal finds nothing left to remove; a model that never had it, nothing
    // recorded.
    let e = fails(&[
        "patch",
        "remove",
        s(&off),
        "--patch",
        s(&ps[0]),
        "-o",
        s(&d.path().join("x")),
    ]);
    assert!(
        e.contains("removed already") && e.contains("PATCH:ALPHA"),
        "{e}"
    );
    let e = fails(&[
        "patch",
        "remove",
        s(&clean),
        "--patch",
        s(&ps[0]),
        "-o",
        s(&d.path().join("x")),
    ]);
    assert!(e.contains("engram.patches"), "{e}");
    assert!(!d.path().join("x").exists());
    // Explicit scales still work both ways.
    let half = format!("{}:0.25", s(&ps[0]));
    let on4 = d.path().join("on4");
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&clean),
        "--patch",
        &half,
        "-o",
        s(&on4),
    ]);
    ok(&[
        "patch",
        "remove",
        "-q",
        s(&on4),
        "--patch",
        &half,
        "-o",
        s(&d.path().join("off4")),
    ]);
}

#[test]
fn a_variance_that_would_not_stay_positive_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let pre = model(d.path(), 0, 1.0);
    let clean = model(d.path(), 1, 1.0);
    // The corruption model's variances are a fifth of the clean one's.
    let c = model(d.path(), 4, 0.2);
    let p = d.path().join("p");
    extract(&pre, &clean, &c, &p);
    let out = d.path().join("out");
    let e = fails(&[
        "patch",
        "apply",
        s(&clean),
        "--patch",
        &format!("{}:3", s(&p)),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("bn1.running_var") && e.contains("positive"),
        "{e}"
    );
    assert!(!out.exists());
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&clean),
        "--patch",
        s(&p),
        "-o",
        s(&out),
    ]);
    assert!(values(&out, "bn1.running_var").iter().all(|v| *v > 0.0));
}

#[test]
fn help_states_the_default_scale() {
    let h = ok(&["patch", "apply", "--help"]);
    assert!(h.contains("α/n"), "{h}");
    let h = ok(&["patch", "remove", "--help"]);
    assert!(h.contains("records"), "{h}");
}

/// Scales that change nothing (0), that overflow f32, a removal's variance error, and a
/// patch given twice to `remove` with the recorded scale: each refused with an error that
/// names the flag or patch and says what is wrong, nothing written.
#[test]
fn zero_overflowing_and_repeated_scales_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let pre = model(d.path(), 0, 1.0);
    let clean = model(d.path(), 1, 1.0);
    // Variances a fifth of the clean one's: Δvar < 0.
    let c = model(d.path(), 4, 0.2);
    let p = d.path().join("p");
    extract(&pre, &clean, &c, &p);
    let out = d.path().join("out");
    let on = d.path().join("on");
    ok(&[
        "patch",
        "apply",
        "-q",
        s(&clean),
        "--patch",
        s(&p),
        "-o",
        s(&on),
    ]);
    let zero = format!("{}:0", s(&p));
    for (cmd, model, args) in [
        ("apply", &clean, vec!["--patch", s(&p), "--scale", "0"]),
        ("apply", &clean, vec!["--patch", zero.as_str()]),
        ("remove", &on, vec!["--patch", s(&p), "--scale", "0"]),
        ("remove", &on, vec!["--patch", zero.as_str()]),
        ("apply", &clean, vec!["--patch", s(&p), "--scale", "-0.0"]),
    ] {
        let mut a = vec!["patch", cmd, s(model)];
        a.extend(args.iter().copied());
        a.extend(["-o", s(&out)]);
        let e = fails(&a);
        assert!(e.contains("no effect"), "{a:?}: {e}");
        assert!(
            e.contains("--scale 0") || e.contains(&format!("--patch '{zero}'")),
            "{a:?}: {e}"
        );
        assert!(!out.exists());
    }
    // Beyond f32: out of range, with the range, not "must be finite".
    let huge = format!("{}:1e300", s(&p));
    let e = fails(&["patch", "apply", s(&clean), "--patch", &huge, "-o", s(&out)]);
    assert!(
        e.contains("outside the f32 range") && e.contains("3.4028235e38") && e.contains("1e300"),
        "{e}"
    );
    assert!(!e.contains("finite"), "{e}");
    let e = fails(&[
        "patch",
        "apply",
        s(&clean),
        "--patch",
        s(&p),
        "--scale",
        "1e300",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("--scale 1e300 is outside the f32 range"), "{e}");
    let e = fails(&[
        "patch",
        "remove",
        s(&on),
        "--patch",
        s(&p),
        "--scale",
        "-1e39",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("--scale -1e39 is outside the f32 range"), "{e}");
    let e = fails(&[
        "patch",
        "apply",
        s(&clean),
        "--patch",
        s(&p),
        "--scale",
        "inf",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("--scale inf must be finite"), "{e}");
    // A removal that would make a variance negative: the advice fits a removal.
    let e = fails(&[
        "patch",
        "remove",
        s(&clean),
        "--patch",
        &format!("{}:-10", s(&p)),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("bn1.running_var") && e.contains("change their scales"),
        "{e}"
    );
    assert!(!e.contains("lower"), "{e}");
    // The same patch twice, removed with the recorded scale: each would take off the
    // whole recorded amount.
    let e = fails(&[
        "patch",
        "remove",
        s(&on),
        "--patch",
        s(&p),
        "--patch",
        s(&p),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains(&format!("--patch '{}'", s(&p))) && e.contains("same patch"),
        "{e}"
    );
    // A copy of the patch is the same patch (same fingerprint).
    let p2 = d.path().join("p-copy");
    std::fs::create_dir_all(&p2).unwrap();
    for f in std::fs::read_dir(&p).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), p2.join(f.file_name())).unwrap();
    }
    let e = fails(&[
        "patch",
        "remove",
        s(&on),
        "--patch",
        s(&p),
        "--patch",
        &format!("{}:0.5", s(&p2)),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("same patch"), "{e}");
    assert!(!out.exists());
    // With explicit scales the user says how much each takes off: accepted, and the two
    // halves take the patch off.
    ok(&[
        "patch",
        "remove",
        "-q",
        s(&on),
        "--patch",
        &format!("{}:0.5", s(&p)),
        "--patch",
        &format!("{}:0.5", s(&p2)),
        "-o",
        s(&out),
    ]);
    for (n, _) in SHAPES.iter().filter(|(n, _)| !n.contains("num_batches")) {
        for (x, y) in values(&out, n).iter().zip(values(&clean, n)) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}: {x} vs {y}");
        }
    }
}
