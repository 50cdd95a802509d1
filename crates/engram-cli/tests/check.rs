//! `engram check` end to end through the built binary: each kind of difference is found, and
//! what it says the merge does is what `engram merge` then does on the same models.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{engram, fails, ok, s};

/// Writes a model folder of float tensors (name, dtype, shape) holding `offset + index`.
fn write(path: &Path, tensors: &[(&str, DType, &[usize])], offset: f32) -> PathBuf {
    let specs = tensors
        .iter()
        .map(|(n, dt, sh)| TensorSpec::new(*n, *dt, sh))
        .collect();
    let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
    for (n, _, sh) in tensors {
        let v: Vec<f32> = (0..sh.iter().product::<usize>())
            .map(|i| offset + i as f32)
            .collect();
        w.write_f32(n, &v).unwrap();
    }
    w.finish(&[]).unwrap();
    path.to_path_buf()
}

const F: DType = DType::F32;

/// `engram check ARGS --json`: the exit status and the report.
fn check(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let out = engram(&all);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {err}"));
    assert_eq!(v["engram_check"], 1);
    (out.status.code().unwrap(), v["report"].clone())
}

/// The findings' (kind, tensor or file, action).
fn findings(r: &Value) -> Vec<(String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let what = if f["tensor"].is_null() {
                &f["file"]
            } else {
                &f["tensor"]
            };
            (s(&f["kind"]), s(what), s(&f["action"]))
        })
        .collect()
}

fn t(k: &str, w: &str, a: &str) -> (String, String, String) {
    (k.into(), w.into(), a.into())
}

fn values(p: &Path, name: &str) -> Vec<f32> {
    Model::open(p)
        .unwrap()
        .require(name)
        .unwrap()
        .to_f32()
        .unwrap()
}

#[test]
fn identical_models_are_compatible() {
    let d = tempfile::tempdir().unwrap();
    let ts: &[(&str, DType, &[usize])] =
        &[("model.embed_tokens.weight", F, &[10, 4]), ("w", F, &[3])];
    let a = write(&d.path().join("a"), ts, 0.0);
    let b = write(&d.path().join("b"), ts, 1.0);
    let (code, r) = check(&[s(&a), s(&b)]);
    assert_eq!(code, 0);
    assert_eq!(r["compatible"], true);
    assert!(findings(&r).is_empty());
    assert_eq!(r["vocab_sizes"], serde_json::json!([10, 10]));
    let text = ok(&["check", s(&a), s(&b)]);
    assert!(text.contains("merge-compatible: no differences"), "{text}");
}

#[test]
fn a_missing_tensor_fails_the_merge_unless_allowed_with_a_base() {
    let d = tempfile::tempdir().unwrap();
    let base = write(
        &d.path().join("base"),
        &[("w", F, &[2, 3]), ("x", F, &[4])],
        0.0,
    );
    let a = write(
        &d.path().join("a"),
        &[("w", F, &[2, 3]), ("x", F, &[4])],
        1.0,
    );
    let b = write(
        &d.path().join("b"),
        &[("w", F, &[2, 3]), ("y", F, &[2])],
        2.0,
    );
    // Without a base: b lacks x (an error even with --allow-missing: no base to keep it
    // from), and y is not in the template.
    let (code, r) = check(&[s(&a), s(&b)]);
    assert_eq!(code, 3);
    assert_eq!(
        findings(&r),
        [
            t("missing_tensor", "x", "error"),
            t("extra_tensor", "y", "error")
        ]
    );
    assert_eq!(r["findings"][0]["values"], serde_json::json!(["[4]", null]));
    let (code, r) = check(&["--allow-missing", s(&a), s(&b)]);
    assert_eq!(code, 3);
    assert_eq!(
        findings(&r),
        [
            t("missing_tensor", "x", "error"),
            t("extra_tensor", "y", "leave_out")
        ]
    );
    let out = d.path().join("o1");
    let e = fails(&[
        "merge",
        "--method",
        "linear",
        "--allow-missing",
        s(&a),
        s(&b),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("'x'") && e.contains("missing"), "{e}");
    // With the base: the merge refuses, and with --allow-missing keeps the base's x and
    // leaves y out, as check says.
    let (code, r) = check(&["--base", s(&base), s(&a), s(&b)]);
    assert_eq!(code, 3);
    assert_eq!(findings(&r)[0], t("missing_tensor", "x", "error"));
    let e = fails(&[
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        s(&base),
        s(&a),
        s(&b),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("'x'") && e.contains("missing"), "{e}");
    assert!(!out.exists());
    let (code, r) = check(&["--base", s(&base), "--allow-missing", s(&a), s(&b)]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        findings(&r),
        [
            t("missing_tensor", "x", "keep_base"),
            t("extra_tensor", "y", "leave_out")
        ]
    );
    let rep: Value = serde_json::from_str(&ok(&[
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        s(&base),
        "--allow-missing",
        s(&a),
        s(&b),
        "-o",
        s(&out),
        "--json",
    ]))
    .unwrap();
    assert_eq!(rep["kept_from_base"], serde_json::json!(["x"]));
    assert_eq!(rep["ignored"], serde_json::json!(["y"]));
    assert_eq!(values(&out, "x"), values(&base, "x"));
    assert!(Model::open(&out).unwrap().get("y").is_none());
}

#[test]
fn shape_and_vocabulary_mismatches_are_errors_the_merge_keeps() {
    let d = tempfile::tempdir().unwrap();
    let a = write(
        &d.path().join("a"),
        &[
            ("model.embed_tokens.weight", F, &[100, 8]),
            ("w", F, &[2, 3]),
        ],
        0.0,
    );
    let b = write(
        &d.path().join("b"),
        &[
            ("model.embed_tokens.weight", F, &[104, 8]),
            ("w", F, &[3, 2]),
        ],
        0.0,
    );
    std::fs::write(a.join("config.json"), r#"{"vocab_size": 100}"#).unwrap();
    std::fs::write(b.join("config.json"), r#"{"vocab_size": 104}"#).unwrap();
    let (code, r) = check(&["--allow-missing", s(&a), s(&b)]);
    assert_eq!(code, 3);
    assert_eq!(
        findings(&r),
        [
            t("vocab_size", "model.embed_tokens.weight", "error"),
            t("shape", "w", "error"),
            t("vocab_size", "config.json", "template_file"),
        ]
    );
    let f = &r["findings"][0];
    assert_eq!(f["values"], serde_json::json!(["100", "104"]));
    let why = f["behaviour"].as_str().unwrap();
    assert!(
        why.contains("vocabulary sizes differ (100 vs 104)") && why.contains("align"),
        "{why}"
    );
    assert_eq!(
        r["findings"][1]["values"],
        serde_json::json!(["[2, 3]", "[3, 2]"])
    );
    assert_eq!(r["vocab_sizes"], serde_json::json!([100, 104]));
    // The merge refuses, --allow-missing or not: the engine pads nothing.
    let out = d.path().join("o");
    let e = fails(&[
        "merge",
        "--method",
        "linear",
        "--allow-missing",
        s(&a),
        s(&b),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("shape"),
        "{e}"
    );
    assert!(!out.exists());
    let text = engram(&["check", s(&a), s(&b)]);
    assert_eq!(text.status.code(), Some(3));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("not merge-compatible") && text.contains("100 vs 104"),
        "{text}"
    );
}

#[test]
fn tokenizer_files_differ_and_the_output_carries_the_templates() {
    let d = tempfile::tempdir().unwrap();
    let ts: &[(&str, DType, &[usize])] = &[("w", F, &[4])];
    let a = write(&d.path().join("a"), ts, 0.0);
    let b = write(&d.path().join("b"), ts, 2.0);
    std::fs::write(
        a.join("tokenizer.json"),
        r#"{"model": {"vocab": {"a": 0}}}"#,
    )
    .unwrap();
    std::fs::write(
        b.join("tokenizer.json"),
        r#"{"model": {"vocab": {"b": 0}}}"#,
    )
    .unwrap();
    std::fs::write(a.join("merges.txt"), "a b\n").unwrap();
    std::fs::write(a.join("vocab.json"), "{}").unwrap();
    std::fs::write(b.join("vocab.json"), "{}").unwrap();
    let (code, r) = check(&[s(&a), s(&b)]);
    assert_eq!(code, 0, "warnings only: {r}");
    assert_eq!(
        findings(&r),
        [
            t("tokenizer_file", "tokenizer.json", "template_file"),
            t("tokenizer_file", "merges.txt", "template_file"),
        ]
    );
    let h = &r["findings"][0]["values"];
    assert!(
        h[0].as_str().unwrap().starts_with("fnv1a64:") && h[0] != h[1],
        "{h}"
    );
    assert!(r["findings"][1]["values"][1].is_null());
    let text = ok(&["check", s(&b), s(&a)]);
    assert!(text.contains("merge-compatible: 2 warning(s)"), "{text}");
    assert!(text.contains("has no merges.txt"), "{text}");
    let out = d.path().join("o");
    ok(&[
        "merge",
        "-q",
        "--method",
        "linear",
        s(&a),
        s(&b),
        "-o",
        s(&out),
    ]);
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(a.join("tokenizer.json")).unwrap()
    );
    assert_eq!(values(&out, "w"), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn dtypes_that_differ_merge_in_f32_into_the_templates_dtype() {
    let d = tempfile::tempdir().unwrap();
    let a = write(
        &d.path().join("a"),
        &[("w", DType::BF16, &[4]), ("v", F, &[2])],
        0.0,
    );
    let b = write(&d.path().join("b"), &[("w", F, &[4]), ("v", F, &[2])], 2.0);
    let (code, r) = check(&[s(&a), s(&b)]);
    assert_eq!(code, 0);
    assert_eq!(findings(&r), [t("dtype", "w", "convert")]);
    assert_eq!(
        r["findings"][0]["values"],
        serde_json::json!(["BF16", "F32"])
    );
    let why = r["findings"][0]["behaviour"].as_str().unwrap();
    assert!(why.contains("f32") && why.contains("BF16"), "{why}");
    let out = d.path().join("o");
    ok(&[
        "merge",
        "-q",
        "--method",
        "linear",
        s(&a),
        s(&b),
        "-o",
        s(&out),
    ]);
    let m = Model::open(&out).unwrap();
    assert_eq!(m.require("w").unwrap().dtype(), DType::BF16);
    assert_eq!(values(&out, "w"), [1.0, 2.0, 3.0, 4.0]);
    // With b as the template, the output is F32.
    let out2 = d.path().join("o2");
    ok(&[
        "merge",
        "-q",
        "--method",
        "linear",
        s(&b),
        s(&a),
        "-o",
        s(&out2),
    ]);
    assert_eq!(Model::open(&out2).unwrap().require("w").unwrap().dtype(), F);
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let a = write(&d.path().join("a"), &[("w", F, &[4])], 0.0);
    let nowhere = d.path().join("nowhere");
    let e = fails(&["check", s(&a), s(&nowhere)]);
    assert!(e.contains(s(&nowhere)), "{e}");
    let e = fails(&["check", "--base", s(&nowhere), s(&a), s(&a)]);
    assert!(e.contains(s(&nowhere)), "{e}");
    // One model needs a base to compare with; a base and one model is a check.
    let e = fails(&["check", s(&a)]);
    assert!(e.contains("two models, or a base and a model"), "{e}");
    let b = write(&d.path().join("b"), &[("w", F, &[4])], 1.0);
    let out = engram(&["check", "--base", s(&a), s(&b)]);
    assert_eq!(out.status.code(), Some(0), "a base and one model");
    assert_eq!(
        engram(&["check"]).status.code(),
        Some(2),
        "no model is a usage error"
    );
}
