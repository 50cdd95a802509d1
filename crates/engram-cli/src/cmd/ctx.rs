//! What every command receives, and the process around one command: the global options applied
//! before it runs, the peak memory and the exit code after.

use anyhow::Result;

/// Global settings every command receives.
pub struct Ctx {
    pub quiet: bool,
    /// The command line, recorded as provenance in every file engram writes.
    pub command_line: String,
}

impl Ctx {
    /// Prepares the process for one command: memory kept for reuse, the worker threads
    /// (`--threads`; 0 exits with status 2, as a bad argument does), the command line.
    pub fn start(quiet: bool, threads: Option<usize>) -> Ctx {
        // Every command allocates and frees megabyte buffers per chunk or step; keeping freed
        // memory in the process instead of returning it to the kernel saves the page faults
        // (see the comment of `engram_learn::train::alloc`).
        engram_learn::train::alloc::keep_freed_memory();
        if let Some(n) = threads {
            if n == 0 {
                eprintln!("error: --threads must be at least 1");
                std::process::exit(2);
            }
            // Only fails if a pool was already built, which cannot happen this early.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        Ctx {
            quiet,
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// Ends the process after the command: reports the peak memory (when asked for), then
    /// prints the error and its causes on one line and exits with status 1 if it failed.
    pub fn finish(self, res: Result<()>) {
        engram_bench::machine::report_peak_rss();
        if let Err(e) = res {
            eprintln!("error: {}", engram_bench::error_chain(&e));
            std::process::exit(1);
        }
    }
}
