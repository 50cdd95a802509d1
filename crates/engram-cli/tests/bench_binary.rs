//! `engram bench binary --quick` end to end on the real data sets (skipped where they are not
//! installed, unless ENGRAM_REQUIRE_DATA=1 as in CI): every part runs, the results and the
//! report are written, every claim is judged or says why not, a rerun reads the finished
//! units back, and an unknown part is refused before anything runs.

mod common;
use common::{engram, s};

#[test]
fn bench_binary_quick_runs_every_part_and_reuses_its_units() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("b");
    let r = engram(&["bench", "binary", "--quick", "-q", "--out", s(&out)]);
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    if !r.status.success() && err.contains("not found (looked in") {
        assert!(
            std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
            "ENGRAM_REQUIRE_DATA=1 but a data set is missing: {err}"
        );
        eprintln!("skipping: {err}");
        return;
    }
    assert!(r.status.success(), "{err}");
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
    };
    let j = read();
    assert_eq!(j["engram_bench_binary"], 1);
    for part in ["perceptron", "deep", "whiten", "curriculum", "thresholds"] {
        assert!(j[part].is_object(), "{part} missing");
    }
    assert_eq!(j["perceptron"]["theory"], "simulation only");
    // Four deep arms, accuracies as percentages of a 3-task matrix.
    let runs = j["deep"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        let acc = r["acc_binary"].as_array().unwrap();
        assert_eq!(acc.len(), 3);
        for v in acc.iter().flat_map(|row| row.as_array().unwrap()) {
            let v = v.as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
    }
    let verdicts = j["verdicts"].as_array().unwrap();
    let parts: Vec<&str> = verdicts
        .iter()
        .map(|v| v["part"].as_str().unwrap())
        .collect();
    for part in ["perceptron", "deep", "whiten", "curriculum", "thresholds"] {
        assert!(parts.contains(&part), "no verdict for {part}: {parts:?}");
    }
    for v in verdicts {
        assert!(!v["detail"].as_str().unwrap().is_empty());
    }
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    for h in [
        "Teacher–student perceptron",
        "Permuted Fashion-MNIST",
        "whitening",
        "curriculum",
        "macro-F1",
    ] {
        assert!(html.contains(h), "{h} missing from the report");
    }
    // A rerun reads every unit back: same numbers.
    let again = engram(&["bench", "binary", "--quick", "-q", "--out", s(&out)]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let k = read();
    for part in ["perceptron", "deep", "whiten", "curriculum", "thresholds"] {
        let a = &j[part];
        let b = &k[part];
        let key = ["reps", "runs", "seeds"]
            .into_iter()
            .find(|k| a.get(*k).is_some())
            .unwrap();
        assert_eq!(a[key], b[key], "{part}");
    }
    // An unknown part is refused, naming the parts.
    let bad = engram(&[
        "bench",
        "binary",
        "--quick",
        "-q",
        "--parts",
        "nope",
        "--out",
        s(&out),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("thresholds"));
}
