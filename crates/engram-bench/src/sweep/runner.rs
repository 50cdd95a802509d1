//! The local runner: runs jobs (the lines of a sweep's jobs file, or any commands that fill a
//! folder) with bounded concurrency, per-job logs, skip-if-done, retries and a live table.
//!
//! A job is a folder, a command and a done file. The runner holds a lock on `dir/.running`
//! while the job runs (so `engram sweep status` sees it running, and a second runner on the
//! same folder leaves it alone), appends the command's output to `dir/log.txt` under a header
//! per attempt, and records every attempt in `dir/attempts.json`. A job succeeds when its
//! command exits 0 and its done file exists; one that fails is queued again at the end until
//! it has had `1 + retries` attempts. An interrupted job is simply run again: the sweep's
//! commands resume from their checkpoints (`engram train --if-needed`).

use super::{Plan, RESULTS, RUN_FILE, STATUS_JSON, now, quote, read_jobs, read_plan, utc};
use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A job's log, in its folder.
pub const LOG: &str = "log.txt";
/// A job's attempts (when, how long, how each ended), in its folder.
pub const ATTEMPTS: &str = "attempts.json";
/// Locked by the runner while the job runs.
pub const LOCK: &str = ".running";

/// One job: a folder, the command that fills it, and the file whose existence means "done".
#[derive(Clone, Debug)]
pub struct Job {
    /// Stable id (the run folder's name).
    pub id: String,
    /// The job's folder; its log goes to `dir/log.txt`.
    pub dir: PathBuf,
    /// argv of the command (argv[0] a program found on PATH or a path).
    pub argv: Vec<String>,
    /// Written atomically by the command when it succeeds; a job whose file exists is done.
    pub done_file: PathBuf,
}

/// How the runner runs.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Jobs at once (lowered to cores / `threads_per_run` where that is less).
    pub jobs: usize,
    /// Threads each job may use (passed as `--threads T` to engram commands, and as
    /// RAYON_NUM_THREADS / OMP_NUM_THREADS to every job); jobs × threads never exceeds the cores.
    pub threads_per_run: usize,
    /// Retries of a failed job.
    pub retries: usize,
    /// Print the live status table.
    pub progress: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            jobs: 1,
            threads_per_run: 1,
            retries: 0,
            progress: false,
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobOutcome {
    pub id: String,
    /// "done" (ran now), "skipped" (was done), "failed", "busy" (another process was running
    /// it: its lock was held).
    pub status: String,
    /// Attempts made by this runner.
    pub attempts: usize,
    /// Seconds spent on it by this runner, all attempts together.
    pub seconds: f64,
}

/// The cores this machine gives the process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The jobs run at once for `opts` on `cores` cores: `opts.jobs`, lowered so that jobs ×
/// threads fits the cores, and a note when lowered. A job needing more threads than there are
/// cores is an error.
pub fn concurrency(opts: &RunnerOptions, cores: usize) -> Result<(usize, Option<String>)> {
    if opts.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if opts.threads_per_run == 0 {
        bail!("--threads-per-run must be at least 1");
    }
    if opts.threads_per_run > cores {
        bail!(
            "--threads-per-run {} is more than the {cores} cores of this machine",
            opts.threads_per_run
        );
    }
    let fit = cores / opts.threads_per_run;
    if opts.jobs > fit {
        return Ok((
            fit,
            Some(format!(
                "--jobs {} × --threads-per-run {} is more than the {cores} cores: running {fit} at once",
                opts.jobs, opts.threads_per_run
            )),
        ));
    }
    Ok((opts.jobs, None))
}

/// A job being run.
struct Running {
    idx: usize,
    child: Child,
    started: Instant,
    started_at: u64,
    attempt: usize,
    bar: ProgressBar,
    _lock: std::fs::File,
}

/// What starting a job came to.
enum Start {
    Running(Box<Running>),
    Done,
    Busy,
}

/// Runs `jobs` (skipping those done), at most `opts.jobs` at once.
pub fn run_jobs(jobs: &[Job], opts: &RunnerOptions) -> Result<Vec<JobOutcome>> {
    let (k, note) = concurrency(opts, cores())?;
    let table = Table::new(opts.progress, jobs.len());
    if let Some(n) = note {
        table.line(&format!("note: {n}"));
    }
    let mut outcomes: Vec<Option<JobOutcome>> = vec![None; jobs.len()];
    let mut attempts = vec![0usize; jobs.len()];
    let mut seconds = vec![0f64; jobs.len()];
    let mut queue: VecDeque<usize> = (0..jobs.len()).collect();
    let mut running: Vec<Running> = Vec::new();
    let outcome = |i: usize, status: &str, attempts: usize, seconds: f64| {
        Some(JobOutcome {
            id: jobs[i].id.clone(),
            status: status.into(),
            attempts,
            seconds,
        })
    };
    loop {
        while running.len() < k
            && let Some(i) = queue.pop_front()
        {
            let attempt = attempts[i] + 1;
            match start(&jobs[i], i, attempt, opts, &table) {
                Ok(Start::Running(r)) => {
                    attempts[i] = attempt;
                    running.push(*r);
                }
                Ok(Start::Done) => {
                    let status = if attempts[i] == 0 { "skipped" } else { "done" };
                    outcomes[i] = outcome(i, status, attempts[i], seconds[i]);
                    table.finished(status == "done");
                }
                Ok(Start::Busy) => {
                    table.line(&format!(
                        "busy    {}: another process holds {}",
                        jobs[i].id,
                        jobs[i].dir.join(LOCK).display()
                    ));
                    outcomes[i] = outcome(i, "busy", attempts[i], seconds[i]);
                    table.failed();
                }
                Err(e) => {
                    attempts[i] = attempt;
                    let msg = crate::error_chain(&e);
                    let _ = record(&jobs[i], attempt, now(), 0.0, None, Some(&msg));
                    if retry(attempt, opts) {
                        table.line(&format!(
                            "retry   {} (attempt {attempt}: {msg})",
                            jobs[i].id
                        ));
                        queue.push_back(i);
                    } else {
                        table.line(&format!("failed  {}: {msg}", jobs[i].id));
                        outcomes[i] = outcome(i, "failed", attempt, seconds[i]);
                        table.failed();
                    }
                }
            }
        }
        if running.is_empty() && queue.is_empty() {
            break;
        }
        let mut still = Vec::with_capacity(running.len());
        for mut r in running {
            let status = match r.child.try_wait() {
                Ok(None) => {
                    r.bar.set_message(bar_text(&jobs[r.idx], &r));
                    still.push(r);
                    continue;
                }
                Ok(Some(s)) => Ok(s),
                Err(e) => Err(e),
            };
            let i = r.idx;
            let secs = r.started.elapsed().as_secs_f64();
            seconds[i] += secs;
            let job = &jobs[i];
            let error = match &status {
                Ok(s) if s.success() && job.done_file.exists() => None,
                Ok(s) if s.success() => {
                    Some(format!("exited 0 but wrote no {}", job.done_file.display()))
                }
                Ok(s) => Some(
                    match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                        (Some(c), _) => format!("exit status {c}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "ended abnormally".into(),
                    },
                ),
                Err(e) => Some(format!("cannot wait for it: {e}")),
            };
            let code = status.as_ref().ok().and_then(|s| s.code());
            if let Some(msg) = &error {
                log_line(job, &format!("==== attempt {}: failed ({msg})", r.attempt));
            }
            let _ = record(job, r.attempt, r.started_at, secs, code, error.as_deref());
            let _ = std::fs::remove_file(job.dir.join(LOCK));
            table.remove(&r.bar);
            match error {
                None => {
                    table.line(&format!("done    {} ({secs:.1} s)", job.id));
                    outcomes[i] = outcome(i, "done", r.attempt, seconds[i]);
                    table.finished(true);
                }
                Some(msg) if retry(r.attempt, opts) => {
                    table.line(&format!(
                        "retry   {} (attempt {} {msg}; log {})",
                        job.id,
                        r.attempt,
                        job.dir.join(LOG).display()
                    ));
                    queue.push_back(i);
                }
                Some(msg) => {
                    table.line(&format!(
                        "failed  {} after {} attempt(s): {msg}; log {}",
                        job.id,
                        r.attempt,
                        job.dir.join(LOG).display()
                    ));
                    outcomes[i] = outcome(i, "failed", r.attempt, seconds[i]);
                    table.failed();
                }
            }
        }
        running = still;
        table.tick(running.len(), queue.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    table.close();
    Ok(outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.unwrap_or_else(|| outcome(i, "failed", attempts[i], seconds[i]).unwrap()))
        .collect())
}

fn retry(attempt: usize, opts: &RunnerOptions) -> bool {
    attempt <= opts.retries
}

/// Takes the job's lock, checks it is not done, and starts its command with its output
/// appended to its log.
fn start(
    job: &Job,
    idx: usize,
    attempt: usize,
    opts: &RunnerOptions,
    table: &Table,
) -> Result<Start> {
    if job.argv.is_empty() {
        bail!("job {}: empty command", job.id);
    }
    std::fs::create_dir_all(&job.dir).with_context(|| format!("creating {}", job.dir.display()))?;
    let lock_path = job.dir.join(LOCK);
    let mut lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Start::Busy),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    if job.done_file.exists() {
        let _ = std::fs::remove_file(&lock_path);
        return Ok(Start::Done);
    }
    let started_at = now();
    let _ = lock.set_len(0);
    let _ = writeln!(
        lock,
        "pid {} started {}",
        std::process::id(),
        utc(started_at)
    );
    let log_path = job.dir.join(LOG);
    let mut log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let shown: Vec<String> = job.argv.iter().map(|a| quote(a)).collect();
    writeln!(
        log,
        "==== attempt {attempt} of {} of {}, {}\n$ {}",
        1 + opts.retries,
        job.id,
        utc(started_at),
        shown.join(" ")
    )
    .with_context(|| format!("writing {}", log_path.display()))?;
    let err = log.try_clone()?;
    let threads = opts.threads_per_run.to_string();
    let child = Command::new(&job.argv[0])
        .args(&job.argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .env("RAYON_NUM_THREADS", &threads)
        .env("OMP_NUM_THREADS", &threads)
        .spawn()
        .with_context(|| format!("starting {}", job.argv[0]));
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            log_line(
                job,
                &format!("==== attempt {attempt}: {}", crate::error_chain(&e)),
            );
            let _ = std::fs::remove_file(&lock_path);
            return Err(e);
        }
    };
    let r = Running {
        idx,
        child,
        started: Instant::now(),
        started_at,
        attempt,
        bar: table.add(),
        _lock: lock,
    };
    r.bar.set_message(bar_text(job, &r));
    Ok(Start::Running(Box::new(r)))
}

/// Appends one line to a job's log.
fn log_line(job: &Job, line: &str) {
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(job.dir.join(LOG))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Appends an attempt to the job's `attempts.json` (kept across runners: the count is of
/// every attempt ever made).
fn record(
    job: &Job,
    attempt: usize,
    started: u64,
    seconds: f64,
    exit: Option<i32>,
    error: Option<&str>,
) -> Result<()> {
    let path = job.dir.join(ATTEMPTS);
    let mut all: Vec<Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["attempts"].as_array().cloned())
        .unwrap_or_default();
    all.push(json!({
        "attempt": attempt,
        "started": utc(started),
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "exit": exit,
        "ok": error.is_none(),
        "error": error,
    }));
    let v = json!({ "id": job.id, "attempts": all });
    crate::machine::write_json(&path, &v)
}

/// The text of a running job's row: id, elapsed time, attempt, and the run's progress when
/// its events file says it (`events.jsonl`, last line; optional).
fn bar_text(job: &Job, r: &Running) -> String {
    let t = r.started.elapsed().as_secs();
    let mut s = format!(
        "  {:<16} {:>3}:{:02}:{:02}  attempt {}",
        job.id,
        t / 3600,
        t / 60 % 60,
        t % 60,
        r.attempt
    );
    if let Some(p) = events_progress(&job.dir) {
        s.push_str("  ");
        s.push_str(&p);
    }
    s
}

/// `task k/n` from the last line of `dir/events.jsonl`, where it has those fields.
fn events_progress(dir: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dir.join("events.jsonl")).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = String::new();
    f.take(4096).read_to_string(&mut buf).ok()?;
    let last = buf.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: Value = serde_json::from_str(last).ok()?;
    let task = v.get("task")?.as_u64()?;
    let tasks = v.get("tasks").and_then(Value::as_u64);
    Some(match tasks {
        Some(n) => format!("task {}/{n}", task + 1),
        None => format!("task {}", task + 1),
    })
}

/// The live table: a counts line over one row per running job, redrawn in place on a
/// terminal; elsewhere (a log, CI) one line per finished job.
struct Table {
    show: bool,
    tty: bool,
    mp: MultiProgress,
    head: ProgressBar,
    total: usize,
    done: std::cell::Cell<usize>,
    failed: std::cell::Cell<usize>,
}

impl Table {
    fn new(show: bool, total: usize) -> Table {
        let tty = show && std::io::stderr().is_terminal();
        let mp = if tty {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        let head = mp.add(ProgressBar::new_spinner());
        head.set_style(Self::style());
        Table {
            show,
            tty,
            mp,
            head,
            total,
            done: 0.into(),
            failed: 0.into(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    fn add(&self) -> ProgressBar {
        let b = self.mp.add(ProgressBar::new_spinner());
        b.set_style(Self::style());
        b
    }

    fn remove(&self, b: &ProgressBar) {
        b.finish_and_clear();
        self.mp.remove(b);
    }

    fn finished(&self, _ran: bool) {
        self.done.set(self.done.get() + 1);
    }

    fn failed(&self) {
        self.failed.set(self.failed.get() + 1);
    }

    fn tick(&self, running: usize, queued: usize) {
        if self.tty {
            self.head.set_message(format!(
                "sweep: {} done, {} failed, {running} running, {queued} pending of {}",
                self.done.get(),
                self.failed.get(),
                self.total
            ));
        }
    }

    fn line(&self, s: &str) {
        if !self.show {
            return;
        }
        if self.tty {
            let _ = self.mp.println(s);
        } else {
            eprintln!("{s}");
        }
    }

    fn close(&self) {
        self.head.finish_and_clear();
        if self.show {
            let line = format!(
                "sweep: {} done, {} failed of {}",
                self.done.get(),
                self.failed.get(),
                self.total
            );
            if self.tty {
                let _ = self.mp.println(&line);
            } else {
                eprintln!("{line}");
            }
        }
    }
}

/// The jobs of a planned sweep folder (`RUNS/jobs.txt` and its run folders): each line run by
/// `sh -c` from RUNS/, exactly as in the jobs file, done when RUNS/<id>/results.json exists.
pub fn jobs_of(runs: &Path) -> Result<Vec<Job>> {
    let plan = read_plan(runs)?;
    jobs_of_plan(runs, &plan)
}

fn jobs_of_plan(runs: &Path, plan: &Plan) -> Result<Vec<Job>> {
    let lines = read_jobs(runs, plan)?;
    let abs = std::path::absolute(runs).with_context(|| format!("resolving {}", runs.display()))?;
    let cd = quote(&abs.display().to_string());
    Ok(plan
        .runs
        .iter()
        .zip(lines)
        .map(|(r, line)| Job {
            id: r.id.clone(),
            dir: abs.join(&r.id),
            argv: vec!["sh".into(), "-c".into(), format!("cd {cd} && {line}")],
            done_file: abs.join(&r.id).join(RESULTS),
        })
        .collect())
}

/// `engram sweep run`: the runs of the planned folder `runs` through [`run_jobs`], then
/// RUNS/status.json. `threads_per_run` must be the plan's (its lines pass `--threads`); `None`
/// in `opts` is not possible, so the caller passes the plan's value when the user gave none.
pub fn run_sweep(runs: &Path, opts: &RunnerOptions) -> Result<Vec<JobOutcome>> {
    let plan = read_plan(runs)?;
    if opts.threads_per_run != plan.threads_per_run {
        bail!(
            "{} was planned with --threads-per-run {} (its jobs lines pass --threads {}); \
             plan it again with --threads-per-run {} to run with that",
            runs.display(),
            plan.threads_per_run,
            plan.threads_per_run,
            opts.threads_per_run
        );
    }
    for r in &plan.runs {
        let f = runs.join(&r.id).join(RUN_FILE);
        if !f.exists() {
            bail!("{} is missing; plan the sweep again", f.display());
        }
    }
    let jobs = jobs_of_plan(runs, &plan)?;
    let outcomes = run_jobs(&jobs, opts)?;
    let mut status = super::status::status(runs)?;
    status["outcomes"] = serde_json::to_value(&outcomes)?;
    crate::machine::write_json(&runs.join(STATUS_JSON), &status)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, id: &str, script: &str) -> Job {
        Job {
            id: id.into(),
            dir: dir.join(id),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            done_file: dir.join(id).join("done"),
        }
    }

    #[test]
    fn concurrency_fits_the_cores() {
        let o = |jobs, threads_per_run| RunnerOptions {
            jobs,
            threads_per_run,
            ..Default::default()
        };
        assert_eq!(concurrency(&o(2, 1), 4).unwrap(), (2, None));
        let (k, note) = concurrency(&o(4, 2), 4).unwrap();
        assert_eq!(k, 2);
        assert!(note.unwrap().contains("4 cores"));
        let e = concurrency(&o(1, 8), 4).unwrap_err().to_string();
        assert!(
            e.contains("--threads-per-run 8") && e.contains("4 cores"),
            "{e}"
        );
        assert!(concurrency(&o(0, 1), 4).is_err());
    }

    #[test]
    fn runs_skips_retries_and_logs() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // Done when run; already done; fails twice then succeeds; always fails.
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::write(d.join("b/done"), "").unwrap();
        let flaky = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 2 ] && echo ok > done",
            c = d.join("count").display()
        );
        let jobs = vec![
            job(
                d,
                "a",
                &format!("echo hi; echo ok > {}/a/done", d.display()),
            ),
            job(d, "b", "exit 3"),
            job(d, "c", &format!("cd {}/c && {flaky}", d.display())),
            job(d, "e", "echo bad >&2; exit 2"),
        ];
        let opts = RunnerOptions {
            jobs: 2,
            threads_per_run: 1,
            retries: 2,
            progress: false,
        };
        let out = run_jobs(&jobs, &opts).unwrap();
        let st: Vec<(&str, usize)> = out
            .iter()
            .map(|o| (o.status.as_str(), o.attempts))
            .collect();
        assert_eq!(
            st,
            [("done", 1), ("skipped", 0), ("done", 3), ("failed", 3)]
        );
        let log = std::fs::read_to_string(d.join("e/log.txt")).unwrap();
        assert_eq!(log.matches("==== attempt").count(), 6, "{log}");
        assert!(
            log.contains("bad") && log.contains("exit status 2"),
            "{log}"
        );
        let att: Value =
            serde_json::from_slice(&std::fs::read(d.join("e/attempts.json")).unwrap()).unwrap();
        assert_eq!(att["attempts"].as_array().unwrap().len(), 3);
        assert!(!d.join("a").join(LOCK).exists());
        // Run again: everything done is skipped, the failed one is tried again.
        let out = run_jobs(&jobs[..3], &opts).unwrap();
        assert!(out.iter().all(|o| o.status == "skipped"), "{out:?}");
    }

    #[test]
    fn exit_zero_without_the_done_file_is_a_failure_and_a_held_lock_is_busy() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let opts = RunnerOptions::default();
        let out = run_jobs(&[job(d, "a", "true")], &opts).unwrap();
        assert_eq!(out[0].status, "failed");
        let log = std::fs::read_to_string(d.join("a/log.txt")).unwrap();
        assert!(log.contains("exited 0 but wrote no"), "{log}");
        std::fs::create_dir_all(d.join("b")).unwrap();
        let held = std::fs::File::create(d.join("b").join(LOCK)).unwrap();
        held.lock().unwrap();
        // flock locks are per open file: another open of the same file conflicts.
        let out = run_jobs(&[job(d, "b", "echo > done")], &opts).unwrap();
        assert_eq!(out[0].status, "busy");
        assert!(!d.join("b/done").exists());
    }

    #[test]
    fn a_missing_program_is_a_failed_attempt() {
        let t = tempfile::tempdir().unwrap();
        let j = Job {
            id: "x".into(),
            dir: t.path().join("x"),
            argv: vec!["/nonexistent/engram".into()],
            done_file: t.path().join("x/done"),
        };
        let out = run_jobs(
            &[j],
            &RunnerOptions {
                retries: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((out[0].status.as_str(), out[0].attempts), ("failed", 2));
        let log = std::fs::read_to_string(t.path().join("x/log.txt")).unwrap();
        assert!(log.contains("/nonexistent/engram"), "{log}");
    }
}
