//! `engram train --config` on a run file with phases (a curriculum) end to end on synthetic
//! blobs: results.json, the weights of every phase, frozen tensors kept, a rerun leaving no
//! stale phase file, bad files refused.

mod common;
use common::{fails, ok, s};

const RUN: &str = r#"
name = "cur"
seed = 1
[model]
kind = "mlp"
hidden = [16]
[train]
epochs = 3
batch-size = 32
[train.optimizer]
kind = "adam"
lr = 0.01
[[phase]]
name = "a"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 1, classes = 4, dim = 16, train-per-class = 40, test-per-class = 10, separation = 2.0 } }
[[phase]]
name = "b"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 2, classes = 4, dim = 16, train-per-class = 40, test-per-class = 10, separation = 2.0 } }
lr = 0.005
freeze = ["fc.0.*"]
anchor = { kind = "l2", lambda = 10.0 }
"#;

#[test]
fn a_two_phase_run_file_trains_and_writes_its_results_and_weights() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let out = d.path().join("o");
    let text = ok(&["train", "--config", s(&cfg), "-o", s(&out)]);
    assert!(text.contains("phase b: accuracy a "), "{text}");
    let dir = out.join("cur");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["engram_curriculum"], 1);
    assert_eq!(r["phases"], serde_json::json!(["a", "b"]));
    let c = &r["curriculum"];
    let m = c["accuracy"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|row| row.as_array().unwrap().len() == 2));
    assert_eq!(
        c["phases"][1]["frozen"],
        serde_json::json!(["fc.0.weight", "fc.0.bias"])
    );
    assert_eq!(c["phases"][1]["anchor"]["kind"], "l2");
    assert_eq!(c["phases"][1]["lr"], 0.005);
    assert_eq!(c["phases"][0]["epochs"], 3);
    assert_eq!(r["params"]["config"]["phase"][1]["name"], "b");
    assert!(r["data"].as_array().unwrap().is_empty());
    // The weights of each phase, the last also as the run's model; phase b kept fc.0.
    for f in [
        "model.safetensors",
        "phase-a.safetensors",
        "phase-b.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let diff: serde_json::Value = serde_json::from_str(&ok(&[
        "diff",
        "--json",
        s(&dir.join("phase-a.safetensors")),
        s(&dir.join("phase-b.safetensors")),
    ]))
    .unwrap();
    let changed = |name: &str| {
        let t = diff["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name);
        t.unwrap_or_else(|| panic!("{name}: {diff}"))["changed"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((changed("fc.0.weight"), changed("fc.0.bias")), (0, 0));
    assert!(changed("fc.1.weight") > 0);
    assert_eq!(diff["summary"]["identical"], 2);
    // The same run again: the same results, byte for byte but for the times.
    let again = d.path().join("again");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&again)]);
    let r2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("cur/results.json")).unwrap()).unwrap();
    assert_eq!(r2["curriculum"]["accuracy"], c["accuracy"]);
    assert_eq!(
        std::fs::read(again.join("cur/model.safetensors")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap()
    );
    // The same name with other phases: only the new run's files are left.
    let renamed = RUN
        .replace("name = \"a\"", "name = \"first\"")
        .replace("name = \"b\"", "name = \"second\"");
    std::fs::write(&cfg, renamed).unwrap();
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&out)]);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "events.jsonl",
            "model.safetensors",
            "phase-first.safetensors",
            "phase-second.safetensors",
            "results.json"
        ]
    );
}

#[test]
fn bad_curricula_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    let o = d.path().join("o");
    for (bad, needle) in [
        (
            RUN.replace("fc.0.*", "layer.*"),
            "freeze pattern 'layer.*' matches no parameter",
        ),
        (
            RUN.replacen(
                "name = \"a\"",
                "name = \"a\"\nanchor = { kind = \"l2\", lambda = 1.0 }",
                1,
            ),
            "anchor on the first phase",
        ),
        (RUN.replace("lr = 0.005", "lr = 0.005\nepoch = 2"), "epoch"),
        (
            RUN.replace("lambda = 10.0 }", "lambda = 10.0, params = [\"fc.0.*\"] }"),
            "phase[1] 'b': anchor.lambda = 10 anchors nothing",
        ),
        (
            RUN.replace(
                "seed = 1\n",
                "seed = 1\n[scenario]\nkind = \"joint\"\ndataset = \"blobs\"\n",
            ),
            "no top-level `scenario`",
        ),
    ] {
        std::fs::write(&cfg, bad).unwrap();
        let err = fails(&["train", "--config", s(&cfg), "-o", s(&o)]);
        assert!(err.contains(needle), "{needle}: {err}");
    }
    std::fs::write(&cfg, RUN).unwrap();
    let err = fails(&["train", "--config", s(&cfg), "-o", s(&o), "--resume"]);
    assert!(err.contains("--resume does not apply"), "{err}");
    assert!(!o.join("cur").exists());
}
