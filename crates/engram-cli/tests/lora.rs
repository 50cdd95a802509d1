// LoRA (arXiv 2106.09685); card shared/methods/selective_finetuning.md, "LoRA (baseline)".
// `engram lora extract|apply|merge` end to end through the built binary.

//! The adapter folder is PEFT's, extraction at full rank rebuilds the fine-tune, merging
//! adapters through task vectors equals merging their applied models by hand, and what cannot
//! be done is refused before anything is written.

use engram_ckpt::Model;
use serde_json::Value;
use std::path::Path;

mod common;
use common::{fails, family, ok, s};

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("JSON report")
}

fn f32s(m: &Model, name: &str) -> Vec<f32> {
    m.require(name).unwrap().to_f32().unwrap()
}

fn bytes<'a>(m: &'a Model, name: &str) -> &'a [u8] {
    m.require(name).unwrap().bytes
}

#[test]
fn full_rank_extraction_rebuilds_every_extracted_matrix() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 1);
    let ad = d.path().join("adapter");
    // Rank 512 exceeds every matrix side of the tiny family: ranks are per module.
    let rep = json(&[
        "lora",
        "extract",
        "--base",
        s(&base),
        "--model",
        s(&fts[0]),
        "-r",
        "512",
        "--dtype",
        "f32",
        "-o",
        s(&ad),
        "--json",
    ]);
    assert_eq!(rep["engram_lora_extract"], 1);
    let r = &rep["report"];
    assert!(r["energy"].as_f64().unwrap() > 1.0 - 1e-9, "{r}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert!(!cfg["rank_pattern"].as_object().unwrap().is_empty());
    let left: Vec<&str> = r["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["tensor"].as_str().unwrap())
        .collect();
    assert!(left.contains(&"model.embed_tokens.weight"), "{left:?}");
    let out = d.path().join("merged");
    let rep = json(&[
        "lora",
        "apply",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--dtype",
        "f32",
        "-o",
        s(&out),
        "--json",
    ]);
    let applied = rep["report"]["applied"].as_array().unwrap();
    assert_eq!(applied.len(), r["modules"].as_array().unwrap().len());
    let (m, ft, b) = (
        Model::open(&out).unwrap(),
        Model::open(&fts[0]).unwrap(),
        Model::open(&base).unwrap(),
    );
    m.verify().unwrap();
    assert!(m.metadata()["engram.command"].contains("lora apply"));
    for name in b.names() {
        let got = f32s(&m, name);
        if applied.iter().any(|a| a["tensor"] == name) {
            let want = f32s(&ft, name);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            // bf16 fine-tune values around 0.1: within a few f32 ulps of the SVD's rounding.
            assert!(worst < 1e-5, "{name}: {worst}");
        } else {
            assert_eq!(got, f32s(&b, name), "{name} must be the base's");
        }
    }
    // The side files of the base (config.json) come along.
    assert!(out.join("config.json").exists());
}

#[test]
fn merging_adapters_through_task_vectors_equals_merging_their_applied_models() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 2);
    let mut ads = Vec::new();
    let mut applied = Vec::new();
    for (i, ft) in fts.iter().enumerate() {
        let ad = d.path().join(format!("a{i}"));
        ok(&[
            "lora",
            "extract",
            "-q",
            "--base",
            s(&base),
            "--model",
            s(ft),
            "-r",
            "4",
            "-o",
            s(&ad),
        ]);
        let full = d.path().join(format!("full{i}"));
        ok(&[
            "lora",
            "apply",
            "-q",
            "--base",
            s(&base),
            "--adapter",
            s(&ad),
            "--dtype",
            "f32",
            "-o",
            s(&full),
        ]);
        ads.push(ad);
        applied.push(full);
    }
    let via_lora = d.path().join("via-lora");
    ok(&[
        "lora",
        "merge",
        "-q",
        "--base",
        s(&base),
        "--method",
        "ties",
        "--density",
        "0.5",
        "--lambda",
        "0.8",
        s(&ads[0]),
        s(&ads[1]),
        "-o",
        s(&via_lora),
    ]);
    let by_hand = d.path().join("by-hand");
    ok(&[
        "merge",
        "-q",
        "--method",
        "ties",
        "--base",
        s(&base),
        "--density",
        "0.5",
        "--lambda",
        "0.8",
        "--out-dtype",
        "bf16",
        s(&applied[0]),
        s(&applied[1]),
        "-o",
        s(&by_hand),
    ]);
    let (x, y) = (
        Model::open(&via_lora).unwrap(),
        Model::open(&by_hand).unwrap(),
    );
    assert_eq!(x.names().collect::<Vec<_>>(), y.names().collect::<Vec<_>>());
    for n in x.names() {
        assert_eq!(bytes(&x, n), bytes(&y, n), "{n}");
    }
    // No temporary folder is left beside the output.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Recombination into one adapter: the sum of the two at their stacked rank is exact.
    let re = d.path().join("re");
    let rep = json(&[
        "lora",
        "merge",
        "--base",
        s(&base),
        "--rank",
        "8",
        "--weights",
        "0.5,-1",
        s(&ads[0]),
        s(&ads[1]),
        "-o",
        s(&re),
        "--json",
    ]);
    assert!(rep["report"]["energy"].as_f64().unwrap() > 1.0 - 1e-9);
    let re4 = d.path().join("re4");
    let rep = json(&[
        "lora",
        "merge",
        "--base",
        s(&base),
        "--rank",
        "4",
        s(&ads[0]),
        s(&ads[1]),
        "-o",
        s(&re4),
        "--json",
    ]);
    let e = rep["report"]["energy"].as_f64().unwrap();
    assert!(e < 1.0 && e > 0.5, "{e}");
}

#[test]
fn bad_requests_are_refused_with_the_reason_and_nothing_written() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 1);
    let ad = d.path().join("a");
    let out = d.path().join("out");
    let ft = s(&fts[0]);
    let e = fails(&[
        "lora",
        "extract",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "0",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("at least 1"), "{e}");
    let e = fails(&[
        "lora",
        "extract",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "2",
        "--targets",
        "nope*",
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("nope*") && e.contains("matches no linear weight"),
        "{e}"
    );
    let e = fails(&[
        "lora",
        "extract",
        "--base",
        s(&base),
        "--model",
        s(&base),
        "-r",
        "2",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("nothing to extract"), "{e}");
    assert!(!out.exists());
    ok(&[
        "lora",
        "extract",
        "-q",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "2",
        "-o",
        s(&ad),
    ]);
    // --dtype is required for apply (clap's usage error, exit 2).
    let o = common::engram(&[
        "lora",
        "apply",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "-o",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = fails(&[
        "lora",
        "apply",
        "--base",
        s(&base),
        "--adapter",
        s(&base),
        "--dtype",
        "f32",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("adapter_config.json"), "{e}");
    let e = fails(&[
        "lora",
        "apply",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--dtype",
        "i8",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("not a float type"), "{e}");
    // A config that lies about the rank.
    let cfg = ad.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"r\": 2", "\"r\": 3")).unwrap();
    let e = fails(&[
        "lora",
        "apply",
        "--base",
        s(&base),
        "--adapter",
        s(&ad),
        "--dtype",
        "f32",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("rank 2") && e.contains("rank 3"), "{e}");
    std::fs::write(&cfg, text).unwrap();
    let e = fails(&["lora", "merge", "--base", s(&base), s(&ad), "-o", s(&out)]);
    assert!(e.contains("--method") && e.contains("--rank"), "{e}");
    // The merge's checks run before the adapters are expanded: nothing is written.
    let e = fails(&[
        "lora",
        "merge",
        "--base",
        s(&base),
        "--method",
        "linear",
        s(&ad),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("takes no base"), "{e}");
    let e = fails(&[
        "lora",
        "merge",
        "--base",
        s(&base),
        "--method",
        "ties",
        "--density",
        "2",
        s(&ad),
        s(&ad),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("density"), "{e}");
    let e = fails(&[
        "lora",
        "extract",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "2",
        "--exclude",
        "zzz*",
        "-o",
        s(&out),
    ]);
    assert!(e.contains("zzz*") && e.contains("matches no module"), "{e}");
    let hidden: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    assert!(!out.exists());
}

#[test]
fn an_adapter_is_replaced_as_a_whole() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 1);
    let ad = d.path().join("a");
    let ft = s(&fts[0]);
    ok(&[
        "lora",
        "extract",
        "-q",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "2",
        "-o",
        s(&ad),
    ]);
    std::fs::write(ad.join("README.md"), "mine").unwrap();
    ok(&[
        "lora",
        "extract",
        "-q",
        "--base",
        s(&base),
        "--model",
        ft,
        "-r",
        "3",
        "-o",
        s(&ad),
    ]);
    let a = engram_ckpt::peft::Adapter::open(Path::new(&ad)).unwrap();
    assert_eq!(a.config.r, 3);
    assert!(a.modules.iter().all(|m| m.rank == 3));
    assert_eq!(
        std::fs::read_to_string(ad.join("README.md")).unwrap(),
        "mine"
    );
}
