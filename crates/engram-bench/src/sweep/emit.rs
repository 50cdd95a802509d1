//! `engram sweep emit`: ready-to-submit scripts that hand a sweep folder's jobs file to the
//! engines people already have: a Slurm job array, GNU parallel (locally or over SSH), Ray.
//!
//! Every script runs the lines of RUNS/jobs.txt unchanged from RUNS/ (the same commands the
//! local runner runs), skips runs whose results exist, and appends each run's output to its
//! RUNS/<id>/log.txt. The lines are idempotent (`--if-needed`: a done run exits at once, an
//! interrupted one resumes from its checkpoint), so each script is safe to run twice.

use super::{IDS, JOBS, RESULTS, quote, read_jobs, read_plan};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Settings of the Slurm script.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// Array tasks running at once (`--array=0-N%LIMIT`).
    pub array_limit: Option<usize>,
    /// Jobs lines per array task, run one after the other (short runs share an allocation).
    pub pack: usize,
    pub partition: Option<String>,
    /// Time limit of one array task (Slurm's forms: MM, HH:MM:SS, D-HH:MM, ...).
    pub time: Option<String>,
    /// CPUs per array task (default: the plan's threads per run).
    pub cpus: Option<usize>,
}

/// Settings of the GNU parallel script.
#[derive(Clone, Debug, Default)]
pub struct ParallelOptions {
    /// Machines to run on (GNU parallel's `--sshloginfile`; `:` is this machine); RUNS/ must be
    /// at the same path on each, and the jobs lines' program on each one's PATH or path.
    pub sshloginfile: Option<PathBuf>,
    /// Runs at once on each machine (default: this machine's cores / threads per run).
    pub jobs: Option<usize>,
}

/// Which script.
#[derive(Clone, Debug)]
pub enum Engine {
    Slurm(SlurmOptions),
    Parallel(ParallelOptions),
    Ray,
}

/// A script written: where, and the command that submits it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Emitted {
    pub script: PathBuf,
    pub submit: String,
}

/// A value for an `#SBATCH` line: no spaces, quotes or line breaks (Slurm reads those lines
/// without a shell).
fn sbatch_word(flag: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/+@%".contains(&b))
    {
        bail!(
            "{flag} {v:?}: Slurm reads it in an #SBATCH line; use letters, digits and -_.,:/+@% only"
        );
    }
    Ok(())
}

/// Writes `text` to `path` atomically, executable.
fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    engram_ckpt::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Writes the script for `engine` into the sweep folder `runs`.
pub fn emit(runs: &Path, engine: &Engine) -> Result<Emitted> {
    let plan = read_plan(runs)?;
    read_jobs(runs, &plan)?;
    let ids = runs.join(IDS);
    if !ids.exists() {
        bail!("{} is missing; plan the sweep again", ids.display());
    }
    let abs = runs
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", runs.display()))?;
    let dir = abs.display().to_string();
    if dir.contains('\n') {
        bail!("{dir:?}: a sweep folder whose path holds a line break cannot be scripted");
    }
    let m = plan.runs.len();
    let name = plan.name.clone().unwrap_or_else(|| "sweep".into());
    let head = format!(
        "# engram sweep {} ({m} runs), written by engram {} from {}.\n\
         # Safe to run again: done runs are skipped, interrupted ones resume (--if-needed).\n\
         # The lines of jobs.txt run from the sweep folder, ENGRAM_SWEEP_DIR if set (where the\n\
         # folder is mounted elsewhere), else {dir}.\n",
        plan.name
            .as_deref()
            .map_or("(no name)".into(), |n| format!("{n:?}")),
        one_line(&plan.engram_version),
        one_line(&plan.sweep_file)
    );
    let cd = format!(
        "RUNS=${{ENGRAM_SWEEP_DIR:-{}}}\ncd \"$RUNS\"\n",
        quote(&dir)
    );
    let (file, text, submit) = match engine {
        Engine::Slurm(o) => {
            if o.pack == 0 {
                bail!("--pack must be at least 1");
            }
            let pack = o.pack;
            let tasks = m.div_ceil(pack);
            let cpus = o.cpus.unwrap_or(plan.threads_per_run);
            if cpus == 0 {
                bail!("--cpus must be at least 1");
            }
            sbatch_word("sweep folder", &dir)?;
            let mut sb = vec![
                format!("--job-name=engram-{name}"),
                match o.array_limit {
                    Some(0) => bail!("--array-limit must be at least 1"),
                    Some(n) => format!("--array=0-{}%{n}", tasks - 1),
                    None => format!("--array=0-{}", tasks - 1),
                },
                "--ntasks=1".into(),
                format!("--cpus-per-task={cpus}"),
                format!("--chdir={dir}"),
                "--output=slurm-%A_%a.out".into(),
            ];
            if let Some(p) = &o.partition {
                sbatch_word("--partition", p)?;
                sb.push(format!("--partition={p}"));
            }
            if let Some(t) = &o.time {
                if t.is_empty()
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
                {
                    bail!("--time {t:?}: a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS) expected");
                }
                sb.push(format!("--time={t}"));
            }
            let sbatch: String = sb.iter().map(|l| format!("#SBATCH {l}\n")).collect();
            let text = format!(
                "#!/bin/bash\n{sbatch}{head}\
                 # Array task i runs jobs lines i*{pack} .. i*{pack}+{} in order.\n\
                 set -u\n{cd}\
                 PACK={pack}\n\
                 i=${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch}}\n\
                 mapfile -t IDS < {IDS}\n\
                 mapfile -t LINES < {JOBS}\n\
                 status=0\n\
                 for ((k = i * PACK; k < (i + 1) * PACK && k < ${{#LINES[@]}}; k++)); do\n\
                 \x20 id=${{IDS[k]}}\n\
                 \x20 [ -e \"$id/{RESULTS}\" ] && continue\n\
                 \x20 echo \"==== slurm job ${{SLURM_ARRAY_JOB_ID:-?}}_$i on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)\" >> \"$id/log.txt\"\n\
                 \x20 if ! bash -c \"${{LINES[k]}}\" >> \"$id/log.txt\" 2>&1 || [ ! -e \"$id/{RESULTS}\" ]; then\n\
                 \x20   echo \"run $id failed: see $RUNS/$id/log.txt\" >&2\n\
                 \x20   status=1\n\
                 \x20 fi\n\
                 done\n\
                 exit $status\n",
                pack - 1
            );
            let f = abs.join("sweep.slurm");
            let submit = format!(
                "sbatch {}   (or sbatch --wait to wait for it)",
                quote(&f.display().to_string())
            );
            (f, text, submit)
        }
        Engine::Parallel(o) => {
            let jobs = match o.jobs {
                Some(0) => bail!("--jobs must be at least 1"),
                Some(n) => n,
                None => (super::runner::cores() / plan.threads_per_run.max(1)).max(1),
            };
            let ssh = match &o.sshloginfile {
                Some(f) => {
                    let f = std::path::absolute(f)
                        .with_context(|| format!("resolving {}", f.display()))?;
                    format!(
                        " --sshloginfile {} --workdir \"$RUNS\"",
                        quote(&f.display().to_string())
                    )
                }
                None => String::new(),
            };
            let text = format!(
                "#!/bin/bash\n{head}\
                 # GNU parallel's joblog (parallel.joblog) records the last pass. Each line runs\n\
                 # unless its run's results.json exists (no --resume-failed: the joblog matches\n\
                 # lines by number, so a sweep planned again would be matched against old lines).\n\
                 set -euo pipefail\n{cd}\
                 command -v parallel > /dev/null || {{ echo \"GNU parallel is not installed (apt-get install parallel)\" >&2; exit 2; }}\n\
                 parallel --will-cite --joblog \"$RUNS/parallel.joblog\" --jobs {jobs}{ssh} --link \\\n\
                 \x20 'test -e {{1}}/{RESULTS} || eval {{2}} >> {{1}}/log.txt 2>&1' :::: {IDS} :::: {JOBS} || true\n\
                 missing=0\n\
                 while read -r id; do [ -e \"$id/{RESULTS}\" ] || {{ echo \"run $id not done: see $RUNS/$id/log.txt\" >&2; missing=1; }}; done < {IDS}\n\
                 exit $missing\n"
            );
            let f = abs.join("sweep-parallel.sh");
            let submit = quote(&f.display().to_string());
            (f, text, submit)
        }
        Engine::Ray => {
            let text = format!(
                "#!/usr/bin/env python3\n{head}\
                 # One Ray job per run not done, submitted to the cluster at RAY_ADDRESS (JobSubmissionClient),\n\
                 # then waited for; exit status 1 if any failed. RUNS/ must be at the same path on the workers.\n\
                 import os, shlex, sys, time\n\
                 from ray.job_submission import JobStatus, JobSubmissionClient\n\
                 \n\
                 RUNS = os.environ.get(\"ENGRAM_SWEEP_DIR\", {pydir})\n\
                 CPUS = {threads}\n\
                 ids = open(os.path.join(RUNS, {IDS:?})).read().splitlines()\n\
                 lines = open(os.path.join(RUNS, {JOBS:?})).read().splitlines()\n\
                 todo = [(i, l) for i, l in zip(ids, lines) if not os.path.exists(os.path.join(RUNS, i, {RESULTS:?}))]\n\
                 print(f\"{{len(ids) - len(todo)}} of {{len(ids)}} runs done; submitting {{len(todo)}}\")\n\
                 if not todo:\n\
                 \x20   sys.exit(0)\n\
                 client = JobSubmissionClient(os.environ.get(\"RAY_ADDRESS\"))\n\
                 jobs = {{}}\n\
                 for i, line in todo:\n\
                 \x20   entry = f\"cd {{shlex.quote(RUNS)}} && ( {{line}} ) >> {{i}}/log.txt 2>&1\"\n\
                 \x20   jobs[i] = client.submit_job(entrypoint=entry, entrypoint_num_cpus=CPUS)\n\
                 done = {{JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}}\n\
                 failed = []\n\
                 while jobs:\n\
                 \x20   for i, sub in list(jobs.items()):\n\
                 \x20       st = client.get_job_status(sub)\n\
                 \x20       if st in done:\n\
                 \x20           del jobs[i]\n\
                 \x20           ok = st == JobStatus.SUCCEEDED and os.path.exists(os.path.join(RUNS, i, {RESULTS:?}))\n\
                 \x20           print(f\"{{'done' if ok else 'failed'}} {{i}} ({{st}})\", flush=True)\n\
                 \x20           if not ok:\n\
                 \x20               failed.append(i)\n\
                 \x20   if jobs:\n\
                 \x20       time.sleep(2)\n\
                 for i in failed:\n\
                 \x20   print(f\"run {{i}} failed: see {{os.path.join(RUNS, i, 'log.txt')}}\", file=sys.stderr)\n\
                 sys.exit(1 if failed else 0)\n",
                threads = plan.threads_per_run,
                pydir = serde_json::to_string(&dir)?
            );
            let f = abs.join("sweep_ray.py");
            let submit = format!(
                "RAY_ADDRESS=http://HEAD:8265 python3 {}",
                quote(&f.display().to_string())
            );
            (f, text, submit)
        }
    };
    write_script(&file, &text)?;
    Ok(Emitted {
        script: file,
        submit,
    })
}

/// A value from the plan written into a script's comment: quoted and escaped when it holds
/// anything but printable characters, so that a line break in a path cannot end the comment
/// and become a command.
fn one_line(v: &str) -> String {
    match v.chars().any(char::is_control) {
        true => format!("{v:?}"),
        false => v.to_string(),
    }
}
