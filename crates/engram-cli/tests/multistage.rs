//! Multi-stage merges (`engram merge STAGES.yml -o OUTDIR`) end to end: the stages give the
//! same tensors as the merges run by hand, an up-to-date stage is skipped, a damaged or
//! changed one is merged again, and bad stage files are refused before anything is written.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{fails, ok, s};

const SHAPES: &[(&str, &[usize])] = &[("model.layers.0.w", &[8, 6]), ("model.norm.weight", &[6])];

/// Writes a model whose values are a hash of (seed, tensor, index), in [-1, 1).
fn write(path: &Path, seed: u64) -> PathBuf {
    let specs = SHAPES
        .iter()
        .map(|(n, sh)| TensorSpec::new(*n, DType::F32, sh))
        .collect();
    let w = ModelWriter::create(path, specs, &WriteOptions::default()).unwrap();
    for (k, (n, sh)) in SHAPES.iter().enumerate() {
        let v: Vec<f32> = (0..sh.iter().product::<usize>())
            .map(|i| {
                let mut x = (seed * 1_000_003 + k as u64 * 7919 + i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                x ^= x >> 29;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        w.write_f32(n, &v).unwrap();
    }
    w.finish(&[]).unwrap();
    path.to_path_buf()
}

/// base, m1, m2, m3 in `dir`.
fn family(dir: &Path) {
    for (i, n) in ["base", "m1", "m2", "m3"].iter().enumerate() {
        write(&dir.join(n), i as u64 + 1);
    }
}

fn stage1(lambda: f64) -> String {
    format!(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: m1\n  - model: m2\nparameters:\n  lambda: {lambda}\n"
    )
}

fn stage2(first: &str) -> String {
    format!(
        "merge_method: ties\nbase_model: base\nmodels:\n  - model: {first}\n  - model: m3\nparameters:\n  density: 0.5\n"
    )
}

fn stages_yml(dir: &Path, lambda: f64) -> PathBuf {
    let p = dir.join("stages.yml");
    let text = format!(
        "name: first\n{}---\nname: second\n{}",
        stage1(lambda),
        stage2("first")
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run(cfg: &Path, out: &Path) -> Value {
    serde_json::from_str(&ok(&["merge", s(cfg), "-o", s(out), "--json"])).unwrap()
}

/// Each stage's (name, action).
fn actions(r: &Value) -> Vec<(String, String)> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["name"].as_str().unwrap().to_string(),
                st["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Bytes and modification time of every file in a folder, by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (
                name,
                std::fs::read(e.path()).unwrap(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn two_stages_equal_the_merges_by_hand_and_reruns_skip() {
    let d = tempfile::tempdir().unwrap();
    family(d.path());
    let cfg = stages_yml(d.path(), 0.5);
    let out = d.path().join("out");
    let r = run(&cfg, &out);
    assert_eq!(r["engram_merge_stages"], 1);
    assert_eq!(
        actions(&r),
        pairs(&[("first", "merged"), ("second", "merged")])
    );
    assert_eq!(r["final"]["name"], "second");
    assert_eq!(r["stages"][0]["status"]["state"], "missing");
    assert_eq!(r["stages"][1]["inputs"], serde_json::json!(["first"]));
    assert_eq!(r["stages"][1]["report"]["method"], "ties");

    // By hand: the same two configs, the second naming the first's output.
    let hand1 = d.path().join("hand1");
    let c1 = d.path().join("one.yml");
    std::fs::write(&c1, stage1(0.5)).unwrap();
    ok(&["merge", "-q", s(&c1), "-o", s(&hand1)]);
    let c2 = d.path().join("two.yml");
    std::fs::write(&c2, stage2(s(&hand1))).unwrap();
    let hand2 = d.path().join("hand2");
    ok(&["merge", "-q", s(&c2), "-o", s(&hand2)]);
    for (stage, hand) in [("first", &hand1), ("second", &hand2)] {
        let (a, b) = (
            Model::open(&out.join(stage)).unwrap(),
            Model::open(hand).unwrap(),
        );
        // Tensors byte for byte (the metadata differs: it records each command line).
        assert!(
            a.same_tensors(&b),
            "stage {stage} differs from the merge by hand"
        );
        let (x, y) = (
            a.require("model.layers.0.w").unwrap(),
            b.require("model.layers.0.w").unwrap(),
        );
        assert_eq!(x.bytes, y.bytes);
    }
    // The second stage really used the first's output (not, say, the base).
    let base = Model::open(&d.path().join("base")).unwrap();
    assert!(
        !Model::open(&out.join("second"))
            .unwrap()
            .same_tensors(&base)
    );

    // A rerun skips both stages and touches no file.
    let before = (snapshot(&out.join("first")), snapshot(&out.join("second")));
    let r = run(&cfg, &out);
    assert_eq!(
        actions(&r),
        pairs(&[("first", "skipped"), ("second", "skipped")])
    );
    assert_eq!(r["stages"][0]["status"]["state"], "up_to_date");
    assert!(r["stages"][0]["report"].is_null());
    assert_eq!(
        before,
        (snapshot(&out.join("first")), snapshot(&out.join("second")))
    );
    let text = ok(&["merge", s(&cfg), "-o", s(&out)]);
    assert!(
        text.contains("stage first: up to date, skipped")
            && text.contains("stage second: up to date, skipped"),
        "{text}"
    );
}

#[test]
fn a_damaged_or_changed_stage_is_merged_again() {
    let d = tempfile::tempdir().unwrap();
    family(d.path());
    let cfg = stages_yml(d.path(), 0.5);
    let out = d.path().join("out");
    run(&cfg, &out);
    let file = out.join("first/model.safetensors");
    let good = std::fs::read(&file).unwrap();
    let second = snapshot(&out.join("second"));

    // Truncated: the first stage is merged again, into the same tensors, so the second
    // (whose input is unchanged) stays up to date.
    std::fs::write(&file, &good[..good.len() - 10]).unwrap();
    let r = run(&cfg, &out);
    assert_eq!(
        actions(&r),
        pairs(&[("first", "merged"), ("second", "skipped")])
    );
    assert_eq!(r["stages"][0]["status"]["state"], "incomplete");
    let again = Model::open(&out.join("first")).unwrap();
    again.verify().unwrap();
    assert_eq!(snapshot(&out.join("second")), second);

    // Stage 1's config changed: both stages are merged again, and equal a fresh run.
    let cfg = stages_yml(d.path(), 0.7);
    let text = ok(&["merge", s(&cfg), "-o", s(&out)]);
    assert!(
        text.contains("stage first: merged (config, options or inputs changed)")
            && text.contains("stage second: merged (config, options or inputs changed)"),
        "{text}"
    );
    let fresh = d.path().join("fresh");
    run(&cfg, &fresh);
    for stage in ["first", "second"] {
        let a = Model::open(&out.join(stage)).unwrap();
        assert!(
            a.same_tensors(&Model::open(&fresh.join(stage)).unwrap()),
            "{stage}"
        );
    }
    assert!(
        !Model::open(&out.join("first"))
            .unwrap()
            .same_tensors(&again)
    );

    // --stage runs a stage and what it needs only.
    let only = d.path().join("only");
    let r: Value = serde_json::from_str(&ok(&[
        "merge",
        s(&cfg),
        "-o",
        s(&only),
        "--stage",
        "first",
        "--json",
    ]))
    .unwrap();
    assert_eq!(actions(&r), pairs(&[("first", "merged")]));
    assert!(!only.join("second").exists());
}

#[test]
fn bad_stage_files_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    family(d.path());
    let out = d.path().join("out");
    let bad = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = fails(&["merge", s(&p), "-o", s(&out)]);
        assert!(!out.exists(), "{name}: {e}");
        e
    };
    let cyc = format!("name: a\n{}---\nname: b\n{}", stage2("b"), stage2("a"));
    let e = bad("cycle.yml", &cyc);
    assert!(e.contains("cycle") && e.contains("a -> b -> a"), "{e}");
    let e = bad(
        "unknown.yml",
        &format!(
            "name: a\n{}---\nname: b\n{}",
            stage1(0.5),
            stage2("nowhere")
        ),
    );
    assert!(e.contains("stage 'b'") && e.contains("'nowhere'"), "{e}");
    let e = bad(
        "escape.yml",
        &format!("name: ../x\n{}---\nname: b\n{}", stage1(0.5), stage2("m1")),
    );
    assert!(
        e.contains("stage name '../x'") && e.contains("separator"),
        "{e}"
    );
    assert!(!d.path().join("x").exists());
    let e = bad(
        "twice.yml",
        &format!("name: a\n{}---\nname: a\n{}", stage1(0.5), stage2("m1")),
    );
    assert!(e.contains("'a' is used twice"), "{e}");
    let e = bad(
        "unnamed.yml",
        &format!("{}---\nname: b\n{}", stage1(0.5), stage2("m1")),
    );
    assert!(e.contains("document 1") && e.contains("no 'name'"), "{e}");
    // A bad key in the second stage is found before the first runs.
    let e = bad(
        "key.yml",
        &format!(
            "name: a\n{}---\nname: b\nslices: []\n{}",
            stage1(0.5),
            stage2("a")
        ),
    );
    assert!(e.contains("stage 'b'") && e.contains("slices"), "{e}");
    let good = d.path().join("good.yml");
    std::fs::write(
        &good,
        format!("name: a\n{}---\nname: b\n{}", stage1(0.5), stage2("a")),
    )
    .unwrap();
    let e = fails(&["merge", s(&good), "-o", s(&out), "--stage", "zz"]);
    assert!(e.contains("--stage 'zz'") && e.contains("a, b"), "{e}");
    let e = fails(&["merge", s(&good), "-o", s(&out.join("x.safetensors"))]);
    assert!(e.contains("multi-stage"), "{e}");
    assert!(!out.exists());
}

/// A model retrained in place under the same path runs the stages that read it again; a
/// folder of the user's under a stage's name is never replaced.
#[test]
fn a_changed_input_reruns_and_a_users_folder_is_kept() {
    let d = tempfile::tempdir().unwrap();
    family(d.path());
    let cfg = stages_yml(d.path(), 0.5);
    let out = d.path().join("out");
    run(&cfg, &out);
    assert!(
        actions(&run(&cfg, &out))
            .iter()
            .all(|(_, a)| a == "skipped")
    );
    write(&d.path().join("m3"), 42);
    let r = run(&cfg, &out);
    assert_eq!(
        actions(&r),
        [
            ("first".to_string(), "skipped".to_string()),
            ("second".to_string(), "merged".to_string())
        ]
    );
    // A model no stage wrote, where stage `first` writes.
    let other = d.path().join("other");
    write(&other.join("first"), 7);
    let before = std::fs::read(other.join("first/model.safetensors")).unwrap();
    let e = fails(&["merge", s(&cfg), "-o", s(&other)]);
    assert!(e.contains("no stage wrote"), "{e}");
    assert_eq!(
        std::fs::read(other.join("first/model.safetensors")).unwrap(),
        before
    );
}
