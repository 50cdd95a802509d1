//! `engram adapt` and `engram adapters` end to end on synthetic blob images: a run file in,
//! results.json out (atomically, in the run's folder), the same bytes on a second run, and
//! bad run files refused with the key named.

mod common;
use common::{fails, ok, s};

const RUN: &str = r#"
name = "t"
seed = 2
[scenario]
kind = "corruption"
dataset = "blobs"
corruptions = ["contrast", "fog", "gaussian_noise"]
rounds = 2
[scenario.blobs]
dim = 144
classes = 3
train-per-class = 200
test-per-class = 40
separation = 2.0
[model]
kind = "bn-cnn"
channels = [4, 6]
hidden = 8
[source]
epochs = 2
batch-size = 32
lr = 0.01
[stream]
batch = 30
[adapter]
name = "cotta"
augmentations = 2
ap = 0.99
"#;

#[test]
fn adapt_runs_and_repeats_itself() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let out = d.path().join("runs");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "adapt",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 6);
    assert_eq!(v["domains"][4], "round 2: fog 5");
    assert_eq!(v["params"]["augmentations"], 2);
    let file = out.join("t/results.json");
    let first = std::fs::read(&file).unwrap();
    ok(&["adapt", "-q", "--config", s(&cfg), "-o", s(&out)]);
    let a: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(a["errors"], b["errors"]);
}

#[test]
fn bad_run_files_are_refused_with_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    for (from, to, want) in [
        ("ap = 0.99", "ap = 0.99\nrestore = 2.0", "restore"),
        (
            "name = \"cotta\"",
            "name = \"cota\"",
            "unknown adapter 'cota'",
        ),
        ("rounds = 2", "rounds = 0", "rounds"),
        ("batch = 30", "batch = 0", "batch"),
        (
            "corruptions = [\"contrast\",",
            "corruptions = [\"contrast2\",",
            "contrast2",
        ),
        (
            "corruptions = [\"contrast\",",
            "corruptions = [\"fog\",",
            "twice",
        ),
        ("ap = 0.99", "ap = nan", "adapter.ap is not a finite number"),
        ("ap = 0.99", "ap = 1.5", "[0, 1]"),
        ("batch = 30", "batch = 30\ndirichlet = 0.5", "no effect"),
        (
            "rounds = 2",
            "rounds = 2\ntrain-per-task = 5",
            "train-per-task",
        ),
        (
            "epochs = 2",
            "epochs = 2\ncheckpoint = \"m.safetensors\"",
            "no effect",
        ),
        (
            "kind = \"bn-cnn\"\nchannels = [4, 6]\nhidden = 8",
            "kind = \"mlp\"\nhidden = [8]",
            "BatchNorm",
        ),
        (
            "kind = \"corruption\"\n",
            "kind = \"class-incremental\"\ntasks = 1\nclasses-per-task = 3\n",
            "domains over one label space",
        ),
    ] {
        let mut text = RUN.replace(from, to);
        if to.contains("class-incremental") {
            // A class split has neither corruptions nor rounds.
            text = text
                .lines()
                .filter(|l| !l.starts_with("corruptions") && !l.starts_with("rounds"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::fs::write(&cfg, text).unwrap();
        let err = fails(&["adapt", "--config", s(&cfg), "-o", s(&d.path().join("o"))]);
        assert!(err.contains(want), "{to}: {err}");
        assert!(!d.path().join("o/t/results.json").exists());
    }
}

#[test]
fn adapters_and_scenarios_are_listed() {
    let a = ok(&["adapters"]);
    for name in ["source", "bn-adapt", "tent", "cotta"] {
        assert!(a.lines().any(|l| l.starts_with(name)), "{a}");
    }
    assert!(a.contains("augmentations=32"), "{a}");
    let sc = ok(&["scenarios"]);
    assert!(
        sc.contains("corruption") && sc.contains("severity=5"),
        "{sc}"
    );
}
