//! Progress bars with ETA on stderr (drawn by `engram_bench::bars`); hidden with --quiet or
//! when stderr is not a terminal: one bar over a count, a benchmark's [`Progress`], and a
//! training run's tasks and steps.

use super::Ctx;
use engram_bench::Progress;
use indicatif::ProgressBar;

/// A bar of `total` units labelled `msg`, hidden with --quiet.
pub fn bar(ctx: &Ctx, total: u64, msg: &str) -> ProgressBar {
    engram_bench::bars::bar(!ctx.quiet, total, msg)
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

/// A training run's bars (tasks, and steps within the task): `RunBars::new(!ctx.quiet, label)`.
pub use engram_bench::bars::RunBars;
