//! Progress bars with ETA on stderr; hidden with --quiet or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(ctx: &crate::Ctx, total: u64, msg: &str) -> ProgressBar {
    if ctx.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {percent:>3}% {human_pos}/{human_len} {elapsed}<{eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}
