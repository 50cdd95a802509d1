//! Opens a generated report in headless Chromium: (1) the rendered DOM holds the charts
//! (heatmap cells, lines, bars); (2) a screenshot is not blank (many colours, coloured chart
//! pixels). Needs Chromium (`apt-get install chromium`); `ENGRAM_SKIP_BROWSER=1` skips.
//! `ENGRAM_REPORT_KEEP=<dir>` copies the report and the screenshot there for a look.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use engram_report::{RunResults, RunSummary, write_report};

fn chromium() -> Option<PathBuf> {
    if std::env::var("ENGRAM_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("ENGRAM_SKIP_BROWSER=1: browser test skipped");
        return None;
    }
    let bin = std::env::var_os("ENGRAM_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.exists(),
        "{} not found: install Chromium with `apt-get install chromium` (Debian package \
         `chromium`), point ENGRAM_CHROMIUM at a binary, or set ENGRAM_SKIP_BROWSER=1",
        bin.display()
    );
    Some(bin)
}

/// Runs headless Chromium on `url` with `extra` flags and a fresh profile; kills it after
/// two minutes.
fn run_chromium(bin: &Path, extra: &[String], url: &str) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s: {extra:?} {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Two small synthetic runs on one scenario: 4 tasks, one with Task-IL accuracies and a long
/// all-class curve.
fn runs() -> Vec<RunResults> {
    let tasks: Vec<String> = ["0/1", "2/3", "4/5", "6/7"].map(String::from).to_vec();
    let matrix = |decay: f64| -> Vec<Vec<f64>> {
        (0..4)
            .map(|k| {
                (0..4)
                    .map(|i| {
                        if i > k {
                            10.0 + 2.0 * i as f64
                        } else {
                            (97.0 - decay * (k - i) as f64 - i as f64).max(0.0)
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let summary = |acc: f64, f: f64| RunSummary {
        acc: Some(acc),
        aia: Some(acc + 8.0),
        forgetting: Some(f),
        bwt: Some(-f),
        fwt: Some(0.5),
        min_accuracy: Some(acc - 20.0),
        ece: Some(7.5),
        time_per_task_s: vec![1.5, 1.6, 1.4, 1.7],
        peak_memory_bytes: Some(180 << 20),
        state_bytes: Some(2 << 20),
        ..Default::default()
    };
    let mut naive = RunResults {
        name: "naive-seed0".into(),
        strategy: "naive".into(),
        scenario: "split-synth".into(),
        eval_mode: "class-il".into(),
        seed: 0,
        tasks: tasks.clone(),
        accuracy: matrix(30.0),
        task_il_accuracy: None,
        baseline: Some(vec![10.0, 10.0, 10.0, 10.0]),
        summary: summary(52.0, 45.0),
        all_class_curve: None,
        ece_curve: None,
        ece_matrix: None,
        notes: Vec::new(),
        params: serde_json::json!({"lr": 0.01, "epochs": 1}),
    };
    naive.all_class_curve = Some(
        (0..400)
            .map(|j| {
                20.0 + 60.0 * (1.0 - (-(j as f64) / 120.0).exp()) + 8.0 * ((j % 40) as f64 / 40.0)
            })
            .collect(),
    );
    let ewc = RunResults {
        name: "ewc-seed0".into(),
        strategy: "ewc <λ=100>".into(),
        task_il_accuracy: Some(matrix(4.0)),
        accuracy: matrix(12.0),
        summary: summary(71.0, 18.0),
        all_class_curve: None,
        ece_curve: None,
        ece_matrix: None,
        notes: Vec::new(),
        params: serde_json::json!({"lambda": 100.0}),
        ..naive.clone()
    };
    vec![naive, ewc]
}

#[test]
fn report_renders_in_chromium() {
    let Some(bin) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let results = runs();
    let paths = write_report(&results, dir.path()).unwrap();
    let index = &paths[0];
    assert!(index.ends_with("index.html"));
    let url = format!("file://{}", index.display());

    // (1) The DOM after rendering holds every chart element.
    let out = run_chromium(&bin, &["--dump-dom".into()], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Heatmaps: 2 runs × 16 cells + the Task-IL matrix of 16.
    assert_eq!(dom.matches("class=\"cell\"").count(), 48, "{dom}");
    // Per-task curves: 4 per run, plus the all-class curve.
    assert_eq!(dom.matches("class=\"line\"").count(), 9);
    // Two grouped charts × two strategies × two series.
    assert_eq!(dom.matches("class=\"bar\"").count(), 8);
    assert_eq!(dom.matches("<svg").count(), 2 + 2 * 2 + 1 + 1);
    assert!(dom.contains("ewc &lt;λ=100&gt;"));
    assert!(!dom.contains("<script"));

    // (2) A screenshot is not blank.
    let shot = dir.path().join("shot.png");
    let out = run_chromium(
        &bin,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,2000".into(),
            "--hide-scrollbars".into(),
        ],
        &url,
    );
    assert!(
        out.status.success() && shot.exists(),
        "chromium --screenshot failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(keep) = std::env::var_os("ENGRAM_REPORT_KEEP") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for p in paths.iter().chain([&shot]) {
            std::fs::copy(p, keep.join(p.file_name().unwrap())).unwrap();
        }
    }
    let decoder = png::Decoder::new(BufReader::new(File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    assert_eq!((w, h), (1200, 2000));
    let channels = info.color_type.samples();
    assert!(
        channels >= 3 && info.bit_depth == png::BitDepth::Eight,
        "{info:?}"
    );
    let mut colours = HashSet::new();
    let (mut non_white, mut chart) = (0usize, 0usize);
    for px in buf[..w * h * channels].chunks_exact(channels) {
        let (r, g, b) = (px[0], px[1], px[2]);
        colours.insert((r, g, b));
        if r < 245 || g < 245 || b < 245 {
            non_white += 1;
        }
        // Saturated pixels come from the charts only (text and rules are grey).
        if r.max(g).max(b) - r.min(g).min(b) > 60 {
            chart += 1;
        }
    }
    let total = w * h;
    assert!(
        colours.len() > 200,
        "only {} distinct colours",
        colours.len()
    );
    assert!(
        non_white > total / 50,
        "only {non_white} of {total} pixels are not white"
    );
    assert!(chart > 20_000, "only {chart} coloured chart pixels");
}
