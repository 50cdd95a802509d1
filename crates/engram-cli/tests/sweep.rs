//! `engram sweep plan|run|emit|status` end to end on tiny blob runs, and the emitted GNU
//! parallel script run by GNU parallel itself (required where ENGRAM_REQUIRE_DATA=1, as in CI).

mod common;
use common::{engram, fails, ok, s};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A tiny run: two tasks of blobs, two steps each (well under a second).
const BASE: &str = r#"
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[scenario.blobs]
train-per-class = 10
test-per-class = 5
[model]
kind = "mlp"
hidden = [8]
[strategy]
name = "naive"
[train]
iterations = 2
batch-size = 8
[train.optimizer]
kind = "adam"
lr = 0.01
"#;

/// Writes run.toml and sweep.toml (base + `rest`) into `dir`; returns the sweep file.
fn sweep_file(dir: &Path, rest: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("run.toml"), BASE).unwrap();
    let f = dir.join("sweep.toml");
    std::fs::write(&f, format!("name = \"t\"\nbase = \"run.toml\"\n{rest}")).unwrap();
    f
}

const GRID: &str = "seeds = [0, 1]\n[grid]\n\"train.optimizer.lr\" = [0.01, 0.02]\n";

fn ids(runs: &Path) -> Vec<String> {
    std::fs::read_to_string(runs.join("ids.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// A results file without what differs between two runs of the same settings (times, memory).
fn settled(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    !(k.contains("time") || k.contains("peak") || k.contains("seconds"))
                });
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn plans_are_deterministic_and_ids_follow_the_settings() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), GRID);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let out = ok(&["sweep", "plan", s(&f), "-o", s(&a)]);
    assert!(
        out.contains("planned 4 runs") && out.contains("4 new"),
        "{out}"
    );
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&b)]);
    assert_eq!(file_bytes(&a), file_bytes(&b), "same sweep, same bytes");
    let ids = ids(&a);
    assert_eq!(ids.len(), 4);
    let plan = json(&a.join("sweep.json"));
    assert_eq!(plan["runs"][1]["seed"], 1);
    assert_eq!(plan["runs"][2]["point"]["train.optimizer.lr"], 0.02);
    // Each line: this binary, the threads, the run file relative to RUNS, --if-needed.
    let exe = env!("CARGO_BIN_EXE_engram");
    let jobs = std::fs::read_to_string(a.join("jobs.txt")).unwrap();
    for (line, id) in jobs.lines().zip(&ids) {
        assert_eq!(
            line,
            format!("{exe} --threads 1 train --config {id}/run.toml --out . --if-needed")
        );
        let run = std::fs::read_to_string(a.join(id).join("run.toml")).unwrap();
        assert!(run.contains(&format!("name = \"{id}\"")), "{run}");
    }
    // Planning again is a no-op: nothing new, no file rewritten.
    let t0 = std::fs::metadata(a.join(&ids[0]).join("run.toml"))
        .unwrap()
        .modified()
        .unwrap();
    let out = ok(&["sweep", "plan", s(&f), "-o", s(&a)]);
    assert!(out.contains("0 new"), "{out}");
    let t1 = std::fs::metadata(a.join(&ids[0]).join("run.toml"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(t0, t1);
    // Another program and thread count: same ids, other lines.
    ok(&[
        "sweep",
        "plan",
        "-q",
        s(&f),
        "-o",
        s(&b),
        "--engram",
        "engram",
        "--threads-per-run",
        "2",
    ]);
    assert_eq!(self::ids(&b), ids);
    let line = std::fs::read_to_string(b.join("jobs.txt")).unwrap();
    assert!(
        line.starts_with("engram --threads 2 train --config "),
        "{line}"
    );
    // Other seeds: other ids, and another sweep is refused in the same folder without --force.
    let g = sweep_file(
        &d.path().join("g"),
        "seeds = [0, 2]\n[grid]\n\"train.optimizer.lr\" = [0.01, 0.02]\n",
    );
    let e = fails(&["sweep", "plan", s(&g), "-o", s(&a)]);
    assert!(e.contains("another sweep") && e.contains("--force"), "{e}");
    ok(&["sweep", "plan", "-q", s(&g), "-o", s(&a), "--force"]);
    let new = self::ids(&a);
    assert_eq!(new[0], ids[0], "seed 0, lr 0.01: the same run");
    assert_ne!(new[1], ids[1]);
    assert!(
        a.join(&ids[1]).join("run.toml").exists(),
        "old run folders are kept"
    );
    // A different setting in the base: every id changes.
    let h = d.path().join("h");
    std::fs::create_dir_all(&h).unwrap();
    std::fs::write(
        h.join("run.toml"),
        BASE.replace("hidden = [8]", "hidden = [9]"),
    )
    .unwrap();
    std::fs::write(h.join("sweep.toml"), format!("base = \"run.toml\"\n{GRID}")).unwrap();
    ok(&[
        "sweep",
        "plan",
        "-q",
        s(&h.join("sweep.toml")),
        "-o",
        s(&h.join("r")),
    ]);
    let other = self::ids(&h.join("r"));
    assert!(other.iter().all(|i| !ids.contains(i)));
}

#[test]
fn bad_sweeps_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r");
    let f = sweep_file(d.path(), "[grid]\n\"train.optimzer.lr\" = [0.1]\n");
    let e = fails(&["sweep", "plan", s(&f), "-o", s(&out)]);
    assert!(e.contains("optimzer"), "{e}");
    let f = sweep_file(d.path(), "[grid]\n\"strategy.name\" = []\n");
    assert!(
        fails(&["sweep", "plan", s(&f), "-o", s(&out)]).contains("strategy.name has an empty list")
    );
    let f = sweep_file(d.path(), "[grid]\n\"strategy.name\" = [\"no-such\"]\n");
    let e = fails(&["sweep", "plan", s(&f), "-o", s(&out)]);
    assert!(e.contains("strategy.name=no-such"), "{e}");
    let f = sweep_file(d.path(), "seed = 3\n");
    assert!(fails(&["sweep", "plan", s(&f), "-o", s(&out)]).contains("unknown key \"seed\""));
    assert!(!out.exists(), "nothing is written for a bad sweep");
}

#[test]
fn the_runner_runs_skips_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), GRID);
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    let out = ok(&[
        "sweep",
        "run",
        s(&runs),
        "--jobs",
        "2",
        "--threads-per-run",
        "1",
    ]);
    assert!(out.contains("4 runs done (4 run now"), "{out}");
    let ids = ids(&runs);
    for id in &ids {
        let r = json(&runs.join(id).join("results.json"));
        assert_eq!(r["name"], id.as_str());
        assert!(
            std::fs::read_to_string(runs.join(id).join("log.txt"))
                .unwrap()
                .contains("==== attempt 1")
        );
    }
    let st = json(&runs.join("status.json"));
    assert_eq!(st["counts"]["done"], 4);
    let text = ok(&["sweep", "status", s(&runs)]);
    assert!(
        text.starts_with("4 runs: 4 done, 0 running, 0 failed"),
        "{text}"
    );
    assert!(text.contains("train.optimizer.lr=0.02 seed=1"), "{text}");
    // Again: every run is skipped, no results rewritten.
    let t0 = std::fs::metadata(runs.join(&ids[0]).join("results.json"))
        .unwrap()
        .modified()
        .unwrap();
    let out = ok(&["sweep", "run", s(&runs), "--jobs", "2"]);
    assert!(out.contains("(0 run now, 4 were done)"), "{out}");
    let t1 = std::fs::metadata(runs.join(&ids[0]).join("results.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(t0, t1);
    // A thread count other than the plan's is refused (the lines pass --threads).
    let e = fails(&["sweep", "run", s(&runs), "--threads-per-run", "2"]);
    assert!(e.contains("--threads-per-run 1"), "{e}");
    // engram report reads the sweep folder.
    let rep = d.path().join("report");
    let out = ok(&["report", s(&runs), "-o", s(&rep)]);
    assert!(out.contains("report of 4 runs"), "{out}");
}

#[test]
fn a_failing_run_is_retried_and_reported() {
    let d = tempfile::tempdir().unwrap();
    // Valid at plan time, fails at run time: the start checkpoint does not exist.
    let f = sweep_file(
        d.path(),
        "[grid]\nstart = [{ checkpoint = \"/nonexistent/engram-sweep-test.safetensors\" }]\n",
    );
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    let id = &ids(&runs)[0];
    let e = fails(&["sweep", "run", s(&runs), "--retries", "1"]);
    assert!(e.contains(&format!("{id} (failed, 2 attempts)")), "{e}");
    assert!(
        e.contains(&runs.join(id).join("log.txt").display().to_string()),
        "{e}"
    );
    let log = std::fs::read_to_string(runs.join(id).join("log.txt")).unwrap();
    assert_eq!(
        log.matches("==== attempt").count(),
        4,
        "two headers, two failures: {log}"
    );
    assert!(log.contains("engram-sweep-test.safetensors"), "{log}");
    let st: Value = serde_json::from_str(&ok(&["sweep", "status", s(&runs), "--json"])).unwrap();
    assert_eq!(st["counts"]["failed"], 1);
    assert_eq!(st["runs"][0]["attempts"], 2);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_results() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), "seeds = [4]\n");
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    let id = &ids(&runs)[0];
    let cfg = runs.join(id).join("run.toml");
    // The same run uninterrupted, elsewhere.
    let whole = d.path().join("whole");
    ok(&[
        "train",
        "-q",
        "--threads",
        "1",
        "--config",
        s(&cfg),
        "--out",
        s(&whole),
    ]);
    // Interrupted after its first task: a checkpoint, no results.
    ok(&[
        "train",
        "-q",
        "--threads",
        "1",
        "--config",
        s(&cfg),
        "--out",
        s(&runs),
        "--stop-after",
        "1",
    ]);
    assert!(!runs.join(id).join("results.json").exists());
    assert!(ok(&["sweep", "status", s(&runs)]).contains("1 started"));
    let out = ok(&["sweep", "run", s(&runs)]);
    assert!(out.contains("1 run now"), "{out}");
    let a = std::fs::read(runs.join(id).join("results.json")).unwrap();
    let b = std::fs::read(whole.join(id).join("results.json")).unwrap();
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&a).unwrap(),
        serde_json::from_slice(&b).unwrap(),
    );
    assert_eq!(
        settled(a),
        settled(b),
        "resumed and whole runs differ beyond their timings"
    );
}

#[test]
fn emitted_scripts() {
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), "seeds = [0, 1, 2]\n");
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    let out = ok(&[
        "sweep",
        "emit",
        s(&runs),
        "--slurm",
        "--array-limit",
        "2",
        "--pack",
        "2",
        "--time",
        "00:10:00",
        "--partition",
        "debug",
    ]);
    assert!(out.contains("sbatch"), "{out}");
    let slurm = std::fs::read_to_string(runs.join("sweep.slurm")).unwrap();
    let abs = runs.canonicalize().unwrap();
    for l in [
        "#!/bin/bash\n",
        "#SBATCH --array=0-1%2\n",
        "#SBATCH --cpus-per-task=1\n",
        "#SBATCH --time=00:10:00\n",
        "#SBATCH --partition=debug\n",
        "#SBATCH --job-name=engram-t\n",
        &format!("#SBATCH --chdir={}\n", abs.display()),
        "PACK=2\n",
    ] {
        assert!(slurm.contains(l), "{l} missing in:\n{slurm}");
    }
    // The array tasks' packing, run as Slurm would run them: task 0 runs lines 0 and 1, task 1
    // line 2; a task run again runs nothing.
    let ids = ids(&runs);
    let task = |i: &str| {
        let o = std::process::Command::new("bash")
            .arg(runs.join("sweep.slurm"))
            .env("SLURM_ARRAY_TASK_ID", i)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    task("0");
    let done = || {
        ids.iter()
            .map(|id| runs.join(id).join("results.json").exists())
            .collect::<Vec<_>>()
    };
    assert_eq!(done(), [true, true, false]);
    task("1");
    assert_eq!(done(), [true, true, true]);
    let log = runs.join(&ids[0]).join("log.txt");
    let before = std::fs::read(&log).unwrap();
    task("0");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "a done run is skipped"
    );
    ok(&["sweep", "emit", "-q", s(&runs), "--parallel", "--jobs", "2"]);
    let par = std::fs::read_to_string(runs.join("sweep-parallel.sh")).unwrap();
    assert!(
        par.contains("--joblog \"$RUNS/parallel.joblog\" --jobs 2"),
        "{par}"
    );
    ok(&["sweep", "emit", "-q", s(&runs), "--ray"]);
    let ray = std::fs::read_to_string(runs.join("sweep_ray.py")).unwrap();
    assert!(
        ray.contains("JobSubmissionClient(os.environ.get(\"RAY_ADDRESS\"))"),
        "{ray}"
    );
    use std::os::unix::fs::PermissionsExt;
    for f in ["sweep.slurm", "sweep-parallel.sh", "sweep_ray.py"] {
        let m = std::fs::metadata(runs.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o111, 0o111, "{f} is executable");
    }
    for f in ["sweep.slurm", "sweep-parallel.sh"] {
        let o = std::process::Command::new("bash")
            .arg("-n")
            .arg(runs.join(f))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(runs.join("sweep_ray.py"))
        .output()
    {
        assert!(
            o.status.success(),
            "sweep_ray.py: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Flags of another engine are refused; so is no engine.
    assert!(
        engram(&["sweep", "emit", s(&runs), "--parallel", "--pack", "2"])
            .status
            .code()
            == Some(2)
    );
    assert!(engram(&["sweep", "emit", s(&runs)]).status.code() == Some(2));
}

#[test]
fn gnu_parallel_runs_the_sweep_once() {
    let have = std::process::Command::new("parallel")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
            "ENGRAM_REQUIRE_DATA=1 but GNU parallel is not installed (apt-get install parallel)"
        );
        eprintln!("GNU parallel is not installed: skipping its proof (apt-get install parallel)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), "seeds = [0, 1, 2]\n");
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    ok(&["sweep", "emit", "-q", s(&runs), "--parallel", "--jobs", "2"]);
    let script = runs.join("sweep-parallel.sh");
    let run = || {
        let o = std::process::Command::new(&script)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}{}",
            script.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run();
    let ids = ids(&runs);
    let mtimes: Vec<_> = ids
        .iter()
        .map(|id| {
            let r = runs.join(id).join("results.json");
            assert_eq!(json(&r)["name"], id.as_str());
            std::fs::metadata(&r).unwrap().modified().unwrap()
        })
        .collect();
    let joblog = std::fs::read_to_string(runs.join("parallel.joblog")).unwrap();
    // A header and one line per run, each with exit value 0 (7th column).
    let rows: Vec<&str> = joblog.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{joblog}");
    assert!(
        rows.iter().all(|r| r.split('\t').nth(6) == Some("0")),
        "{joblog}"
    );
    assert!(ok(&["sweep", "status", s(&runs)]).starts_with("3 runs: 3 done"));
    let logs: Vec<String> = ids
        .iter()
        .map(|id| std::fs::read_to_string(runs.join(id).join("log.txt")).unwrap())
        .collect();
    // Twice: nothing runs again (the joblog, written anew, records the second pass's lines,
    // each skipped).
    run();
    let again = std::fs::read_to_string(runs.join("parallel.joblog")).unwrap();
    assert_eq!(again.lines().count(), 1 + 3, "{again}");
    for (id, log) in ids.iter().zip(&logs) {
        let now = std::fs::read_to_string(runs.join(id).join("log.txt")).unwrap();
        assert_eq!(&now, log, "{id} ran again");
    }
    for (id, t) in ids.iter().zip(&mtimes) {
        let now = std::fs::metadata(runs.join(id).join("results.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(&now, t, "{id} ran again");
    }
    // The sweep planned again with another seed (the new run's line comes among the old
    // ones): the same script runs the new run, and only it.
    let f = sweep_file(d.path(), "seeds = [3, 0, 1, 2]\n");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs), "--force"]);
    ok(&["sweep", "emit", "-q", s(&runs), "--parallel", "--jobs", "2"]);
    run();
    assert!(ok(&["sweep", "status", s(&runs)]).starts_with("4 runs: 4 done"));
}

/// A stand-in for Ray's job API (`ray.job_submission`) that runs each entrypoint at once.
const FAKE_RAY: &str = r#"
import enum, subprocess
class JobStatus(str, enum.Enum):
    SUCCEEDED = "SUCCEEDED"; FAILED = "FAILED"; STOPPED = "STOPPED"
class JobSubmissionClient:
    def __init__(self, address=None):
        self.jobs = {}
    def submit_job(self, entrypoint, entrypoint_num_cpus=None):
        sid = f"job{len(self.jobs)}"
        rc = subprocess.run(["bash", "-c", entrypoint]).returncode
        self.jobs[sid] = JobStatus.SUCCEEDED if rc == 0 else JobStatus.FAILED
        return sid
    def get_job_status(self, sid):
        return self.jobs[sid]
"#;

/// The Ray script's own logic (skip done runs, submit, wait, exit status) against a stand-in
/// for Ray's job API: Ray itself is not installed here.
#[test]
fn the_ray_script_submits_runs_not_done() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 is not installed: skipping the Ray script's check");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = sweep_file(d.path(), "seeds = [0, 1]\n");
    let runs = d.path().join("runs");
    ok(&["sweep", "plan", "-q", s(&f), "-o", s(&runs)]);
    ok(&["sweep", "emit", "-q", s(&runs), "--ray"]);
    let fake = d.path().join("fake/ray");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("__init__.py"), "").unwrap();
    std::fs::write(fake.join("job_submission.py"), FAKE_RAY).unwrap();
    let run = || {
        let o = std::process::Command::new("python3")
            .arg(runs.join("sweep_ray.py"))
            .env("PYTHONPATH", d.path().join("fake"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    assert!(run().contains("0 of 2 runs done; submitting 2"));
    assert!(ok(&["sweep", "status", s(&runs)]).starts_with("2 runs: 2 done"));
    assert!(run().contains("2 of 2 runs done; submitting 0"));
}
