//! Progress bars with ETA on stderr; hidden with --quiet or when stderr is not a terminal:
//! one bar over a count, a benchmark's [`Progress`], and a training run's tasks and steps.

use super::Ctx;
use engram_bench::Progress;
use engram_learn::train::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The look of every bar: `template` (indicatif's), drawn with `=>`.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub fn bar(ctx: &Ctx, total: u64, msg: &str) -> ProgressBar {
    if ctx.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(style(
        "{msg:>12} [{bar:30}] {percent:>3}% {human_pos}/{human_len} {elapsed}<{eta}",
    ));
    pb.set_message(msg.to_string());
    pb
}

/// Draws a benchmark's [`Progress`]: one bar at a time, messages on stderr unless quiet, and
/// its result text on stdout when `output` is set.
pub struct Reporter<'a> {
    ctx: &'a Ctx,
    output: bool,
    bar: Option<ProgressBar>,
    /// The first failure to write the result text, reported when the benchmark is done.
    error: Option<anyhow::Error>,
}

impl<'a> Reporter<'a> {
    pub fn new(ctx: &'a Ctx, output: bool) -> Self {
        Reporter {
            ctx,
            output,
            bar: None,
            error: None,
        }
    }

    pub fn show(&mut self, p: Progress) {
        match p {
            Progress::Start { label, total } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                self.bar = Some(bar(self.ctx, total, &label));
            }
            Progress::Advance { pos, total } => {
                if let Some(b) = &self.bar {
                    if b.length() != Some(total) {
                        b.set_length(total);
                    }
                    b.set_position(pos);
                }
            }
            Progress::Finish => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
            }
            Progress::Message(m) => {
                if !self.ctx.quiet {
                    self.suspend(|| eprintln!("{m}"));
                }
            }
            Progress::Output(text) => {
                if self.output && self.error.is_none() {
                    let r = self.suspend(|| super::util::emit(&text));
                    self.error = r.err();
                }
            }
        }
    }

    /// Runs `f` with the bar hidden, so that printed lines do not tear it.
    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Clears a bar left over (a benchmark that failed half-way) and returns the benchmark's
    /// result, or else the first failure to print.
    pub fn finish(mut self, res: anyhow::Result<()>) -> anyhow::Result<()> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        res?;
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Two progress bars for a training run: tasks, and steps within the task.
pub struct RunBars {
    _mp: MultiProgress,
    tasks: ProgressBar,
    steps: ProgressBar,
}

impl RunBars {
    pub fn new(ctx: &Ctx, label: &str) -> RunBars {
        let mp = if ctx.quiet {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
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
