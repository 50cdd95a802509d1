//! `engram quantize` / `engram dequantize`: the packed layout round-trips to exactly what the
//! in-memory quantizers give, the report carries errors and exponents, and bad input is a
//! clear error that writes nothing.

mod common;
use common::{fails, family, ok, s};
use engram_ckpt::Model;
use engram_weights::quant::{self, Scope, Spec};
use serde_json::Value;

#[test]
fn round_trip_matches_the_in_memory_quantizers() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = family(dir.path(), 0);
    let m = Model::open(&base).unwrap();
    let cases: &[(&str, &[&str], Spec)] = &[
        ("rtn", &["--bits", "4"], Spec::new(4, Scope::Channel)),
        (
            "rtn",
            &["--bits", "3", "--asym", "--scope", "tensor"],
            Spec {
                symmetric: false,
                ..Spec::new(3, Scope::Tensor)
            },
        ),
        (
            "rtn",
            &["--bits", "5", "--group", "16"],
            Spec::new(5, Scope::Group(16)),
        ),
        (
            "power",
            &["--bits", "3", "--scope", "tensor"],
            Spec::new(3, Scope::Tensor),
        ),
        ("statsq", &["--bits", "2"], Spec::new(2, Scope::Channel)),
    ];
    for (i, (method, flags, spec)) in cases.iter().enumerate() {
        let q = dir.path().join(format!("q{i}.safetensors"));
        let back = dir.path().join(format!("d{i}.safetensors"));
        let mut args = vec![
            "quantize",
            "-q",
            s(&base),
            "-o",
            s(&q),
            "--method",
            method,
            "--json",
        ];
        args.extend_from_slice(flags);
        let report: Value = serde_json::from_str(&ok(&args)).unwrap();
        ok(&["dequantize", "-q", s(&q), "-o", s(&back)]);
        let d = Model::open(&back).unwrap();
        let qm = quant::by_name(method).unwrap();
        let mut quantized = 0;
        for t in report["report"]["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let v = m.require(name).unwrap();
            let got = d.require(name).unwrap();
            assert_eq!((got.dtype(), got.shape()), (v.dtype(), v.shape()), "{name}");
            if t["quantized"].is_null() {
                assert_eq!(got.bytes, v.bytes, "{name} kept byte for byte");
                continue;
            }
            quantized += 1;
            let w = v.to_f32().unwrap();
            let a = t["quantized"]["a"].as_f64().unwrap() as f32;
            let z = quant::quantize_at(qm, spec, &w, v.shape(), a).unwrap();
            let want: Vec<f32> = z.dequantize(qm, spec);
            // The output keeps the input's dtype (bf16 here): compare through it.
            let mut enc = vec![0u8; want.len() * v.dtype().size()];
            engram_ckpt::dtype::encode_f32(v.dtype(), &want, &mut enc);
            assert_eq!(got.bytes, &enc[..], "{method} {flags:?}: {name}");
            let rel = t["quantized"]["rel_error"].as_f64().unwrap();
            let exact = quant::sq_diff(&w, &want) / quant::sq_norm(&w);
            assert!(
                (rel - exact).abs() <= 1e-9 + 1e-6 * exact,
                "{name}: {rel} vs {exact}"
            );
            if *method == "power" {
                assert!((0.2..=1.5).contains(&a) && a != 1.0, "{name}: a = {a}");
            } else {
                assert_eq!(a, 1.0);
            }
        }
        assert!(quantized > 0);
        // The packed file is smaller than the input (bf16) at these widths.
        let qb = report["report"]["bytes_out"].as_u64().unwrap();
        assert!(qb < report["report"]["bytes_in"].as_u64().unwrap());
        assert!(Model::open(&q).unwrap().verify().is_ok());
    }
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = family(dir.path(), 0);
    let out = dir.path().join("q.safetensors");
    let o = s(&out);
    let b = s(&base);
    for (args, want) in [
        (vec!["--bits", "9"], "bits must be between 2 and 8"),
        (vec!["--bits", "1"], "bits must be between 2 and 8"),
        (vec!["--bits", "4", "--group", "7"], "does not divide"),
        (
            vec!["--bits", "4", "--method", "power", "--asym"],
            "symmetric only",
        ),
        (
            vec!["--bits", "4", "--method", "gptq"],
            "unknown quantization method",
        ),
        (
            vec!["--bits", "4", "--grid"],
            "--grid applies to --method power",
        ),
        (vec!["--bits", "4", "--scope", "row"], "unknown scope"),
        (
            vec!["--bits", "4", "--scope", "channel", "--group", "16"],
            "a group size is given but the scope is 'channel'",
        ),
    ] {
        let mut a = vec!["quantize", b, "-o", o];
        a.extend(args);
        let err = fails(&a);
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
    // An already quantized model, and a quantized model's dequantization of a plain one.
    ok(&["quantize", "-q", b, "-o", o, "--bits", "4"]);
    let again = dir.path().join("qq.safetensors");
    let err = fails(&["quantize", o, "-o", s(&again), "--bits", "4"]);
    assert!(err.contains("already quantized"), "{err}");
    let err = fails(&["dequantize", b, "-o", s(&again)]);
    assert!(err.contains("not an engram quantized model"), "{err}");
    assert!(!again.exists());
}

/// A non-float tensor is copied by default and refused with --quantize-all.
#[test]
fn non_float_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let w = engram_ckpt::ModelWriter::create(
        &p,
        vec![
            engram_ckpt::TensorSpec::new("w", engram_ckpt::DType::F32, &[4, 8]),
            engram_ckpt::TensorSpec::new("n", engram_ckpt::DType::I64, &[1]),
        ],
        &Default::default(),
    )
    .unwrap();
    w.write_f32(
        "w",
        &(0..32).map(|i| i as f32 / 7.0 - 2.0).collect::<Vec<_>>(),
    )
    .unwrap();
    w.write_bytes("n", &5i64.to_le_bytes()).unwrap();
    w.finish(&[]).unwrap();
    let out = dir.path().join("q.safetensors");
    let r: Value = serde_json::from_str(&ok(&[
        "quantize",
        s(&p),
        "-o",
        s(&out),
        "--bits",
        "8",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["report"]["quantized"], 1);
    assert_eq!(r["report"]["kept"], 1);
    std::fs::remove_file(&out).unwrap();
    let err = fails(&[
        "quantize",
        s(&p),
        "-o",
        s(&out),
        "--bits",
        "8",
        "--quantize-all",
    ]);
    assert!(
        err.contains("'n'") && err.contains("not a float tensor"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A quantized file whose entry lies (codes outside the grid, a wrong companion shape, a
/// negative scale, an unknown method) is refused with the tensor named; nothing is written.
#[test]
fn hostile_quantized_files_are_refused() {
    use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions};
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, meta: &str, qshape: &[usize], codes: &[u8], scale: f32| {
        let p = dir.path().join(name);
        let mut md = std::collections::BTreeMap::new();
        md.insert("engram.quant".to_string(), meta.to_string());
        let w = ModelWriter::create(
            &p,
            vec![
                TensorSpec::new("w.qweight", DType::U8, qshape),
                TensorSpec::new("w.scales", DType::F32, &[2, 1]),
            ],
            &WriteOptions {
                max_shard_bytes: None,
                metadata: md,
            },
        )
        .unwrap();
        w.write_bytes("w.qweight", codes).unwrap();
        w.write_f32("w.scales", &[0.5, scale]).unwrap();
        w.finish(&[]).unwrap();
        p
    };
    let meta = |method: &str, a: f32| {
        format!(
            r#"{{"format":1,"method":"{method}","bits":4,"scope":"channel","symmetric":true,"scale_dtype":"F32","tensors":{{"w":{{"shape":[2,4],"dtype":"F32","a":{a}}}}}}}"#
        )
    };
    let out = dir.path().join("out.safetensors");
    // A good file first: it dequantizes.
    let good = make(
        "good.safetensors",
        &meta("rtn", 1.0),
        &[2, 2],
        &[0x77, 0x87, 0x70, 0x7e],
        1.0,
    );
    ok(&["dequantize", "-q", s(&good), "-o", s(&out)]);
    std::fs::remove_file(&out).unwrap();
    for (file, m, shape, codes, scale, want) in [
        (
            "code.safetensors",
            meta("rtn", 1.0),
            vec![2, 2],
            vec![0xff, 0, 0, 0],
            1.0,
            "outside the 4-bit grid",
        ),
        (
            "shape.safetensors",
            meta("rtn", 1.0),
            vec![2, 3],
            vec![0; 6],
            1.0,
            "'w.qweight'",
        ),
        (
            "scale.safetensors",
            meta("rtn", 1.0),
            vec![2, 2],
            vec![0; 4],
            -1.0,
            "not a finite non-negative",
        ),
        (
            "method.safetensors",
            meta("gptq", 1.0),
            vec![2, 2],
            vec![0; 4],
            1.0,
            "unknown quantization method",
        ),
        (
            "exponent.safetensors",
            meta("power", 9.0),
            vec![2, 2],
            vec![0; 4],
            1.0,
            "exponent 9",
        ),
    ] {
        let p = make(file, &m, &shape, &codes, scale);
        let err = fails(&["dequantize", s(&p), "-o", s(&out)]);
        assert!(err.contains(want), "{file}: {err}");
        assert!(!out.exists(), "{file}");
    }
}

/// Zero points outside the grid, zero points on a symmetric grid, and companions of an
/// unlisted tensor are refused; f16 scales that underflow are refused at quantization.
#[test]
fn lying_zero_points_and_underflowing_scales() {
    use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let make = |name: &str, meta: &str, zero: Option<u8>, extra: Option<&str>| {
        let p = dir.path().join(name);
        let mut md = std::collections::BTreeMap::new();
        md.insert("engram.quant".to_string(), meta.to_string());
        let mut specs = vec![
            TensorSpec::new("w.qweight", DType::U8, &[2, 2]),
            TensorSpec::new("w.scales", DType::F32, &[2, 1]),
        ];
        if zero.is_some() {
            specs.push(TensorSpec::new("w.zeros", DType::U8, &[2, 1]));
        }
        if let Some(e) = extra {
            specs.push(TensorSpec::new(e, DType::U8, &[1]));
        }
        let opts = WriteOptions {
            max_shard_bytes: None,
            metadata: md,
        };
        let w = ModelWriter::create(&p, specs, &opts).unwrap();
        w.write_bytes("w.qweight", &[0x11; 4]).unwrap();
        w.write_f32("w.scales", &[0.5, 1.0]).unwrap();
        if let Some(z) = zero {
            w.write_bytes("w.zeros", &[z, 0]).unwrap();
        }
        if let Some(e) = extra {
            w.write_bytes(e, &[0]).unwrap();
        }
        w.finish(&[]).unwrap();
        p
    };
    let meta = |sym: bool| {
        format!(
            r#"{{"format":1,"method":"rtn","bits":4,"scope":"channel","symmetric":{sym},"scale_dtype":"F32","tensors":{{"w":{{"shape":[2,4],"dtype":"F32","a":1.0}}}}}}"#
        )
    };
    let good = make("good.safetensors", &meta(false), Some(3), None);
    ok(&["dequantize", "-q", s(&good), "-o", s(&out)]);
    std::fs::remove_file(&out).unwrap();
    for (p, want) in [
        (
            make("z.safetensors", &meta(false), Some(255), None),
            "zero point 255",
        ),
        (
            make("s.safetensors", &meta(true), Some(3), None),
            "zero points of a symmetric grid",
        ),
        (
            make("u.safetensors", &meta(true), None, Some("v.scales")),
            "which engram.quant does not list",
        ),
    ] {
        let err = fails(&["dequantize", s(&p), "-o", s(&out)]);
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
    // Weights of 1e-42: their f16 scale is 0.
    let tiny = dir.path().join("tiny.safetensors");
    let w = ModelWriter::create(
        &tiny,
        vec![TensorSpec::new("w", DType::F32, &[2, 4])],
        &Default::default(),
    )
    .unwrap();
    w.write_f32("w", &[1e-42; 8]).unwrap();
    w.finish(&[]).unwrap();
    let err = fails(&[
        "quantize",
        s(&tiny),
        "-o",
        s(&out),
        "--bits",
        "4",
        "--scale-dtype",
        "f16",
    ]);
    assert!(err.contains("underflows"), "{err}");
    assert!(!out.exists());
    ok(&["quantize", "-q", s(&tiny), "-o", s(&out), "--bits", "4"]);
}

/// A kept tensor named like a companion (`x.scales`) is refused before anything is written,
/// since `engram dequantize` would misread it.
#[test]
fn companion_names_of_kept_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let w = engram_ckpt::ModelWriter::create(
        &p,
        vec![
            engram_ckpt::TensorSpec::new("w", engram_ckpt::DType::F32, &[2, 4]),
            engram_ckpt::TensorSpec::new("x.scales", engram_ckpt::DType::F32, &[4]),
        ],
        &Default::default(),
    )
    .unwrap();
    w.write_f32("w", &[0.5; 8]).unwrap();
    w.write_f32("x.scales", &[1.0; 4]).unwrap();
    w.finish(&[]).unwrap();
    let out = dir.path().join("q.safetensors");
    let err = fails(&["quantize", s(&p), "-o", s(&out), "--bits", "4"]);
    assert!(
        err.contains("'x.scales'") && err.contains("rename it"),
        "{err}"
    );
    assert!(!out.exists());
}
