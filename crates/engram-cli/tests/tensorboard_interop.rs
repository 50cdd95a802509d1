//! TensorBoard interoperability: the event files `engram train --tensorboard` writes load with
//! the `tensorboard` package's `EventAccumulator` (which checks every record's CRCs), with the
//! scalars the run's results and event log hold; a resumed run's restart mark makes TensorBoard
//! drop what a killed run wrote after its checkpoint. The package goes into the tests' shared
//! environment `target/pyenv` (`ENGRAM_SKIP_PY=1` skips).

mod common;
use common::{BLOBS_RUN, ok, run_py, s};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn python() -> Option<PathBuf> {
    common::pyenv(
        "TensorBoard interoperability test",
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator",
        &["tensorboard"],
    )
}

/// Prints every scalar of the TensorBoard run folder argv[1] as JSON: {tag: [[step, value]]}.
const LOAD: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;

fn scalars(py: &Path, dir: &Path, run: &Path) -> serde_json::Map<String, Value> {
    let out = run_py(py, dir, LOAD, &[s(run)]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// `(step, value)` pairs of a tag.
fn series(v: &serde_json::Map<String, Value>, tag: &str) -> Vec<(u64, f32)> {
    v[tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {tag}"))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
        .collect()
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The scalars TensorBoard reads are those of the run: a loss per step equal to the event
/// log's, and after each task the accuracies of results.json, their mean and the task's time,
/// at the step count at the task's end.
fn check(v: &serde_json::Map<String, Value>, run: &Path) {
    let mut tags: Vec<&str> = v.keys().map(String::as_str).collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "accuracy/mean",
            "accuracy/task_0",
            "accuracy/task_1",
            "accuracy/task_2",
            "loss",
            "time/task_seconds"
        ]
    );
    let log: Vec<Value> = std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses: Vec<(u64, f32)> = log
        .iter()
        .filter(|l| l["event"] == "step")
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(losses.len(), 6);
    assert_eq!(series(v, "loss"), losses);
    let r = json(&run.join("results.json"));
    let rows: Vec<Vec<f64>> = serde_json::from_value(r["accuracy"].clone()).unwrap();
    let ends = [2u64, 4, 6];
    for i in 0..3 {
        let want: Vec<(u64, f32)> = ends
            .iter()
            .zip(&rows)
            .map(|(&e, r)| (e, r[i] as f32))
            .collect();
        assert_eq!(series(v, &format!("accuracy/task_{i}")), want, "task {i}");
    }
    let means: Vec<f64> =
        serde_json::from_value(r["summary"]["average_accuracies"].clone()).unwrap();
    let want: Vec<(u64, f32)> = (0..3).map(|k| (ends[k], means[k] as f32)).collect();
    assert_eq!(series(v, "accuracy/mean"), want);
    let secs: Vec<f64> = serde_json::from_value(r["summary"]["time_per_task_s"].clone()).unwrap();
    let want: Vec<(u64, f32)> = (0..3).map(|k| (ends[k], secs[k] as f32)).collect();
    assert_eq!(series(v, "time/task_seconds"), want);
}

#[test]
fn tensorboard_reads_the_scalars_of_a_run_and_of_a_resumed_run() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, BLOBS_RUN).unwrap();
    let (out, tb) = (d.path().join("out"), d.path().join("tb"));
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "-q", "--config", s(&cfg), "-o", s(&out)];
        args.extend(["--tensorboard", s(&tb)]);
        args.extend(extra);
        ok(&args);
    };
    train(&[]);
    let files: Vec<_> = std::fs::read_dir(tb.join("t")).unwrap().collect();
    assert_eq!(files.len(), 1, "one event file in TB/<name>/");
    check(&scalars(&py, d.path(), &tb.join("t")), &out.join("t"));

    // Run anew under the same name: TensorBoard shows the new run only.
    train(&["--overwrite"]);
    check(&scalars(&py, d.path(), &tb.join("t")), &out.join("t"));

    // Stopped after a task; a killed attempt then wrote steps past the checkpoint (3 and 4,
    // loss 999) before the run was resumed: TensorBoard drops them at the restart mark.
    std::fs::remove_dir_all(&tb).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    train(&["--stop-after", "1"]);
    let mut killed = engram_report::tensorboard::EventWriter::create(&tb.join("t")).unwrap();
    killed.restart(3).unwrap();
    killed.scalars(3, &[("loss", 999.0)]).unwrap();
    killed.scalars(4, &[("loss", 999.0)]).unwrap();
    drop(killed);
    train(&["--resume"]);
    assert_eq!(std::fs::read_dir(tb.join("t")).unwrap().count(), 3);
    check(&scalars(&py, d.path(), &tb.join("t")), &out.join("t"));
}
