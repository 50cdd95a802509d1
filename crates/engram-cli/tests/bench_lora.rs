//! `engram bench lora --quick --no-mergekit` end to end: it makes its model without Python,
//! extracts at three ranks and writes results.json whose errors are consistent.

mod common;
use common::{engram, ok, s};
use serde_json::Value;

#[test]
fn quick_lora_bench_runs_without_python_and_reports_falling_errors() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("lora");
    let text = ok(&[
        "bench",
        "lora",
        "-q",
        "--quick",
        "--no-mergekit",
        "--runs",
        "1",
        "-o",
        s(&out),
    ]);
    assert!(
        text.contains("engram bench lora") && text.contains("results:"),
        "{text}"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(doc["engram_bench_lora"], 1);
    assert!(doc["mergekit"].is_null(), "{}", doc["mergekit"]);
    let modules = doc["model"]["modules"].as_u64().unwrap();
    assert!(modules > 0);
    let ranks = doc["ranks"].as_array().unwrap();
    assert_eq!(
        ranks
            .iter()
            .map(|r| r["rank"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [8, 32, 128]
    );
    let mut last = 1.0;
    for r in ranks {
        let e = &r["engram"];
        let measured = &e["measured"];
        assert_eq!(measured["modules"].as_u64(), Some(modules), "{r}");
        let err = measured["rel_error"].as_f64().unwrap();
        // What engram reports (from the exact spectrum) is what the written bf16 factors give,
        // up to their rounding.
        let reported = e["reported_rel_error"].as_f64().unwrap();
        assert!((err - reported).abs() < 2e-3, "{r}");
        assert!(err < last - 0.02, "errors must fall with the rank: {r}");
        last = err;
        assert!(e["median_s"].as_f64().unwrap() > 0.0 && r.get("mergekit").is_none());
        let adapter = out.join(format!("adapters/engram-r{}", r["rank"]));
        assert!(adapter.join("adapter_config.json").is_file());
    }
    // A second run reuses the model (its recipe is unchanged).
    let stamp = out.join("model/recipe.json");
    let before = std::fs::metadata(out.join("model/ft/model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(stamp.is_file());
    ok(&[
        "bench",
        "lora",
        "-q",
        "--quick",
        "--no-mergekit",
        "--runs",
        "1",
        "--ranks",
        "4",
        "-o",
        s(&out),
    ]);
    let after = std::fs::metadata(out.join("model/ft/model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the model was made again");
}

#[test]
fn a_missing_mergekit_is_named_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("lora");
    let missing = t.path().join("no-such-mergekit");
    let r = engram(&[
        "bench",
        "lora",
        "--quick",
        "--mergekit",
        s(&missing),
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no-such-mergekit") && err.contains("--no-mergekit"),
        "{err}"
    );
    assert!(!out.join("model").exists());
    let r = engram(&[
        "bench",
        "lora",
        "--quick",
        "--no-mergekit",
        "--ranks",
        "0",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.status.code(), Some(1));
}
