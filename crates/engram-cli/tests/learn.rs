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

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

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
    // Scenario kinds with their own keys and defaults, from the registry.
    let kinds = ok(&["scenarios"]);
    for k in [
        "class-incremental",
        "task-incremental",
        "permuted",
        "rotated",
        "scole",
        "joint",
    ] {
        assert!(kinds.contains(k), "{k} missing from {kinds}");
    }
    assert!(
        kinds.contains("max-angle=180") && kinds.contains("classes-per-task=2"),
        "{kinds}"
    );
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

/// Selective fine-tuning through `engram train`: listed by `engram strategies`, run on a
/// residual MLP from the second task on, and its masks exported for another trainer.
#[test]
fn selective_strategies_train_and_export_their_masks() {
    let listing = ok(&["strategies"]);
    for s in ["lift", "kappatune", "lora", "block-expansion"] {
        assert!(listing.contains(s), "{s} missing from {listing}");
    }
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str, params: &str| {
        let text = RUN
            .replace(
                "kind = \"mlp\"\nhidden = [32]",
                "kind = \"resmlp\"\nwidth = 16\nhidden = 32\nblocks = 2",
            )
            .replace("name = \"naive\"", &format!("name = \"{name}\"\n{params}"))
            .replace("kind = \"adam\"", "kind = \"adamw\"");
        let cfg = d.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let cfg = run("lift", "from-task = 1\nrank = 2");
    let masks = d.path().join("lift-masks.safetensors");
    let out = d.path().join("lift");
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--export-masks",
        s(&masks),
    ]);
    let listing = ok(&["inspect", s(&masks), "--json"]);
    // Named as the model's parameters, so another trainer finds them by name.
    let ckpt = walk(&out)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".model.safetensors"))
        .expect("a model checkpoint");
    let model = ok(&["inspect", s(&ckpt), "--json"]);
    for t in ["\"stem.weight\"", "\"blocks.1.fc2.weight\""] {
        assert!(listing.contains(t), "{t} missing from {listing}");
        assert!(model.contains(t), "{t} missing from the model {model}");
    }
    assert!(listing.contains("engram.kind"), "{listing}");
    assert!(
        !listing.contains("\"head."),
        "the output layer is not selected"
    );
    let r = results(&out);
    assert_eq!(r["accuracy"].as_array().unwrap().len(), 3);
    // EWC exports its diagonal Fisher under the parameters' names.
    let cfg = run("ewc", "lambda = 10.0");
    let fisher = d.path().join("fisher.safetensors");
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&d.path().join("ewc")),
        "--export-masks",
        s(&fisher),
    ]);
    let f = engram_ckpt::Model::open(&fisher).unwrap();
    assert_eq!(f.metadata()["engram.kind"], "fisher");
    let names: Vec<&str> = f.names().collect();
    assert!(names.contains(&"stem.weight"), "{names:?}");
    let v = f.require("stem.weight").unwrap().to_f32().unwrap();
    assert!(v.iter().all(|x| *x >= 0.0) && v.iter().any(|x| *x > 0.0));
    // A strategy with nothing to export says so and exits non-zero.
    let cfg = run("lora", "from-task = 1");
    let bad = engram(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&d.path().join("lora")),
        "--export-masks",
        s(&d.path().join("x.safetensors")),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no masks or importance"));
    // Block expansion on a plain MLP is an error that names the model to use.
    let cfg = d.path().join("bx.toml");
    std::fs::write(
        &cfg,
        RUN.replace("name = \"naive\"", "name = \"block-expansion\""),
    )
    .unwrap();
    let bad = engram(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&d.path().join("bx")),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("resmlp"));
}
