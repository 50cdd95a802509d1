//! What every benchmark needs around its measurements: the machine it ran on, medians and
//! spreads over seeds, peak memory (its own and a child command's), and the files it reads and
//! writes (results JSON, written atomically so that an interrupted run keeps the previous file).

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CPU model and the cores this process may use, as recorded in every benchmark's JSON.
pub fn describe() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({"cpu": cpu, "cores": cores})
}

/// The kernel's load averages (`/proc/loadavg`), to tell afterwards whether the machine was
/// shared during a measurement.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Peak resident memory of this process, bytes: the trainer's measure (`VmHWM`, kept by the
/// kernel for the process's whole life), so that benchmarks and training runs report the same
/// quantity.
pub fn peak_rss_bytes() -> u64 {
    engram_learn::train::trainer::peak_memory()
}

/// Environment variable naming the file to which `engram` writes its peak RSS at exit.
pub const PEAK_RSS_ENV: &str = "ENGRAM_PEAK_RSS_FILE";

/// Called by the `engram` binary just before it exits: if [`PEAK_RSS_ENV`] is set, writes this
/// process's peak resident set size in bytes to that file. A benchmark that runs `engram` as a
/// child reads it afterwards: this measures one command alone, with no polling (which can miss
/// the peak or read a process that is gone).
pub fn report_peak_rss() {
    if let Some(path) = std::env::var_os(PEAK_RSS_ENV) {
        let b = peak_rss_bytes();
        if b > 0 {
            let _ = std::fs::write(path, b.to_string());
        }
    }
}

/// A child command's wall time and peak resident set.
pub struct Measured {
    pub seconds: f64,
    pub peak: u64,
}

/// Runs the command under a small Python wrapper that reports its wall time and peak resident
/// set (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`), so that engram and other tools
/// (mergekit) are measured the same way.
pub fn measure(cmd: &[String]) -> Result<Measured> {
    const WRAPPER: &str = "import resource, subprocess, sys, time, json\n\
t = time.perf_counter()\n\
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
dt = time.perf_counter() - t\n\
print(json.dumps({'rc': r.returncode, 'seconds': dt, 'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'stderr': r.stderr.decode(errors='replace')[-2000:]}))\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(WRAPPER)
        .args(cmd)
        .output()
        .context("running python3 (needed to measure child processes)")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "measuring {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["rc"].as_i64() != Some(0) {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            v["stderr"].as_str().unwrap_or("")
        );
    }
    Ok(Measured {
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        peak: v["peak_rss_bytes"].as_u64().unwrap_or(0),
    })
}

/// The `engram` binary the benchmarks run as a child: `given`, or this process's own
/// executable (the benchmarks are started by `engram bench`).
pub fn engram_exe(given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => std::env::current_exe().context("locating the engram binary"),
    }
}

/// A path as one argument of a command line.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Writes a study's `results.json` and `report/index.html` under `out` in one atomic switch
/// (other entries of `out` are kept); returns the lines saying where they went.
pub fn commit_report(out: &Path, results: &impl serde::Serialize, html: &str) -> Result<String> {
    let staged = engram_ckpt::Staged::new(out)?;
    write_json(&staged.path().join("results.json"), results)?;
    std::fs::create_dir_all(staged.path().join("report"))?;
    engram_ckpt::write_atomic(&staged.path().join("report/index.html"), html.as_bytes())?;
    staged.commit(&|_| false)?;
    Ok(format!(
        "results: {}\nreport:  {}\n",
        out.join("results.json").display(),
        out.join("report/index.html").display()
    ))
}

/// Writes `v` as pretty JSON (with a final newline) to `path`, creating its folder; atomic.
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(v).context("serializing JSON")? + "\n";
    engram_ckpt::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A finished unit of work stored as `{settings, result}` (a study's `runs/`): its result
/// when the stored settings equal `settings`, else None (and then it is made again).
pub fn cached<T: serde::de::DeserializeOwned>(path: &Path, settings: &Value) -> Option<T> {
    let v = read_json(path).ok()?;
    if v.get("settings") != Some(settings) {
        return None;
    }
    serde_json::from_value(v.get("result")?.clone()).ok()
}

/// Stores a unit of work for [`cached`].
pub fn store(path: &Path, settings: &Value, result: &impl serde::Serialize) -> Result<()> {
    write_json(path, &json!({"settings": settings, "result": result}))
}

/// Removes a file or a folder with everything in it; nothing there is not an error.
pub fn remove(p: &Path) -> Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    } else if p.exists() {
        std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// `--clean`: removes the entries `names` a benchmark wrote in its folder `dir`, then `dir`
/// if that left it empty (and the shell is not in it). Nothing else there is removed: the
/// folder is the user's.
pub fn remove_owned(dir: &Path, names: &[String]) -> Result<()> {
    for n in names {
        remove(&dir.join(n))?;
    }
    let cwd = std::env::current_dir().and_then(|c| c.canonicalize());
    let real = dir.canonicalize();
    if !matches!((cwd, real), (Ok(c), Ok(r)) if c.starts_with(&r)) {
        // Fails, as it should, on a folder that still holds something.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Checks, before any work starts, that a results file can be written at `path` (`flag`
/// names the option in errors): it is not a folder, a FIFO, a socket or a device, and its
/// folder exists or can be created (nothing on the way is a file). A run then cannot fail
/// at its end, after all its work, on an output path it could have refused at once.
pub fn check_json_out(path: &Path, flag: &str) -> Result<()> {
    if path.file_name().is_none() {
        bail!("{flag} {}: not a file name", path.display());
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => bail!(
            "{flag} {}: output is {}, expected a file",
            path.display(),
            engram_ckpt::file::kind_of(&m)
        ),
        Ok(_) => {}
        // A file on the way is named by the folder check.
        Err(e) if absent(&e) => {}
        Err(e) => bail!("{flag} {}: {e}", path.display()),
    }
    check_folder_creatable(path.parent(), flag, path)
}

/// Nothing there (or a file on the way, found by looking further up).
fn absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    matches!(e.kind(), NotFound | NotADirectory)
}

/// Checks that folder `dir` (of output `out`) exists as a folder or can be created: its
/// nearest existing ancestor is a folder.
fn check_folder_creatable(dir: Option<&Path>, flag: &str, out: &Path) -> Result<()> {
    let mut cur = dir.filter(|p| !p.as_os_str().is_empty());
    while let Some(d) = cur {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(m) => bail!(
                "{flag} {}: {} is {}, not a folder",
                out.display(),
                d.display(),
                engram_ckpt::file::kind_of(&m)
            ),
            Err(e) if absent(&e) => {
                cur = d.parent().filter(|p| !p.as_os_str().is_empty());
            }
            Err(e) => bail!("{flag} {}: {}: {e}", out.display(), d.display()),
        }
    }
    Ok(())
}

/// Checks, before any work starts, that `dir` can be an output folder (`flag` names the
/// option): it is a folder or can be created.
pub fn check_out_dir(dir: &Path, flag: &str) -> Result<()> {
    check_folder_creatable(Some(dir), flag, dir)
}

/// `--clean` that also cleans when the run fails: runs `work`, then (if `clean`) `cleanup`,
/// whatever `work` returned. The run's error comes first; a cleanup error is reported after
/// a successful run.
pub fn with_clean<T>(
    clean: bool,
    work: impl FnOnce() -> Result<T>,
    cleanup: impl FnOnce() -> Result<()>,
) -> Result<T> {
    let r = work();
    if !clean {
        return r;
    }
    let c = cleanup();
    match (r, c) {
        (Err(e), Err(c)) => Err(e.context(format!("(and --clean failed: {c:#})"))),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(c)) => Err(c),
        (Ok(v), Ok(())) => Ok(v),
    }
}

/// Removes precisely what a run wrote under `dir`: the files `files` (relative paths), and in
/// each model folder of `model_dirs` (relative; written whole through
/// [`engram_ckpt::Staged`]) the files `is_output` names, then every folder on the way that
/// this left empty (deepest first). Nothing else is removed: a user's file inside one of the
/// run's folders stays, and so does its folder. A folder on the way that is a symlink is not
/// followed, and a path that is a folder where a file was written is left alone.
pub fn remove_precise(
    dir: &Path,
    files: &[String],
    model_dirs: &[String],
    is_output: &dyn Fn(&str) -> bool,
) -> Result<()> {
    // Each relative path's folders must be real folders under `dir`, not symlinks.
    let real_dirs = |rel: &Path| -> bool {
        let mut p = dir.to_path_buf();
        for c in rel.components() {
            p.push(c);
            if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                return false;
            }
        }
        true
    };
    let mut folders = std::collections::BTreeSet::new();
    let remove_file = |rel: &Path| -> Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !real_dirs(parent) {
            return Ok(());
        }
        let p = dir.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.is_dir() => {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        }
    };
    for f in files {
        let rel = Path::new(f);
        remove_file(rel)?;
        folders.extend(rel.ancestors().skip(1).map(Path::to_path_buf));
    }
    for d in model_dirs {
        let rel = Path::new(d);
        folders.extend(rel.ancestors().map(Path::to_path_buf));
        if !real_dirs(rel) {
            continue;
        }
        let abs = dir.join(rel);
        let names: Vec<String> = std::fs::read_dir(&abs)
            .with_context(|| format!("reading {}", abs.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| is_output(n))
            .collect();
        for n in names {
            remove_file(&rel.join(n))?;
        }
    }
    // Deepest first: a folder's path is longer than its parent's.
    let mut folders: Vec<PathBuf> = folders
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for f in folders {
        if real_dirs(&f) {
            // Fails, as it should, on a folder that still holds something.
            let _ = std::fs::remove_dir(dir.join(f));
        }
    }
    Ok(())
}

/// Bytes of the files directly in folder `p`.
pub fn dir_bytes(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

/// Reads every byte of `files` once, in 8 MiB blocks, in parallel; returns the bytes read.
pub fn read_all(files: &[PathBuf]) -> Result<u64> {
    const BLOCK: u64 = 8 << 20;
    let mut items = Vec::new();
    let mut handles = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let len = f.metadata()?.len();
        handles.push(f);
        let mut at = 0;
        while at < len {
            items.push((i, at, BLOCK.min(len - at)));
            at += BLOCK;
        }
    }
    items
        .par_iter()
        .map_init(
            || vec![0u8; BLOCK as usize],
            |buf, &(i, at, n)| -> Result<u64> {
                let b = &mut buf[..n as usize];
                handles[i]
                    .read_exact_at(b, at)
                    .with_context(|| format!("reading {}", files[i].display()))?;
                // The data is used, so the read cannot be skipped.
                std::hint::black_box(&*b);
                Ok(n)
            },
        )
        .sum()
}

/// Mean and sample standard deviation over seeds, with the extremes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(v: &[f64]) -> Spread {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Spread { mean, sd, min, max }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--clean` removes what the benchmark wrote, never a user's file beside it.
    #[test]
    fn clean_removes_only_the_benchmarks_entries() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("bench");
        std::fs::create_dir_all(dir.join("out/x")).unwrap();
        std::fs::write(dir.join("mine.txt"), "keep").unwrap();
        remove_owned(&dir, &["out".into(), "absent".into()]).unwrap();
        assert!(!dir.join("out").exists() && dir.join("mine.txt").is_file());
        std::fs::remove_file(dir.join("mine.txt")).unwrap();
        remove_owned(&dir, &[]).unwrap();
        assert!(!dir.exists(), "an emptied folder goes");
    }

    /// An output path that cannot be written is refused at once, before any work: a folder,
    /// a FIFO, a file where a folder must be; a new file in a new folder is fine.
    #[test]
    fn json_outputs_are_checked_before_any_work() {
        let d = tempfile::tempdir().unwrap();
        let folder = d.path().join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        let made = unsafe { libc_mkfifo(c.as_ptr(), 0o600) } == 0;
        let mut bad = vec![
            (folder.clone(), "a folder"),
            (file.join("x.json"), "not a folder"),
            (file.join("a/b/x.json"), "not a folder"),
        ];
        if made {
            bad.push((fifo.clone(), "FIFO"));
        }
        for (p, want) in bad {
            let e = check_json_out(&p, "--json-out").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("--json-out"), "{want}: {e}");
        }
        check_json_out(&file, "--json-out").unwrap();
        check_json_out(&d.path().join("new/deeper/x.json"), "--json-out").unwrap();
        check_json_out(Path::new("x.json"), "--json-out").unwrap();
        assert!(!d.path().join("new").exists(), "checking creates nothing");
        assert!(check_out_dir(&file, "--dir").is_err());
        check_out_dir(&folder, "--dir").unwrap();
    }

    // mkfifo(3), without a libc dependency.
    unsafe extern "C" {
        #[link_name = "mkfifo"]
        fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
    }

    /// `--clean` also cleans after a failed run, and the run's error is the one reported.
    #[test]
    fn clean_runs_also_when_the_run_fails() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("bench");
        let work = || -> Result<()> {
            std::fs::create_dir_all(dir.join("out")).unwrap();
            bail!("the benchmark failed")
        };
        let e = with_clean(true, work, || remove_owned(&dir, &["out".into()])).unwrap_err();
        assert_eq!(e.to_string(), "the benchmark failed");
        assert!(!dir.exists(), "--clean removed the failed run's outputs");
        let kept = with_clean(false, work, || remove_owned(&dir, &["out".into()]));
        assert!(
            kept.is_err() && dir.join("out").is_dir(),
            "no --clean, nothing removed"
        );
        assert_eq!(with_clean(true, || Ok(5), || Ok(())).unwrap(), 5);
        let e = with_clean(true, || Ok(5), || bail!("cleanup failed")).unwrap_err();
        assert_eq!(e.to_string(), "cleanup failed");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn files_round_trip_and_are_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/x.json");
        write_json(&p, &json!({"k": [1, 2]})).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));
        assert_eq!(read_json(&p).unwrap(), json!({"k": [1, 2]}));
        let big = d.path().join("big");
        std::fs::write(&big, vec![7u8; (8 << 20) + 5]).unwrap();
        assert_eq!(
            read_all(&[big.clone(), p.clone()]).unwrap(),
            (8 << 20) + 5 + p.metadata().unwrap().len()
        );
        assert_eq!(dir_bytes(d.path()).unwrap(), (8 << 20) + 5);
        remove(&d.path().join("a")).unwrap();
        remove(&d.path().join("a")).unwrap();
        assert!(!p.exists());
        assert!(peak_rss_bytes() > 0);
    }
}
