//! `engram study merge8 --quick` end to end on the real data sets (skipped where they are
//! not installed, unless ENGRAM_REQUIRE_DATA=1 as in CI).

use std::process::Output;

mod common;
use common::{engram, s};

fn data_missing(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("not found (looked in") {
        assert!(
            std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
            "ENGRAM_REQUIRE_DATA=1 but a data set is missing: {err}"
        );
        eprintln!("skipping: {err}");
        return true;
    }
    false
}

#[test]
fn merge8_quick_runs_end_to_end_and_reuses_its_models() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m8");
    let first = engram(&["study", "merge8", "--quick", "-q", "-o", s(&out)]);
    if data_missing(&first) {
        return;
    }
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let methods: Vec<&str> = r["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    for m in [
        "Base + probe head",
        "Fine-tuned",
        "Task Arithmetic",
        "TIES",
        "TALL masks (TA)",
        "Consensus TA (k = 2)",
        "Consensus TIES (k = 2)",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    assert_eq!(r["tasks"].as_array().unwrap().len(), 8);
    for m in r["methods"].as_array().unwrap() {
        let accs = m["test_accuracy"].as_array().unwrap();
        assert_eq!(accs.len(), 8);
        assert!(
            accs.iter()
                .all(|a| (0.0..=100.0).contains(&a.as_f64().unwrap()))
        );
    }
    // The fine-tuned row is the normalizer.
    let ft = &r["methods"][1];
    assert!((ft["normalized_accuracy"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    // Fine-tuning helps over the probe on average even at this size.
    assert!(
        ft["mean_accuracy"].as_f64().unwrap() > r["methods"][0]["mean_accuracy"].as_f64().unwrap()
    );
    let st = &r["storage"][0];
    assert_eq!(st["bit_exact"], true);
    assert!(st["masks_coded_bytes"].as_u64().unwrap() < st["masks_packed_bytes"].as_u64().unwrap());
    assert!(
        st["bundle_packed_bytes"].as_u64().unwrap() < st["checkpoints_bytes"].as_u64().unwrap()
    );
    let masks = &r["masks"][0];
    let hist: u64 = masks["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(hist, masks["params"].as_u64().unwrap());
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("TALL masks"));
    assert_eq!(r["reused_steps"].as_array().unwrap().len(), 0);

    // A rerun with the same settings reuses every trained model and gives the same numbers.
    let again = engram(&["study", "merge8", "--quick", "-q", "-o", s(&out)]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let r2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r2["reused_steps"].as_array().unwrap().len(), 17);
    assert_eq!(r2["methods"], r["methods"]);

    // Other settings in the same folder are refused; a foreign folder is never deleted.
    let other = engram(&[
        "study",
        "merge8",
        "--quick",
        "-q",
        "--seed",
        "5",
        "-o",
        s(&out),
    ]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("--overwrite"));
    let foreign = d.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "x").unwrap();
    let refused = engram(&[
        "study",
        "merge8",
        "--quick",
        "-q",
        "--overwrite",
        "-o",
        s(&foreign),
    ]);
    assert!(!refused.status.success());
    assert!(foreign.join("keep.txt").is_file());
}

#[test]
fn bench_finetune_quick_compares_every_method_and_judges_the_claims() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ft");
    let r = engram(&["bench", "finetune", "--quick", "-q", "--out", s(&out)]);
    if data_missing(&r) {
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let summary = j["summary"].as_array().unwrap();
    let methods: Vec<&str> = summary
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    for m in [
        "full",
        "head only",
        "lora r8",
        "lift r8",
        "top-|W| r8",
        "random-K r8",
        "kappatune lowest N=3",
        "expand 1+3 lerp λ=0.1",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    let get = |t: &str, m: &str| {
        summary
            .iter()
            .find(|x| x["target"] == t && x["method"] == m)
            .unwrap()
    };
    // Same budget: LIFT's K entries per matrix equal LoRA r = 8's parameters. Optimizer state:
    // two f32 moments per dense value (the output layer's, LoRA's factors, every value of full
    // fine-tuning) and 12 bytes per sparse LIFT entry (an index besides its moments).
    let (lift, lora, full) = (
        get("mnist", "lift r8"),
        get("mnist", "lora r8"),
        get("mnist", "full"),
    );
    assert_eq!(lift["trainable"], lora["trainable"]);
    let ob = |m: &serde_json::Value| m["optimizer_bytes"].as_u64().unwrap();
    let tr = |m: &serde_json::Value| m["trainable"].as_u64().unwrap();
    let head = tr(get("mnist", "head only"));
    assert_eq!(ob(full), 8 * tr(full));
    assert_eq!(ob(lora), 8 * tr(lora));
    assert_eq!(ob(lift), 12 * (tr(lift) - head) + 8 * head);
    assert!(ob(lift) < ob(full) / 3);
    // The head alone keeps the source task exactly.
    let head = get("mnist", "head only");
    let before = j["source_before"][0].as_f64().unwrap();
    assert_eq!(head["source_accuracy"]["mean"].as_f64().unwrap(), before);
    // Every claim is judged on both targets, with its evidence.
    let claims = j["claims"].as_array().unwrap();
    assert!(claims.len() >= 12, "{claims:?}");
    assert!(
        claims
            .iter()
            .all(|c| c["evidence"].as_str().unwrap().contains("source"))
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("class=\"point\"") && html.contains("Claims"));
    // Merged LoRA is the same function: same accuracies.
    let m = &lora["merged_target_accuracy"]["mean"];
    assert!((m.as_f64().unwrap() - lora["target_accuracy"]["mean"].as_f64().unwrap()).abs() < 0.5);
}
