//! engram-bench: engram's benchmarks and studies (BENCHMARKS.md), one module each. Each takes
//! plain options (`Default` gives the command line's defaults), reports what it is doing
//! through a [`Progress`] callback, writes its files and returns its JSON. The `engram`
//! binary only parses arguments into options and draws the progress; a benchmark is library
//! code so that it can be run, tested and read without the command line.
//!
//! - [`inspect`], [`analyze`]: the reports of `engram inspect` and `engram analyze` (a
//!   checkpoint's contents; its matrices' spectra and LIFT masks);
//! - [`io`]: read and convert throughput against the read and copy bounds;
//! - [`merge`]: merge speed and memory against the read-and-write bound and mergekit (B1);
//! - [`lora`]: LoRA extraction time and error against mergekit-extract-lora;
//! - [`train`]: one training epoch against PyTorch on the same threads (B4);
//! - [`compress`]: bundles with packed and coded masks on large synthetic families (B6);
//! - [`cl`]: the continual-learning suite (B3);
//! - [`finetune`]: selective fine-tuning, source retention against target accuracy;
//! - [`merge8`]: the merge-8 study, trained models merged, masked and compressed (B2, B6);
//! - [`scole`]: knowledge accumulation over a long SCoLe stream, masking and head compared;
//! - [`tta`]: continual test-time adaptation (Source, BN-adapt, TENT, CoTTA and its
//!   ablations) on the FMNIST-C corruption stream.
//!
//! - [`hypernet`]: networks that write networks (hypernetworks, HY-WU, KNOW);
//! - [`ignorance`]: knowledge that never enters the weights (Deep Ignorance's filtering and
//!   tamper tests);
//! - [`binary`]: binary-weight continual learning in field space, and the Ker-VLJEPA parts
//!   (whitening, a freeze-and-anchor curriculum, per-class thresholds) (B12).
//!
//! Shared parts: [`bars`] (the progress bars the front ends draw), [`parts`] (studies in parts: context, claims, the one runner), [`machine`] (what the machine is, medians and spreads, peak memory, files),
//! [`synthetic`] (the synthetic model families the weight-space benchmarks measure on) and
//! [`units`] (counts and sizes as people write and read them).

pub mod analyze;
pub mod bars;
pub mod binary;
pub mod cil;
pub mod cl;
pub mod compress;
pub mod evolve;
pub mod finetune;
pub mod hypernet;
pub mod ignorance;
pub mod inspect;
pub mod io;
pub mod lora;
pub mod machine;
pub mod merge;
pub mod merge8;
pub mod parts;
pub mod quant;
pub mod robust;
pub mod scole;
pub mod sweep;
pub mod synthetic;
pub mod train;
pub mod tta;
pub mod units;

/// What a benchmark reports while it runs. One bar at a time: `Start` replaces the current
/// bar, `Finish` clears it.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A bar of `total` units begins (`total` may be 0 until an `Advance` says it).
    Start { label: String, total: u64 },
    /// The bar stands at `pos` of `total`.
    Advance { pos: u64, total: u64 },
    /// The bar is done.
    Finish,
    /// A line for the person watching (stderr; not shown when quiet).
    Message(String),
    /// Text of the result itself (tables, where the results went), in the order it is
    /// measured, for stdout: a long benchmark's rows appear as they come.
    Output(String),
}

/// Opens a model and verifies the checksums engram records in the files it writes (models
/// written by other tools carry none); every front end that reads a model's data opens it here.
pub fn open_model(path: &std::path::Path) -> anyhow::Result<engram_ckpt::Model> {
    use anyhow::Context;
    let m = engram_ckpt::Model::open(path)
        .with_context(|| format!("cannot open model {}", path.display()))?;
    m.verify()?;
    Ok(m)
}

/// [`open_model`] of each path, in order.
pub fn open_models(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<engram_ckpt::Model>> {
    paths.iter().map(|p| open_model(p)).collect()
}

/// An error and its causes on one line, leaving out a cause whose text the message before it
/// already includes (`path: No such file` caused by `No such file`). The suite records failed
/// runs this way; the `engram` binary prints its errors this way.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
    }
    s
}

/// A trainer's events as one bar per task, `"{label} task k/n"` over the task's steps.
pub(crate) fn training_progress<'a>(
    label: &'a str,
    progress: &'a mut dyn FnMut(Progress),
) -> impl FnMut(engram_learn::train::Event) + 'a {
    use engram_learn::train::Event;
    let mut total = 0;
    move |e| match e {
        Event::TaskStart { task, tasks, steps } => {
            total = steps as u64;
            progress(Progress::Start {
                label: format!("{label} task {}/{tasks}", task + 1),
                total,
            });
        }
        Event::Step { step, .. } => progress(Progress::Advance {
            pos: step as u64,
            total,
        }),
        Event::TaskEnd { .. } => progress(Progress::Finish),
        Event::Resumed { .. } => {}
    }
}

/// Runs `work` on a helper thread and forwards the units it reports, from any thread, to
/// `progress` as `Advance` on this thread (so the callback needs to be neither `Send` nor
/// `Sync`). A bar labelled `label` of `total` units is started and finished around it.
pub(crate) fn counted<T: Send>(
    progress: &mut dyn FnMut(Progress),
    label: &str,
    total: u64,
    work: impl FnOnce(&(dyn Fn(u64) + Sync)) -> T + Send,
) -> T {
    progress(Progress::Start {
        label: label.to_string(),
        total,
    });
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let out = std::thread::scope(|s| {
        let h = s.spawn(move || {
            work(&move |n| {
                // The receiver lives until the work is done.
                let _ = tx.send(n);
            })
        });
        let mut pos = 0;
        // Ends when `work` returns and drops the sender.
        for n in rx {
            pos += n;
            progress(Progress::Advance { pos, total });
        }
        h.join()
    });
    progress(Progress::Finish);
    match out {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_forwards_every_unit_from_worker_threads_in_order_of_arrival() {
        use rayon::prelude::*;
        let mut seen = Vec::new();
        let r = counted(&mut |p| seen.push(p), "work", 10, |tick| {
            (0..10u64).into_par_iter().for_each(|_| tick(1));
            7
        });
        assert_eq!(r, 7);
        assert_eq!(
            seen.first(),
            Some(&Progress::Start {
                label: "work".into(),
                total: 10
            })
        );
        assert_eq!(seen.last(), Some(&Progress::Finish));
        let pos: Vec<u64> = seen
            .iter()
            .filter_map(|p| match p {
                Progress::Advance { pos, .. } => Some(*pos),
                _ => None,
            })
            .collect();
        assert_eq!(pos, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn error_chains_skip_causes_already_said() {
        let e = anyhow::anyhow!("No such file").context("reading x.json: No such file");
        assert_eq!(error_chain(&e), "reading x.json: No such file");
        let e = anyhow::anyhow!("disk full").context("writing y");
        assert_eq!(error_chain(&e), "writing y: disk full");
    }
}
