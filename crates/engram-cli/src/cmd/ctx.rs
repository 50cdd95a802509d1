//! What every command receives, and the process around one command: the global options applied
//! before it runs, the peak memory and the exit code after.

use anyhow::Result;

/// Most worker threads `--threads` accepts: each is a thread the system starts up front, so
/// a mistyped 100000 would take minutes before any work; 1024 is far above any core count
/// engram is run on.
pub const MAX_THREADS: usize = 1024;

/// The worker threads without `--threads`: `RAYON_NUM_THREADS` if set (1 to
/// [`MAX_THREADS`]), else the cores.
fn env_threads() -> Result<usize, String> {
    match std::env::var_os("RAYON_NUM_THREADS") {
        None => Ok(std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_THREADS)),
        Some(v) => v
            .to_str()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| (1..=MAX_THREADS).contains(n))
            .ok_or_else(|| {
                format!(
                    "RAYON_NUM_THREADS={}: give 1 to {MAX_THREADS} worker threads (or unset it, or use --threads)",
                    v.to_string_lossy()
                )
            }),
    }
}

/// Global settings every command receives.
pub struct Ctx {
    pub quiet: bool,
    /// The command line, recorded as provenance in every file engram writes.
    pub command_line: String,
}

impl Ctx {
    /// Prepares the process for one command: memory kept for reuse, the worker threads, the
    /// command line. The pool is always built here from a checked count: `--threads`
    /// (checked by clap to 1..=[`MAX_THREADS`]), else `RAYON_NUM_THREADS` (the same limit;
    /// otherwise an error, exit status 1), else the cores (at most [`MAX_THREADS`]), so that
    /// no environment variable sizes the pool unchecked.
    pub fn start(quiet: bool, threads: Option<usize>) -> Ctx {
        // Every command allocates and frees megabyte buffers per chunk or step; keeping freed
        // memory in the process instead of returning it to the kernel saves the page faults
        // (see the comment of `engram_learn::train::alloc`).
        engram_learn::train::alloc::keep_freed_memory();
        let n = match threads.map_or_else(env_threads, Ok) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {}", engram_ckpt::names::esc(&e));
                std::process::exit(1);
            }
        };
        // Only fails if a pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        Ctx {
            quiet,
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// Ends the process after the command: reports the peak memory (when asked for), then
    /// prints the error and its causes on one line (control characters escaped) and exits
    /// with status 1 if it failed.
    pub fn finish(self, res: Result<()>) {
        engram_bench::machine::report_peak_rss();
        if let Err(e) = res {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                std::process::exit(*code);
            }
            // Messages quote tensor names and metadata: escaped like every other output,
            // line by line (some messages list one item per line).
            let msg = engram_bench::error_chain(&e);
            let lines: Vec<_> = msg.split('\n').map(engram_ckpt::names::esc).collect();
            eprintln!("error: {}", lines.join("\n"));
            std::process::exit(1);
        }
    }
}

/// A command that has printed its output and ends with another exit status than 0 or 1
/// (`engram check`: 3 when the models would not merge); [`Ctx::finish`] exits with it.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}
