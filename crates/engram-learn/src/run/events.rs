//! A run's event log: `events.jsonl` in its folder, one JSON object per line written as the
//! run trains (follow it with `tail -f`), and the step count across tasks its front ends share.
//!
//! Every line has `event`, `time` (seconds since the Unix epoch) and `elapsed` (seconds since
//! this process started the run); then, by event:
//!
//! - `run_start`: `name`, `strategy`, `scenario`, `resume` (whether it continues a checkpoint);
//! - `resumed`: `completed` (tasks in the checkpoint), `step` (their steps, from the log);
//! - `task_start`: `task`, `tasks`, `steps` (this task's), `step` (the run's steps before it);
//! - `step`: `task`, `task_step` (1, 2, ... within the task), `step` (the run's, from 1),
//!   `loss` (the batch's training loss);
//! - `task_end`: `task`, `step`, `seconds` (the task's training time), `accuracy` (the
//!   accuracy row after the task, percent: one entry per task, or one all-class accuracy),
//!   `mean` (the mean over the tasks seen, the row's ACC);
//! - `run_end`: `step`, `complete` (false: stopped early by `--stop-after`), written after
//!   `results.json`;
//! - `error`: `message` (the run failed after it started).
//!
//! A curriculum's lines carry `phase` (its index) and `phase_name`, and `step` counts across
//! phases.
//!
//! A run that starts from scratch starts a new log; a resumed run keeps the log and appends,
//! first dropping the task lines of the tasks after its checkpoint (the work it redoes), so
//! that each task's lines appear once; a run refused at its start, or skipped by
//! `--if-needed`, leaves the log untouched. The log is therefore always that of the latest
//! run started in the folder: when it ends with `run_end` (`complete`), `results.json` is
//! that run's; a log without one is of a run stopped, failed or under way, while the
//! `results.json` beside it, if any, is of an earlier run. Lines are buffered and written
//! whole: step lines at least every half second, every other line at once. The log is not
//! synced to disk; a crash may lose its last lines, never the results.

use crate::train::Event;
use crate::{Error, Result, err};
use serde_json::Value;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The log's file name in a run's folder.
pub const FILE: &str = "events.jsonl";

/// Step lines wait at most this long before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Or until this many bytes are waiting.
const FLUSH_BYTES: usize = 1 << 16;

/// A trainer event with what the run driver adds: the step count across tasks.
#[derive(Clone, Debug)]
pub struct Logged {
    pub event: Event,
    /// The run's optimizer steps so far, across tasks (and phases; after a resume, counted
    /// on from the steps the log records for the checkpoint's tasks).
    pub step: u64,
    /// Seconds since this process started the run.
    pub elapsed: f64,
    /// The curriculum phase the event belongs to (`None`: a run).
    pub phase: Option<usize>,
}

/// What `run_start` says of the run.
#[derive(Clone, Debug)]
pub struct Header {
    pub name: String,
    pub strategy: String,
    pub scenario: String,
}

/// The mean accuracy over the tasks seen after task `task`: the first `task + 1` entries of
/// a row with one entry per task (`tasks`), else (an all-class accuracy) the row's mean.
pub fn seen_mean(task: usize, tasks: usize, row: &[f64]) -> f64 {
    let seen = match row.len() == tasks {
        true => &row[..(task + 1).min(row.len())],
        false => row,
    };
    match seen.is_empty() {
        true => f64::NAN,
        false => seen.iter().sum::<f64>() / seen.len() as f64,
    }
}

/// The log of one run, opened at its first event (so that a run refused at its start does
/// not touch it).
pub struct EventLog {
    path: PathBuf,
    header: Header,
    file: Option<std::fs::File>,
    buf: String,
    flushed: Instant,
    start: Instant,
    step: u64,
    tasks: usize,
    phase: Option<(usize, String)>,
    /// The first failure to write, reported by [`EventLog::finish`]; nothing is written after it.
    failed: Option<Error>,
}

impl EventLog {
    /// The log at `dir/events.jsonl`, for a run described by `header` that began at `start`
    /// (its lines' `elapsed` counts from there).
    pub fn new(dir: &Path, header: Header, start: Instant) -> EventLog {
        EventLog {
            path: dir.join(FILE),
            header,
            file: None,
            buf: String::new(),
            flushed: Instant::now(),
            start,
            step: 0,
            tasks: 0,
            phase: None,
            failed: None,
        }
    }

    /// Sets the curriculum phase the next events belong to.
    pub fn set_phase(&mut self, phase: usize, name: &str) {
        self.phase = Some((phase, name.to_string()));
    }

    /// Logs a trainer event; returns it with the run's step count.
    pub fn record(&mut self, event: Event) -> Logged {
        if self.file.is_none() && self.failed.is_none() {
            let resume = match &event {
                Event::Resumed { completed } => Some(*completed),
                _ => None,
            };
            if let Err(e) = self.open(resume) {
                self.failed = Some(e);
            }
        }
        let mut f: Vec<(&str, String)> = Vec::new();
        let name = match &event {
            Event::Resumed { completed } => {
                f.push(("completed", completed.to_string()));
                f.push(("step", self.step.to_string()));
                "resumed"
            }
            Event::TaskStart { task, tasks, steps } => {
                self.tasks = *tasks;
                f.push(("task", task.to_string()));
                f.push(("tasks", tasks.to_string()));
                f.push(("steps", steps.to_string()));
                f.push(("step", self.step.to_string()));
                "task_start"
            }
            Event::Step { task, step, loss } => {
                self.step += 1;
                f.push(("task", task.to_string()));
                f.push(("task_step", step.to_string()));
                f.push(("step", self.step.to_string()));
                f.push(("loss", json(loss)));
                "step"
            }
            Event::TaskEnd {
                task,
                seconds,
                accuracy,
            } => {
                f.push(("task", task.to_string()));
                f.push(("step", self.step.to_string()));
                f.push(("seconds", json(seconds)));
                f.push(("accuracy", json(accuracy)));
                f.push(("mean", json(&seen_mean(*task, self.tasks, accuracy))));
                "task_end"
            }
        };
        let step_line = matches!(event, Event::Step { .. });
        self.line(name, f, !step_line);
        Logged {
            event,
            step: self.step,
            elapsed: self.start.elapsed().as_secs_f64(),
            phase: self.phase.as_ref().map(|p| p.0),
        }
    }

    /// Logs the end of the run (`complete`: it finished, its results written) and reports
    /// the first failure to write the log, if any.
    pub fn finish(mut self, complete: bool) -> Result<()> {
        if self.file.is_some() {
            let f = vec![
                ("step", self.step.to_string()),
                ("complete", complete.to_string()),
            ];
            self.line("run_end", f, true);
        }
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Logs the failure of a run that started.
    pub fn fail(mut self, e: &Error) {
        if self.file.is_some() {
            self.line("error", vec![("message", json(&e.to_string()))], true);
        }
    }

    /// Opens the log: a new one, or the one a resumed run (with `completed` tasks in its
    /// checkpoint) continues; then writes `run_start`.
    fn open(&mut self, completed: Option<usize>) -> Result<()> {
        let p = &self.path;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        check(p.parent().unwrap_or(Path::new("")))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .map_err(|e| Error::io(p, e))?;
        match completed {
            None => file.set_len(0).map_err(|e| Error::io(p, e))?,
            Some(k) => self.step = cut_redone(&mut file, k).map_err(|e| Error::io(p, e))?,
        }
        file.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(p, e))?;
        self.file = Some(file);
        let h = &self.header;
        let f = vec![
            ("name", json(&h.name)),
            ("strategy", json(&h.strategy)),
            ("scenario", json(&h.scenario)),
            ("resume", completed.is_some().to_string()),
        ];
        self.line("run_start", f, false);
        Ok(())
    }

    /// Adds a line (`event` first, then the times, the phase and `fields`, already JSON);
    /// writes what waits when `now`, or when step lines have waited long enough.
    fn line(&mut self, event: &str, fields: Vec<(&str, String)>, now: bool) {
        if self.file.is_none() {
            return;
        }
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let ms = |s: f64| json(&((s * 1000.0).round() / 1000.0));
        let b = &mut self.buf;
        b.push_str("{\"event\":");
        b.push_str(&json(&event));
        let mut add = |k: &str, v: &str| {
            b.push_str(",\"");
            b.push_str(k);
            b.push_str("\":");
            b.push_str(v);
        };
        add("time", &ms(time));
        add("elapsed", &ms(self.start.elapsed().as_secs_f64()));
        if let Some((k, name)) = self.phase.as_ref().filter(|_| !event.starts_with("run_")) {
            add("phase", &k.to_string());
            add("phase_name", &json(name));
        }
        for (k, v) in &fields {
            add(k, v);
        }
        b.push_str("}\n");
        if now || b.len() >= FLUSH_BYTES || self.flushed.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Writes the lines waiting.
    fn flush(&mut self) {
        self.flushed = Instant::now();
        let Some(f) = self.file.as_mut() else { return };
        if let Err(e) = f.write_all(self.buf.as_bytes()) {
            self.failed = Some(Error::io(&self.path, e));
            self.file = None;
        }
        self.buf.clear();
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.flush();
        }
    }
}

/// Refuses a log in `dir` that is not a regular file of the run's own: a symlink could lead
/// out of the folder and a FIFO would block. Checked before a run starts, and again when the
/// log is opened.
pub fn check(dir: &Path) -> Result<()> {
    let p = dir.join(FILE);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if !m.is_file() => Err(err!(
            "{}: not a regular file (a symlink, a folder or a special file); the event log \
             must be the run's own",
            p.display()
        )),
        _ => Ok(()),
    }
}

/// A value as JSON text (numbers that are not finite as `null`).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Prepares the log of a run resumed after `completed` tasks: its lines of later tasks (the
/// tasks the resumed run redoes, and a line cut short) go, the others stay. Returns the steps
/// the log records up to the end of task `completed - 1` (0 when it records none).
fn cut_redone(file: &mut std::fs::File, completed: usize) -> std::io::Result<u64> {
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let parsed = |l: &[u8]| -> Option<Value> {
        l.ends_with(b"\n")
            .then(|| serde_json::from_slice(l).ok())
            .flatten()
    };
    // The end of the last task the checkpoint holds.
    let cut = completed.checked_sub(1).and_then(|last| {
        lines.iter().enumerate().rev().find_map(|(i, l)| {
            let v = parsed(l)?;
            let end = v["event"] == "task_end" && v["task"].as_u64() == Some(last as u64);
            end.then(|| (i, v["step"].as_u64().unwrap_or(0)))
        })
    });
    let Some((i, step)) = cut else {
        return Ok(0);
    };
    let task_line = |v: &Value| {
        ["task_start", "step", "task_end"]
            .iter()
            .any(|e| v["event"] == *e)
    };
    let kept: Vec<u8> = lines[i + 1..]
        .iter()
        .filter(|l| parsed(l).is_some_and(|v| !task_line(&v)))
        .flat_map(|l| l.iter().copied())
        .collect();
    let at: usize = lines[..=i].iter().map(|l| l.len()).sum();
    // In place (a follower's `tail -f` goes on), not replaced.
    file.set_len(at as u64)?;
    file.seek(std::io::SeekFrom::End(0))?;
    file.write_all(&kept)?;
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            name: "t".into(),
            strategy: "naive".into(),
            scenario: "s".into(),
        }
    }

    fn lines(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join(FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn task(log: &mut EventLog, task: usize, steps: usize) {
        log.record(Event::TaskStart {
            task,
            tasks: 2,
            steps,
        });
        for s in 1..=steps {
            log.record(Event::Step {
                task,
                step: s,
                loss: 0.5,
            });
        }
        log.record(Event::TaskEnd {
            task,
            seconds: 0.1,
            accuracy: vec![90.0, 10.0],
        });
    }

    /// A run's lines in order with the step counted across tasks; a resumed run drops the
    /// lines of the task it redoes (and a line cut short), keeps the others, and counts on
    /// from the checkpoint's steps.
    #[test]
    fn a_resumed_log_drops_the_redone_task_and_counts_on() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::new(d.path(), header(), Instant::now());
        task(&mut log, 0, 3);
        // Killed during task 1: two steps written, a line cut short.
        log.record(Event::TaskStart {
            task: 1,
            tasks: 2,
            steps: 3,
        });
        log.record(Event::Step {
            task: 1,
            step: 1,
            loss: 0.25,
        });
        log.finish(false).unwrap();
        assert_eq!(lines(d.path()).len(), 9);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"event\":\"step\",\"ta").unwrap();

        let mut log = EventLog::new(d.path(), header(), Instant::now());
        let l = log.record(Event::Resumed { completed: 1 });
        assert_eq!(l.step, 3);
        task(&mut log, 1, 3);
        log.finish(true).unwrap();
        let v = lines(d.path());
        let events: Vec<&str> = v.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            events,
            [
                "run_start",
                "task_start",
                "step",
                "step",
                "step",
                "task_end",
                "run_end",
                "run_start",
                "resumed",
                "task_start",
                "step",
                "step",
                "step",
                "task_end",
                "run_end"
            ]
        );
        let steps: Vec<u64> = v
            .iter()
            .filter(|l| l["event"] == "step")
            .map(|l| l["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
        assert_eq!(v[8]["step"], 3);
        assert_eq!(v[6]["complete"], false);
        assert_eq!(v[14]["complete"], true);
        assert_eq!(v[5]["mean"], 90.0);
        assert_eq!(v[13]["mean"], 50.0);
        assert!(v.iter().all(|l| l["time"].as_f64().unwrap() > 1.6e9));

        // A fresh run starts a new log.
        let mut log = EventLog::new(d.path(), header(), Instant::now());
        task(&mut log, 0, 1);
        drop(log);
        assert_eq!(lines(d.path()).len(), 4);
    }

    /// Step lines wait (at most half a second); other lines are written at once.
    #[test]
    fn step_lines_are_buffered_and_others_written_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::new(d.path(), header(), Instant::now());
        log.record(Event::TaskStart {
            task: 0,
            tasks: 1,
            steps: 2,
        });
        let on_disk = || std::fs::read_to_string(d.path().join(FILE)).unwrap();
        assert_eq!(on_disk().lines().count(), 2);
        log.record(Event::Step {
            task: 0,
            step: 1,
            loss: 1.0,
        });
        assert_eq!(on_disk().lines().count(), 2, "a step line waits");
        std::thread::sleep(FLUSH_EVERY);
        log.record(Event::Step {
            task: 0,
            step: 2,
            loss: 1.0,
        });
        assert_eq!(on_disk().lines().count(), 4, "written after half a second");
    }

    /// A log that is not a plain file of the run's own is refused, and the run told.
    #[test]
    fn a_symlinked_log_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join(FILE)).unwrap();
        let mut log = EventLog::new(d.path(), header(), Instant::now());
        task(&mut log, 0, 1);
        let e = log.finish(true).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!d.path().join("elsewhere").exists());
    }

    #[test]
    fn the_mean_is_over_the_tasks_seen() {
        assert_eq!(seen_mean(0, 3, &[90.0, 0.0, 0.0]), 90.0);
        assert_eq!(seen_mean(1, 3, &[80.0, 60.0, 0.0]), 70.0);
        assert_eq!(seen_mean(4, 5, &[42.0]), 42.0);
    }
}
