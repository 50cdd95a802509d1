// Task-conditioned hypernetworks (von Oswald et al., arXiv 1906.00695) and the LSTM hypernetwork
// (arXiv 2209.07712). Card: shared/methods/hypernetworks.md.

//! `engram hypernet` end to end through the built binary on synthetic blobs: the run's
//! folder (results, generator, one network per task, which other commands read), the same
//! bytes from the same seed, and run files refused by key.

mod common;
use common::{fails, ok, s};

const RUN: &str = r#"
name = "h"
seed = 3
[scenario]
kind = "task-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[scenario.blobs]
dim = 9
classes = 4
train-per-class = 40
test-per-class = 10
separation = 4.0
[target]
hidden = [8]
[generator]
kind = "lstm"
task-emb = 4
chunk-emb = 4
hidden = [6]
chunk = 20
grow = 1
[train]
steps = 20
batch = 16
lr = 0.01
"#;

#[test]
fn hypernet_writes_every_tasks_network_and_repeats_itself() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let out = d.path().join("runs");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "hypernet",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["run"]["task_il"].as_array().unwrap().len(), 2);
    assert!(v["run"]["class_il"].is_number());
    let dir = out.join("h");
    for f in [
        "results.json",
        "generator.safetensors",
        "task0.safetensors",
        "task1.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let info = ok(&["inspect", s(&dir.join("task1.safetensors")), "--json"]);
    assert!(info.contains("fc.1.weight"), "{info}");
    let first = std::fs::read(dir.join("task1.safetensors")).unwrap();
    // The same command, the same bytes (provenance included).
    ok(&[
        "hypernet",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--json",
    ]);
    assert_eq!(first, std::fs::read(dir.join("task1.safetensors")).unwrap());
}

#[test]
fn bad_hypernet_run_files_are_refused_with_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    for (from, to, want) in [
        ("hidden = [6]", "hidden = [6, 6]", "generator.hidden"),
        ("steps = 20", "steps = 0", "steps"),
        ("chunk = 20", "chunk = 0", "generator.chunk"),
        ("lr = 0.01", "lr = 0.01\nmomentum = 0.9", "momentum"),
    ] {
        std::fs::write(&cfg, RUN.replacen(from, to, 1)).unwrap();
        let err = fails(&[
            "hypernet",
            "--config",
            s(&cfg),
            "-o",
            s(&d.path().join("o")),
        ]);
        assert!(err.contains(want), "{to}: {err}");
    }
}
