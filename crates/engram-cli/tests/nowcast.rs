// KNOW: weight nowcasting (Jang et al., arXiv 2508.05059; jjh6297/KNOW).
// Card: shared/methods/hypernetworks.md, "KNOW (weight nowcasting)".

//! `engram nowcast` end to end through the built binary on small synthetic checkpoints: the
//! roll-out of a predictor whose output is known, and the inputs it refuses.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use engram_weights::nowcast::{PREFIXES, layout};
use std::path::{Path, PathBuf};

mod common;
use common::{fails, mkfifo, ok, s};

fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let specs = tensors
        .iter()
        .map(|(n, sh, _)| TensorSpec::new(*n, DType::F32, sh))
        .collect();
    let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
    for (n, _, v) in tensors {
        w.write_f32(n, v).unwrap();
    }
    w.finish(&[]).unwrap();
}

/// A predictor file whose networks output Δ = `d` everywhere (all zero but the head's bias).
fn predictor(path: &Path, d: f32) {
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for p in PREFIXES {
        for (name, shape) in layout() {
            let n: usize = shape.iter().product();
            let v = match name.as_str() {
                "head.bias" => vec![d.atanh()],
                _ => vec![0.0; n],
            };
            t.push((format!("{p}{name}"), shape, v));
        }
    }
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = t
        .iter()
        .map(|(n, sh, v)| (n.as_str(), sh.clone(), v.clone()))
        .collect();
    write(path, &refs);
}

/// Five checkpoints: weight k·(1, 2, 3, 4) at index k, bias (k, 0).
fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    (0..5)
        .map(|k| {
            let p = dir.join(format!("c{k}.safetensors"));
            let x = k as f32;
            write(
                &p,
                &[
                    ("fc.weight", vec![2, 2], vec![x, 2.0 * x, 3.0 * x, 4.0 * x]),
                    ("fc.bias", vec![2], vec![x, 0.0]),
                ],
            );
            p
        })
        .collect()
}

#[test]
fn nowcast_rolls_out_and_refuses_bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let cks = checkpoints(d.path());
    let pred = d.path().join("know.safetensors");
    predictor(&pred, 0.125);
    let out = d.path().join("out.safetensors");
    let mut args = vec!["nowcast", "--predictor", s(&pred), "-o", s(&out), "--json"];
    args.extend(cks.iter().map(|p| s(p)));
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(json["summary"]["matrices"], 1);
    assert_eq!(json["summary"]["biases"], 1);
    let m = Model::open(&out).unwrap();
    let w = m.require("fc.weight").unwrap().to_f32().unwrap();
    for (x, y) in w.iter().zip([4.375f32, 8.375, 12.375, 16.375]) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    // The bias window 0, 1, 2, 3, 4 (range 4, scale 8) moves by 0.125·8 = 1 per step, and
    // every shifted window keeps that range: 5, 6, 7.
    let b = m.require("fc.bias").unwrap().to_f32().unwrap();
    assert!((b[0] - 7.0).abs() < 1e-4, "{b:?}");
    drop(m);

    // --steps 1 adds one Δ.
    let one = d.path().join("one.safetensors");
    let mut a1 = vec![
        "nowcast",
        "--predictor",
        s(&pred),
        "-o",
        s(&one),
        "--steps",
        "1",
    ];
    a1.extend(cks.iter().map(|p| s(p)));
    ok(&a1);
    let w1 = Model::open(&one)
        .unwrap()
        .require("fc.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    assert!((w1[0] - 4.125).abs() < 1e-5);

    // Four checkpoints.
    let mut a = vec!["nowcast", "--predictor", s(&pred), "-o", s(&out)];
    a.extend(cks[..4].iter().map(|p| s(p)));
    assert!(fails(&a).contains("exactly 5"));
    // The output is an input.
    let mut a = vec!["nowcast", "--predictor", s(&pred), "-o", s(&cks[0])];
    a.extend(cks.iter().map(|p| s(p)));
    fails(&a);
    let mut a = vec!["nowcast", "--predictor", s(&pred), "-o", s(&pred)];
    a.extend(cks.iter().map(|p| s(p)));
    fails(&a);
    // A special file as output.
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let mut a = vec!["nowcast", "--predictor", s(&pred), "-o", s(&fifo)];
    a.extend(cks.iter().map(|p| s(p)));
    fails(&a);
    // A predictor that is not one names the missing tensor.
    let mut a = vec!["nowcast", "--predictor", s(&cks[0]), "-o", s(&out)];
    a.extend(cks.iter().map(|p| s(p)));
    assert!(fails(&a).contains("matrix.value.dense1.kernel"));
    // A shape mismatch and a NaN name the tensor.
    let bad = d.path().join("bad.safetensors");
    write(
        &bad,
        &[
            ("fc.weight", vec![4], vec![0.0; 4]),
            ("fc.bias", vec![2], vec![0.0; 2]),
        ],
    );
    let mut a = vec!["nowcast", "--predictor", s(&pred), "-o", s(&out)];
    a.extend(cks[..4].iter().map(|p| s(p)));
    a.push(s(&bad));
    assert!(fails(&a).contains("fc.weight"));
    write(
        &bad,
        &[
            ("fc.weight", vec![2, 2], vec![0.0; 4]),
            ("fc.bias", vec![2], vec![f32::NAN, 0.0]),
        ],
    );
    assert!(fails(&a).contains("fc.bias"));
    // A failed run left the earlier output as it was.
    let w2 = Model::open(&out)
        .unwrap()
        .require("fc.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    assert_eq!(w, w2);
}
