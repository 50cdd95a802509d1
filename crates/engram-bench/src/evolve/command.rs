//! The user's score command: run on a merged model with a time limit, its last line read as
//! the score.
//!
//! The command runs in its own process group, so that a timeout ends everything it started
//! (a shell's children too). Its stdout is copied to ours (the job's log) as it comes; its
//! stderr goes straight to ours.

use super::config::Command;
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `path` quoted for `sh`.
fn shell_quote(path: &str) -> String {
    format!("'{}'", path.replace('\'', r"'\''"))
}

/// The argv of `cmd` with `{model}` replaced by `model`.
pub fn argv(cmd: &Command, model: &Path) -> Vec<String> {
    let m = model.display().to_string();
    match cmd {
        Command::Shell(s) => vec![
            "sh".into(),
            "-c".into(),
            s.replace("{model}", &shell_quote(&m)),
        ],
        Command::Argv(a) => a.iter().map(|s| s.replace("{model}", &m)).collect(),
    }
}

/// The score in the last non-empty line of `out`.
pub fn parse_score(out: &str) -> Result<f64> {
    let last = out.lines().map(str::trim).rfind(|l| !l.is_empty());
    let Some(last) = last else {
        bail!("the score command printed nothing; it must print a number as its last line");
    };
    match last.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => bail!("the score command's last line is {v}, not a finite number"),
        Err(_) => bail!("the score command's last line is not a number: '{last}'"),
    }
}

// kill(2), without a libc dependency: a negative pid signals the process group.
unsafe extern "C" {
    #[link_name = "kill"]
    fn c_kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;

/// Runs `cmd` on `model` in `cwd`, at most `timeout`; its score.
pub fn run_score(cmd: &Command, model: &Path, cwd: &Path, timeout: Duration) -> Result<f64> {
    let argv = argv(cmd, model);
    let shown = argv.join(" ");
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start the score command `{shown}` in {}",
                cwd.display()
            )
        })?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out, "{line}");
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() >= timeout {
            // SAFETY: kill(2) with our own child's process group id (it leads its group).
            unsafe { c_kill(-(child.id() as i32), SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What the command left running in its process group (a server started with `&`) ends
    // with it: it would hold the output pipe open and the read below would never end.
    // SAFETY: kill(2) on the process group our child led; no process left is harmless.
    unsafe { c_kill(-(child.id() as i32), SIGKILL) };
    let out = reader
        .join()
        .map_err(|_| anyhow!("reading the score command's output failed"))?;
    match status {
        None => bail!(
            "the score command `{shown}` ran past its timeout of {} s",
            timeout.as_secs()
        ),
        Some(s) if !s.success() => bail!("the score command `{shown}` failed ({s})"),
        Some(_) => parse_score(&out).with_context(|| format!("`{shown}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_score() {
        assert_eq!(parse_score("loading\n12.5\n\n").unwrap(), 12.5);
        assert_eq!(parse_score("-3e-2").unwrap(), -0.03);
        for (out, want) in [
            ("", "printed nothing"),
            ("12\nacc: 13\n", "not a number: 'acc: 13'"),
            ("nan\n", "not a finite number"),
        ] {
            let e = parse_score(out).unwrap_err().to_string();
            assert!(e.contains(want), "{out:?}: {e}");
        }
    }

    #[test]
    fn the_model_path_is_quoted_for_the_shell_and_substituted_in_argv() {
        let m = Path::new("/tmp/it's here/model");
        let a = argv(&Command::Shell("cat {model}/x | wc -c".into()), m);
        assert_eq!(a[2], r"cat '/tmp/it'\''s here/model'/x | wc -c");
        let a = argv(
            &Command::Argv(vec!["score".into(), "--model={model}".into()]),
            m,
        );
        assert_eq!(a[1], "--model=/tmp/it's here/model");
    }

    #[test]
    fn commands_run_with_a_timeout_and_report_failures() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model dir");
        let run = |c: &str, t: u64| {
            run_score(
                &Command::Shell(c.into()),
                &m,
                d.path(),
                Duration::from_secs(t),
            )
        };
        assert_eq!(run("echo {model} >&2; echo 4.25", 10).unwrap(), 4.25);
        // The command runs in the given folder, {model} quoted.
        std::fs::write(d.path().join("n.txt"), "7\n").unwrap();
        assert_eq!(
            run(
                "test {model} = '{}' && cat n.txt"
                    .replace("{}", m.to_str().unwrap())
                    .as_str(),
                10
            )
            .unwrap(),
            7.0
        );
        let e = run("echo 1; exit 3", 10).unwrap_err().to_string();
        assert!(e.contains("failed"), "{e}");
        let t0 = Instant::now();
        // The shell and its child are both ended at the timeout.
        let e = run("sleep 30; echo 1", 1).unwrap_err().to_string();
        assert!(e.contains("timeout"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
