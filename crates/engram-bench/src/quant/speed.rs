//! The speed part of `engram bench quant` (BENCHMARKS.md B5): `engram quantize` (RTN per
//! channel, 4 bits) and `engram convert` to GGUF Q8_0 and Q4_0 on `engram synth` bf16
//! checkpoints, timed as child processes with their peak memory, against the `gguf` Python
//! package's numpy quantizer on the same tensors (quantization time only, reading excluded:
//! generous to the baseline) and against the read-and-write bound (the input read once from
//! a warm cache, the output's bytes written once), in the same run.
//! Targets: ≥ 10× the Python quantizer, ≥ 50 % of the bound for RTN, peak memory independent
//! of model size.

use super::Options;
use super::verdicts::{Verdict, verdict};
use crate::machine::{arg, engram_exe, measure};
use anyhow::{Context, Result, anyhow};
use engram_report::html::Page;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = include_str!("gguf_quant.py");

#[derive(Clone, Debug, Serialize)]
pub struct Case {
    /// `rtn4` (engram quantize), `q8_0` or `q4_0` (engram convert to GGUF).
    pub op: String,
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// Read-and-write bound seconds / engram seconds.
    pub share_of_bound: f64,
    /// The Python quantizer's seconds on the same tensors (GGUF types only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Size {
    pub size: String,
    pub params: u64,
    pub cases: Vec<Case>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedPart {
    pub sizes: Vec<Size>,
    /// Why the Python baseline is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_missing: Option<String>,
    pub threads: usize,
}

/// The Python with numpy and gguf: `--python`, else `target/pyenv/bin/python` (made by the
/// test suite's GGUF interoperability test) if it imports both.
fn python(o: &Options) -> Result<PathBuf, String> {
    let p = o
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/pyenv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import numpy, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(p)
    } else {
        Err(format!(
            "{} cannot import numpy and gguf (make it with `python3 -m venv target/pyenv && \
             target/pyenv/bin/pip install numpy gguf`, or pass --python)",
            p.display()
        ))
    }
}

fn bytes_of(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| bytes_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(p).map_or(0, |m| m.len())
    }
}

pub fn run(o: &Options, msg: &mut dyn FnMut(String)) -> Result<SpeedPart> {
    let exe = engram_exe(o.engram.as_deref())?;
    let sizes: Vec<String> = if !o.speed_sizes.is_empty() {
        o.speed_sizes.clone()
    } else if o.quick {
        vec!["tiny".into()]
    } else {
        vec!["small".into(), "1b".into()]
    };
    let py = python(o);
    let work = o.out.with_extension("work");
    crate::machine::check_out_dir(&work, "--out")?;
    std::fs::create_dir_all(&work)?;
    let mut out = Vec::new();
    for size in &sizes {
        let dir = work.join(format!("synth-{size}"));
        let model = dir.join("base/model.safetensors");
        if !model.exists() {
            msg(format!("speed: writing the synthetic {size} model"));
            measure(&[
                arg(&exe),
                "synth".into(),
                "-q".into(),
                "--size".into(),
                size.clone(),
                "-n".into(),
                "0".into(),
                "-o".into(),
                arg(&dir),
            ])?;
        }
        let in_bytes = bytes_of(&model);
        let params = engram_ckpt::Model::open(&model)?.param_count();
        let py_times = match &py {
            Ok(p) => {
                msg(format!(
                    "speed {size}: the gguf package quantizes Q8_0 and Q4_0"
                ));
                let r = Command::new(p)
                    .arg("-c")
                    .arg(SCRIPT)
                    .arg(&model)
                    .args(["q8_0", "q4_0"])
                    .output()
                    .context("running the Python baseline")?;
                if !r.status.success() {
                    return Err(anyhow!(
                        "the Python baseline failed: {}",
                        String::from_utf8_lossy(&r.stderr)
                    ));
                }
                Some(serde_json::from_slice::<serde_json::Value>(&r.stdout)?)
            }
            Err(_) => None,
        };
        let mut cases = Vec::new();
        for (op, file, flags) in [
            ("rtn4", "q.safetensors", vec!["quantize", "--bits", "4"]),
            ("q8_0", "q8.gguf", vec!["convert", "--dtype", "q8_0"]),
            ("q4_0", "q4.gguf", vec!["convert", "--dtype", "q4_0"]),
        ] {
            let dest = work.join(file);
            let mut cmd = vec![
                arg(&exe),
                "-q".into(),
                "--threads".into(),
                rayon::current_num_threads().to_string(),
            ];
            cmd.push(flags[0].into());
            cmd.push(arg(&model));
            cmd.extend(["-o".into(), arg(&dest)]);
            cmd.extend(flags[1..].iter().map(|s| s.to_string()));
            // One untimed run warms the page cache, as the bound's reads are warm.
            measure(&cmd)?;
            let m = measure(&cmd)?;
            let out_bytes = bytes_of(&dest);
            let (r, w) = crate::merge::bound(
                std::slice::from_ref(&model),
                out_bytes,
                &work.join("bound.tmp"),
            )?;
            crate::machine::remove(&dest)?;
            let python_seconds = py_times
                .as_ref()
                .and_then(|v| v.get(op))
                .and_then(|v| v.as_f64());
            let c = Case {
                op: op.into(),
                seconds: m.seconds,
                peak_rss_bytes: m.peak,
                in_bytes,
                out_bytes,
                share_of_bound: (r + w) / m.seconds,
                python_seconds,
                speedup: python_seconds.map(|p| p / m.seconds),
            };
            msg(format!(
                "speed {size} {op}: {:.2} s, {:.0} % of the read-and-write bound, peak {} MiB{}",
                c.seconds,
                100.0 * c.share_of_bound,
                c.peak_rss_bytes >> 20,
                c.speedup
                    .map_or(String::new(), |s| format!(", {s:.1}× the gguf package"))
            ));
            cases.push(c);
        }
        out.push(Size {
            size: size.clone(),
            params,
            cases,
        });
    }
    Ok(SpeedPart {
        sizes: out,
        python_missing: py.err(),
        threads: rayon::current_num_threads(),
    })
}

pub fn verdicts(s: &SpeedPart) -> Vec<Verdict> {
    let cases: Vec<(&Size, &Case)> = s
        .sizes
        .iter()
        .flat_map(|z| z.cases.iter().map(move |c| (z, c)))
        .collect();
    let sp: Vec<String> = cases
        .iter()
        .filter_map(|(z, c)| c.speedup.map(|x| format!("{} {} {x:.1}×", z.size, c.op)))
        .collect();
    let sp_ok = cases
        .iter()
        .filter_map(|(_, c)| c.speedup)
        .collect::<Vec<_>>();
    let rtn: Vec<String> = cases
        .iter()
        .filter(|(_, c)| c.op == "rtn4")
        .map(|(z, c)| format!("{} {:.0} %", z.size, 100.0 * c.share_of_bound))
        .collect();
    let rtn_ok = cases
        .iter()
        .filter(|(_, c)| c.op == "rtn4")
        .all(|(_, c)| c.share_of_bound >= 0.5);
    let peaks: Vec<(u64, u64)> = s
        .sizes
        .iter()
        .filter_map(|z| {
            z.cases
                .iter()
                .find(|c| c.op == "rtn4")
                .map(|c| (z.params, c.peak_rss_bytes))
        })
        .collect();
    let mem = match (peaks.first(), peaks.last()) {
        (Some(a), Some(b)) if peaks.len() > 1 && b.0 > a.0 => Some((a, b)),
        _ => None,
    };
    vec![
        verdict(
            "GGUF Q8_0/Q4_0 conversion is ≥ 10× the gguf package's numpy quantizer",
            (!sp_ok.is_empty()).then(|| sp_ok.iter().all(|x| *x >= 10.0)),
            if sp.is_empty() {
                s.python_missing.clone().unwrap_or_default()
            } else {
                sp.join(", ")
            },
        ),
        verdict(
            "engram quantize (RTN per channel, 4 bits) reaches ≥ 50 % of the read-and-write bound",
            (!rtn.is_empty()).then_some(rtn_ok),
            rtn.join(", "),
        ),
        verdict(
            "peak memory of engram quantize is independent of model size",
            mem.map(|(a, b)| (b.1 as f64) <= 1.5 * a.1 as f64),
            mem.map_or("one size measured".into(), |(a, b)| {
                format!(
                    "{:.2}B parameters: {} MiB; {:.2}B: {} MiB",
                    a.0 as f64 / 1e9,
                    a.1 >> 20,
                    b.0 as f64 / 1e9,
                    b.1 >> 20
                )
            }),
        ),
    ]
}

const HEADER: [&str; 8] = [
    "size",
    "operation",
    "engram s",
    "x bound",
    "peak MiB",
    "in → out MiB",
    "gguf package s",
    "speed-up",
];

fn rows(s: &SpeedPart) -> Vec<Vec<String>> {
    s.sizes
        .iter()
        .flat_map(|z| {
            z.cases.iter().map(move |c| {
                vec![
                    format!("{} ({:.2}B)", z.size, z.params as f64 / 1e9),
                    c.op.clone(),
                    format!("{:.2}", c.seconds),
                    format!("{:.2}", c.share_of_bound),
                    format!("{}", c.peak_rss_bytes >> 20),
                    format!("{} → {}", c.in_bytes >> 20, c.out_bytes >> 20),
                    c.python_seconds.map_or("-".into(), |p| format!("{p:.2}")),
                    c.speedup.map_or("-".into(), |p| format!("{p:.1}×")),
                ]
            })
        })
        .collect()
}

pub fn page(p: &mut Page, s: &SpeedPart) {
    p.heading("Speed");
    p.para(&format!(
        "engram with {} threads, timed as a child process (the second of two runs; warm cache). \
         \"x bound\" = (read the input once + write the output's bytes once) / engram's time. \
         The gguf package's time is its numpy quantizer alone on the same tensors.{}",
        s.threads,
        s.python_missing.as_ref().map_or(String::new(), |m| format!(
            " Python baseline not measured: {m}."
        ))
    ));
    p.table(&HEADER, &rows(s));
}

pub fn text(s: &SpeedPart) -> String {
    let mut t = String::from("speed\n");
    t.push_str(&format!(
        "{:<16}{:<10}{:>10}{:>9}{:>10}{:>18}{:>16}{:>10}\n",
        HEADER[0], HEADER[1], HEADER[2], HEADER[3], HEADER[4], HEADER[5], HEADER[6], HEADER[7]
    ));
    for r in rows(s) {
        t.push_str(&format!(
            "{:<16}{:<10}{:>10}{:>9}{:>10}{:>18}{:>16}{:>10}\n",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
        ));
    }
    t
}
