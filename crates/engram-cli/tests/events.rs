//! `engram train`'s event log (`events.jsonl`) and `--if-needed`, end to end on tiny blobs:
//! the log's lines against results.json, across a stop and a resume; a finished run skipped,
//! a checkpoint resumed, a changed run file refused.

use serde_json::Value;
use std::path::Path;

mod common;
use common::{BLOBS_RUN, engram, fails, ok, s};

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn log(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["event"].as_str().unwrap()).collect()
}

/// results.json without what a run measures of its machine (times, memory): the rest is the
/// same bytes for the same run, stopped and resumed or not.
fn results_text(run: &Path) -> String {
    let mut r = json(&run.join("results.json"));
    let summary = r["summary"].as_object_mut().unwrap();
    summary.remove("time_per_task_s").unwrap();
    summary.remove("peak_memory_bytes").unwrap();
    summary.remove("time_total_s").unwrap();
    serde_json::to_string_pretty(&r).unwrap()
}

/// Each task's lines once, in order: its start, its steps (1, 2, ... within the task, the
/// run's count going on), its end with the accuracy row results.json holds.
fn check_tasks(lines: &[Value], results: &Value) {
    let rows = results["accuracy"].as_array().unwrap();
    let tasks: Vec<&Value> = lines
        .iter()
        .filter(|l| ["task_start", "step", "task_end"].contains(&l["event"].as_str().unwrap()))
        .collect();
    let mut step = 0;
    let mut k = 0;
    for l in tasks {
        match l["event"].as_str().unwrap() {
            "task_start" => {
                assert_eq!(l["task"], k, "{l}");
                assert_eq!(l["step"], step);
                assert_eq!(l["steps"], 2);
            }
            "step" => {
                step += 1;
                assert_eq!(l["task"], k);
                assert_eq!(l["step"], step);
                assert!(l["loss"].as_f64().unwrap().is_finite());
            }
            _ => {
                assert_eq!(l["accuracy"], rows[k], "task {k}");
                let row: Vec<f64> = serde_json::from_value(rows[k].clone()).unwrap();
                let mean = row[..=k].iter().sum::<f64>() / (k + 1) as f64;
                assert!((l["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
                assert_eq!(l["step"], step);
                k += 1;
            }
        }
    }
    assert_eq!((k, step), (3, 6), "three tasks of two steps");
}

#[test]
fn the_log_follows_the_run_across_a_stop_and_a_resume() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, BLOBS_RUN).unwrap();
    let out = d.path().join("out");
    let run = out.join("t");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "-q", "--config", s(&cfg), "-o", s(&out)];
        args.extend(extra);
        ok(&args);
    };
    train(&[]);
    let lines = log(&run);
    let mut want = vec!["run_start"];
    for _ in 0..3 {
        want.extend(["task_start", "step", "step", "task_end"]);
    }
    want.push("run_end");
    assert_eq!(events(&lines), want);
    check_tasks(&lines, &json(&run.join("results.json")));
    assert_eq!(lines[0]["name"], "t");
    assert_eq!(lines[0]["resume"], false);
    assert_eq!(lines.last().unwrap()["complete"], true);
    let times: Vec<f64> = lines.iter().map(|l| l["time"].as_f64().unwrap()).collect();
    let elapsed: Vec<f64> = lines
        .iter()
        .map(|l| l["elapsed"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]) && times[0] > 1.6e9);
    assert!(elapsed.windows(2).all(|w| w[0] <= w[1]) && elapsed[0] >= 0.0);

    // --overwrite starts a new log.
    train(&["--overwrite"]);
    assert_eq!(events(&log(&run)), want);

    // Stopped after a task, then resumed: the log goes on, each task's lines once.
    std::fs::remove_dir_all(&out).unwrap();
    train(&["--stop-after", "1"]);
    let stopped = log(&run);
    assert_eq!(stopped.last().unwrap()["event"], "run_end");
    assert_eq!(stopped.last().unwrap()["complete"], false);
    // A run refused at its start (a checkpoint without --resume) leaves the log as it was.
    let before = std::fs::read(run.join("events.jsonl")).unwrap();
    fails(&["train", "-q", "--config", s(&cfg), "-o", s(&out)]);
    assert_eq!(std::fs::read(run.join("events.jsonl")).unwrap(), before);
    train(&["--resume"]);
    let lines = log(&run);
    let ev = events(&lines);
    let restart = ev.iter().rposition(|e| *e == "run_start").unwrap();
    assert_eq!(
        &ev[restart..restart + 3],
        ["run_start", "resumed", "task_start"]
    );
    assert_eq!(lines[restart]["resume"], true);
    assert_eq!(lines[restart + 1]["completed"], 1);
    assert_eq!(lines[restart + 1]["step"], 2);
    check_tasks(&lines, &json(&run.join("results.json")));
    assert_eq!(lines.last().unwrap()["complete"], true);
}

#[test]
fn if_needed_skips_a_finished_run_resumes_a_checkpoint_or_starts() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, BLOBS_RUN).unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--config", s(&cfg), "-o", s(out)];
        args.extend(extra);
        ok(&args)
    };
    let whole = d.path().join("whole");
    train(&whole, &["-q"]);

    // Nothing there: the run starts.
    let fresh = d.path().join("fresh");
    train(&fresh, &["-q", "--if-needed"]);
    assert_eq!(
        results_text(&fresh.join("t")),
        results_text(&whole.join("t"))
    );

    // Done: one line, nothing run or touched.
    let files = ["results.json", "events.jsonl", "checkpoint/state.json"];
    let read = |run: &Path| files.map(|f| std::fs::read(run.join(f)).unwrap());
    let before = read(&fresh.join("t"));
    let t0 = std::time::Instant::now();
    let said = train(&fresh, &["--if-needed"]);
    let skip = t0.elapsed();
    assert!(
        said.contains("done already") && said.lines().count() == 1,
        "{said}"
    );
    assert_eq!(read(&fresh.join("t")), before);
    eprintln!("--if-needed skip of a finished run: {skip:?}");

    // A checkpoint: resumed, to the results of the uninterrupted run.
    let part = d.path().join("part");
    train(&part, &["-q", "--stop-after", "1"]);
    train(&part, &["-q", "--if-needed"]);
    assert_eq!(
        results_text(&part.join("t")),
        results_text(&whole.join("t"))
    );
    assert!(events(&log(&part.join("t"))).contains(&"resumed"));

    // Results of other settings: an error naming what differs, and nothing touched.
    std::fs::write(&cfg, BLOBS_RUN.replace("lr = 0.01", "lr = 0.02")).unwrap();
    let e = fails(&["train", "--config", s(&cfg), "-o", s(&fresh), "--if-needed"]);
    assert!(e.contains("train.optimizer.lr: 0.01 -> 0.02"), "{e}");
    assert_eq!(read(&fresh.join("t")), before);

    // Settings written differently (a default spelled out) are the same settings.
    let same = BLOBS_RUN.replace("iterations = 2", "iterations = 2\nreset-optimizer = true");
    std::fs::write(&cfg, same).unwrap();
    assert!(train(&fresh, &["--if-needed"]).contains("done already"));

    // It excludes --resume and --overwrite.
    for flag in ["--resume", "--overwrite"] {
        let o = engram(&[
            "train",
            "--config",
            s(&cfg),
            "-o",
            s(&fresh),
            "--if-needed",
            flag,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("cannot be used with"),
            "{err}"
        );
    }
}

/// An event log that is not a file of the run's own (a symlink) is refused before the run.
#[test]
fn a_symlinked_log_is_refused_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, BLOBS_RUN).unwrap();
    let run = d.path().join("out/t");
    std::fs::create_dir_all(&run).unwrap();
    let target = d.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, run.join("events.jsonl")).unwrap();
    let e = fails(&["train", "--config", s(&cfg), "-o", s(&d.path().join("out"))]);
    assert!(e.contains("events.jsonl: not a regular file"), "{e}");
    assert!(!target.exists() && !run.join("results.json").exists());
}

/// `--if-needed` (a sweep's jobs line, which an engine may start twice) refuses a run another
/// process is running: the lock file `OUT/<name>/.lock` is held here as that process would.
#[test]
fn if_needed_refuses_a_run_another_process_holds() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("r.toml");
    std::fs::write(&cfg, BLOBS_RUN).unwrap();
    let out = d.path().join("out");
    let run = out.join("t");
    std::fs::create_dir_all(&run).unwrap();
    let lock = std::fs::File::create(run.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let args = ["train", "-q", "-c", s(&cfg), "-o", s(&out), "--if-needed"];
    let e = fails(&args);
    assert!(
        e.contains("another engram process is running this run"),
        "{e}"
    );
    assert!(!run.join("results.json").exists() && !run.join("events.jsonl").exists());
    drop(lock);
    ok(&args);
    assert!(run.join("results.json").exists());
}
