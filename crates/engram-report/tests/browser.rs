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

/// Many runs: 3 scenarios × 6 strategies (long names, the baseline, the upper bound) × 3
/// seeds, 12 tasks each, every metric reported.
fn many_runs() -> Vec<RunResults> {
    let t = 12;
    let tasks: Vec<String> = (0..t)
        .map(|i| format!("classes {}/{}", 2 * i, 2 * i + 1))
        .collect();
    let strategies = [
        "naive",
        "joint",
        "ewc",
        "der++ with a class-balanced reservoir buffer of 2000 examples (alpha 0.3, beta 0.5)",
        "online-ewc-lambda-10000-gamma-1.0-fisher-exact-samples-1000-fisher-batch-128",
        "lift",
    ];
    let mut out = Vec::new();
    for (si, scenario) in [
        "class-incremental fashion-mnist (12x2)",
        "permuted fashion-mnist (12 tasks)",
        "task-incremental fashion-mnist (12x2)",
    ]
    .iter()
    .enumerate()
    {
        for (k, strategy) in strategies.iter().enumerate() {
            for seed in 0..3u64 {
                let x = (si * 7 + k * 13 + seed as usize * 5) as f64;
                let matrix: Vec<Vec<f64>> = (0..t)
                    .map(|row| {
                        (0..t)
                            .map(|i| {
                                if i > row {
                                    10.0
                                } else {
                                    (95.0 - (row - i) as f64 * (3.0 + k as f64) - x % 7.0).max(0.0)
                                }
                            })
                            .collect()
                    })
                    .collect();
                out.push(RunResults {
                    name: format!("{strategy}-{si}-s{seed}"),
                    strategy: strategy.to_string(),
                    scenario: scenario.to_string(),
                    eval_mode: "class-il".into(),
                    seed,
                    tasks: tasks.clone(),
                    accuracy: matrix,
                    task_il_accuracy: None,
                    baseline: None,
                    summary: RunSummary {
                        acc: Some(30.0 + 9.0 * k as f64 + x % 5.0),
                        aia: Some(50.0 + 4.0 * k as f64 - x % 3.0),
                        forgetting: Some(60.0 - 8.0 * k as f64 + x % 4.0),
                        bwt: Some(-60.0 + 8.0 * k as f64 - x % 4.0),
                        fwt: Some(-(x % 9.0)),
                        min_accuracy: Some(x % 30.0),
                        ece: Some(5.0 + x % 11.0),
                        time_per_task_s: vec![100.0 + x; t],
                        peak_memory_bytes: Some((200 + k as u64 * 300) << 20),
                        state_bytes: Some((k as u64 * 5000) << 10),
                        ..Default::default()
                    },
                    all_class_curve: None,
                    ece_curve: None,
                    ece_matrix: None,
                    notes: Vec::new(),
                    params: serde_json::json!({"config": {
                        "name": format!("{strategy}-{si}-s{seed}"),
                        "seed": seed,
                        "strategy": {"name": strategy, "lambda": 10000.0, "schedule": [1, 2, 3]},
                        "train": {"epochs": 2, "optimizer": {"kind": "adam", "lr": 0.001}},
                        "model": {"kind": "mlp", "hidden": [400, 400]},
                        "scenario": {"kind": "class-incremental", "dataset": "fashion-mnist"}
                    }, "model_params": 478410}),
                });
            }
        }
    }
    out
}

/// What the page measures of itself in the browser: a script added to a copy of the page
/// writes it into the DOM, and `--dump-dom` brings it out.
const MEASURE: &str = r#"<script>(function(){
var d=document.documentElement,o={doc:d.scrollWidth,view:d.clientWidth,inner:window.innerWidth,
clipped:[],small:[],cells:0,tables:0,scrolling:[]};
document.querySelectorAll('td,th,td *,th *,figcaption').forEach(function(e){
 o.cells++;
 if(e.scrollWidth>e.clientWidth+1&&getComputedStyle(e).display!=='inline')o.clipped.push(e.textContent.slice(0,50));
 var f=parseFloat(getComputedStyle(e).fontSize);if(f<12)o.small.push(f+'px: '+e.textContent.slice(0,50));});
document.querySelectorAll('table.marked').forEach(function(t){o.tables++;var b=t.parentElement;
 if(b.scrollWidth>b.clientWidth+1)o.scrolling.push(b.scrollWidth+' > '+b.clientWidth);});
var p=document.createElement('pre');p.id='measure';p.hidden=true;p.textContent=JSON.stringify(o);
document.body.appendChild(p);})();</script>"#;

/// Decodes the text of `<pre id="measure">` from a dumped DOM.
fn measurement(dom: &str) -> serde_json::Value {
    let start = dom
        .find("id=\"measure\"")
        .expect("the measuring script ran");
    let text = &dom[start..];
    let text = &text[text.find('>').unwrap() + 1..text.find("</pre>").unwrap()];
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap()
}

/// Non-white pixels and distinct colours of a PNG screenshot of `w` × `h`.
fn ink(shot: &Path, w: usize, h: usize) -> (usize, usize) {
    let decoder = png::Decoder::new(BufReader::new(File::open(shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width as usize, info.height as usize), (w, h));
    let channels = info.color_type.samples();
    let mut colours = HashSet::new();
    let mut non_white = 0;
    for px in buf[..w * h * channels].chunks_exact(channels) {
        colours.insert((px[0], px[1], px[2]));
        if px[0] < 245 || px[1] < 245 || px[2] < 245 {
            non_white += 1;
        }
    }
    (non_white, colours.len())
}

#[test]
fn report_fits_desktop_and_laptop_widths() {
    let Some(bin) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let results = many_runs();
    let paths = write_report(&results, dir.path()).unwrap();
    let html = std::fs::read_to_string(&paths[0]).unwrap();
    let probe = dir.path().join("measure.html");
    std::fs::write(
        &probe,
        html.replace("</body>", &format!("{MEASURE}</body>")),
    )
    .unwrap();
    let keep = std::env::var_os("ENGRAM_REPORT_KEEP").map(PathBuf::from);
    for (w, h) in [(1920usize, 1080usize), (1366, 768)] {
        let out = run_chromium(
            &bin,
            &["--dump-dom".into(), format!("--window-size={w},{h}")],
            &format!("file://{}", probe.display()),
        );
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "chromium --dump-dom failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let m = measurement(&dom);
        let num = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k}: {m}"));
        assert_eq!(num("inner"), w as u64, "the viewport is the window: {m}");
        // The page is never wider than the window (no horizontal scrolling of the page).
        assert!(
            num("doc") <= num("view"),
            "{w}x{h}: page wider than the window: {m}"
        );
        // Every results table is there, and at these widths none needs to scroll.
        assert_eq!(num("tables"), 6, "{m}");
        assert_eq!(m["scrolling"], serde_json::json!([]), "{w}x{h}: {m}");
        assert_eq!(
            m["clipped"],
            serde_json::json!([]),
            "{w}x{h}: clipped cells: {m}"
        );
        assert_eq!(
            m["small"],
            serde_json::json!([]),
            "{w}x{h}: text under 12 px: {m}"
        );
        assert!(num("cells") > 500, "{m}");

        let shot = dir.path().join(format!("shot-{w}x{h}.png"));
        let out = run_chromium(
            &bin,
            &[
                format!("--screenshot={}", shot.display()),
                format!("--window-size={w},{h}"),
                "--hide-scrollbars".into(),
            ],
            &format!("file://{}", paths[0].display()),
        );
        assert!(
            out.status.success() && shot.exists(),
            "chromium --screenshot failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (non_white, colours) = ink(&shot, w, h);
        assert!(
            non_white > w * h / 50,
            "{w}x{h}: only {non_white} pixels not white"
        );
        assert!(colours > 16, "{w}x{h}: only {colours} colours");
        if let Some(keep) = &keep {
            let wide = keep.join("many");
            std::fs::create_dir_all(&wide).unwrap();
            std::fs::copy(&shot, wide.join(shot.file_name().unwrap())).unwrap();
            std::fs::copy(&paths[0], wide.join("index.html")).unwrap();
        }
    }
}
