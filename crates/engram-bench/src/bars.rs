//! Progress bars with ETA on stderr, drawn by the front ends (the `engram` binary unless
//! `--quiet`, the Python module with `progress=True`): one bar over a count, and a training
//! run's tasks and steps. indicatif hides them when stderr is not a terminal.

use engram_learn::train::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The look of every bar: `template` (indicatif's), drawn with `=>`.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar of `total` units labelled `msg`; hidden unless `show`.
pub fn bar(show: bool, total: u64, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(style(
        "{msg:>12} [{bar:30}] {percent:>3}% {human_pos}/{human_len} {elapsed}<{eta}",
    ));
    pb.set_message(msg.to_string());
    pb
}

/// Two progress bars for a training run: tasks, and steps within the task.
pub struct RunBars {
    _mp: MultiProgress,
    tasks: ProgressBar,
    steps: ProgressBar,
}

impl RunBars {
    /// The bars of a run labelled `label`; hidden unless `show`.
    pub fn new(show: bool, label: &str) -> RunBars {
        let mp = if show {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        let tasks = mp.add(ProgressBar::new(0));
        tasks.set_style(style(
            "{msg:>12} [{bar:30}] task {pos}/{len} {elapsed}<{eta}",
        ));
        tasks.set_message(label.to_string());
        let steps = mp.add(ProgressBar::new(0));
        steps.set_style(style(
            "{msg:>12} [{bar:30}] {pos}/{len} steps {elapsed}<{eta}",
        ));
        RunBars {
            _mp: mp,
            tasks,
            steps,
        }
    }

    pub fn on(&self, e: Event) {
        match e {
            Event::Resumed { completed } => self.tasks.set_position(completed as u64),
            Event::TaskStart { task, tasks, steps } => {
                self.tasks.set_length(tasks as u64);
                self.steps.set_length(steps as u64);
                self.steps.set_position(0);
                self.steps.set_message(format!("task {}", task + 1));
            }
            Event::Step { step, loss, .. } => {
                self.steps.set_position(step as u64);
                if step % 20 == 0 {
                    self.steps.set_message(format!("loss {loss:.3}"));
                }
            }
            Event::TaskEnd { .. } => self.tasks.inc(1),
        }
    }

    pub fn finish(&self) {
        self.steps.finish_and_clear();
        self.tasks.finish_and_clear();
    }
}
