//! `engram train`, `engram report` and `engram strategies` end to end on synthetic blobs.

use std::path::Path;

mod common;
use common::{engram, ok, s};

const RUN: &str = r#"
name = "t"
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 3
classes-per-task = 2
[model]
kind = "mlp"
hidden = [32]
[strategy]
name = "naive"
[train]
epochs = 3
batch-size = 32
[train.optimizer]
kind = "adam"
lr = 0.01
"#;

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("t/results.json")).expect("results"))
        .expect("json")
}

#[test]
fn train_resume_and_report() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let whole = d.path().join("whole");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&whole)]);
    let r = results(&whole);
    assert_eq!(r["accuracy"].as_array().unwrap().len(), 3);
    assert!(
        r["summary"]["acc"].as_f64().is_some() && r["summary"]["forgetting"].as_f64().is_some()
    );

    // Stopped after one task, then resumed: the same accuracy matrix.
    let part = d.path().join("part");
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&part),
        "--stop-after",
        "1",
    ]);
    assert!(!part.join("t/results.json").exists());
    let again = engram(&["train", "--config", s(&cfg), "-o", s(&part)]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "a checkpoint without --resume is refused"
    );
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&part),
        "--resume",
    ]);
    assert_eq!(results(&part)["accuracy"], r["accuracy"]);

    let rep = d.path().join("report");
    ok(&["report", "-q", s(&whole), s(&part), "-o", s(&rep)]);
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("naive"));
    assert!(rep.join("results.csv").is_file());
    assert!(ok(&["strategies"]).contains("joint"));
}

#[test]
fn bad_run_files_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    for (bad, needle) in [
        (RUN.replace("epochs = 3", "epochs = 3\nepoch = 2"), "epoch"),
        (
            RUN.replace("name = \"naive\"", "name = \"ewcc\""),
            "unknown strategy 'ewcc'",
        ),
        (RUN.replace("tasks = 3", "tasks = 6"), "6 tasks"),
        (RUN.replace("lr = 0.01", "lr = -1.0"), "lr"),
    ] {
        std::fs::write(&cfg, bad).unwrap();
        let out = engram(&["train", "--config", s(&cfg), "-o", s(&d.path().join("o"))]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
    }
}
