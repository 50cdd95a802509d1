// Checkpoint surgery: Ker-VLJEPA's warm initialisation (arXiv 2603.23308).
// Card: shared/methods/robustness_safety.md, "Ker-VLJEPA parts".

//! `engram graft` end to end through the built binary: the grafted tensors are A's bytes,
//! every other tensor and B's metadata stay, and what is not a plain copy is refused.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::path::Path;

mod common;
use common::{fails, ok, s};

/// Writes tensors (name, dtype, shape) filled with `base + index` and metadata `my.key`.
fn write(path: &Path, tensors: &[(&str, DType, &[usize])], base: f32) {
    let specs = tensors
        .iter()
        .map(|(n, dt, sh)| TensorSpec::new(*n, *dt, sh))
        .collect();
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: [("my.key".to_string(), format!("{base}"))].into(),
    };
    let w = ModelWriter::create(path, specs, &opts).unwrap();
    for (n, dt, sh) in tensors {
        let len: usize = sh.iter().product();
        if *dt == DType::I64 {
            let b: Vec<u8> = (0..len)
                .flat_map(|i| (i as i64 + base as i64).to_le_bytes())
                .collect();
            w.write_bytes(n, &b).unwrap();
        } else {
            let v: Vec<f32> = (0..len).map(|i| base + i as f32 * 0.25).collect();
            w.write_f32(n, &v).unwrap();
        }
    }
    w.finish(&[]).unwrap();
}

const TENSORS: &[(&str, DType, &[usize])] = &[
    ("enc.0.w", DType::F32, &[4, 3]),
    ("enc.0.b", DType::F32, &[3]),
    ("head.w", DType::BF16, &[2, 3]),
    ("pos", DType::I64, &[2]),
];

fn bytes(p: &Path) -> Vec<(String, Vec<u8>)> {
    let m = Model::open(p).unwrap();
    m.tensors()
        .map(|t| (t.name().to_string(), t.bytes.to_vec()))
        .collect()
}

#[test]
fn graft_copies_bytes_and_keeps_everything_else() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.safetensors"), d.path().join("b"));
    write(&a, TENSORS, 1.0);
    write(&b, TENSORS, -7.0);
    let out = d.path().join("out");
    let r: serde_json::Value = serde_json::from_str(&ok(&[
        "graft",
        "--from",
        s(&a),
        "--into",
        s(&b),
        "--tensors",
        "enc.*, pos",
        "-o",
        s(&out),
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["engram_graft"], 1);
    assert_eq!(
        r["report"]["grafted"],
        serde_json::json!(["enc.0.w", "enc.0.b", "pos"])
    );
    assert_eq!(r["report"]["kept"], 1);
    let (ab, bb) = (bytes(&a), bytes(&b));
    let ob = bytes(&out);
    assert_eq!(ob.len(), 4);
    for ((name, o), (bn, bv)) in ob.iter().zip(&bb) {
        assert_eq!(name, bn, "B's order is kept");
        let want = if name == "head.w" {
            bv
        } else {
            &ab.iter().find(|(n, _)| n == name).unwrap().1
        };
        assert_eq!(o, want, "{name}");
    }
    let md = Model::open(&out).unwrap().metadata();
    assert_eq!(md["my.key"], "-7");
    assert!(md["engram.graft"].contains("enc.0.w") && md.contains_key("engram.command"));
    let line = ok(&[
        "graft",
        "--from",
        s(&a),
        "--into",
        s(&b),
        "--tensors",
        "head.w",
        "-o",
        s(&out),
    ]);
    assert!(
        line.contains("grafted 1 tensor(s) (6 parameters)"),
        "{line}"
    );
}

#[test]
fn graft_refuses_what_is_not_a_plain_copy() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        d.path().join("a.safetensors"),
        d.path().join("b.safetensors"),
    );
    write(&a, TENSORS, 1.0);
    write(&b, TENSORS, -7.0);
    let (c, e16) = (
        d.path().join("c.safetensors"),
        d.path().join("e.safetensors"),
    );
    write(
        &c,
        &[
            ("enc.0.w", DType::F32, &[3, 4]),
            ("extra", DType::F32, &[2]),
        ],
        2.0,
    );
    write(&e16, &[("enc.0.w", DType::F16, &[4, 3])], 2.0);
    let out = d.path().join("o.safetensors");
    let graft = |from: &Path, into: &Path, pats: &str, out: &Path| {
        fails(&[
            "graft",
            "--from",
            s(from),
            "--into",
            s(into),
            "--tensors",
            pats,
            "-o",
            s(out),
        ])
    };
    let e = graft(&c, &b, "enc.0.w", &out);
    assert!(
        e.contains("'enc.0.w'") && e.contains("[4, 3]") && e.contains("[3, 4]"),
        "{e}"
    );
    let e = graft(&e16, &b, "enc.*", &out);
    assert!(
        e.contains("'enc.0.w'") && e.contains("F16") && e.contains("F32"),
        "{e}"
    );
    let e = graft(&a, &b, "dec.*", &out);
    assert!(e.contains("'dec.*' matches none"), "{e}");
    let e = graft(&a, &b, "enc.0.x", &out);
    assert!(e.contains("'enc.0.x' matches none"), "{e}");
    let e = graft(&a, &b, "enc.0", &out);
    assert!(e.contains("'enc.0' matches none"), "{e}");
    let e = graft(&c, &b, "extra", &out);
    assert!(
        e.contains("'extra'") && e.contains("not in this checkpoint"),
        "{e}"
    );
    let e = graft(&a, &b, "enc.*,,pos", &out);
    assert!(e.contains("empty pattern"), "{e}");
    assert!(!out.exists());
    // The output never replaces an input.
    let (before_a, before_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    for dest in [&a, &b] {
        let e = graft(&a, &b, "enc.*", dest);
        assert!(e.contains("input of this run"), "{e}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), before_a);
    assert_eq!(std::fs::read(&b).unwrap(), before_b);
}
