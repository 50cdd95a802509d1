//! Hand-written SVG charts (no dependency, no script): bar charts, grouped bar charts,
//! accuracy-matrix heatmaps, line charts and labelled scatter plots.
//!
//! Every data mark carries a class (`bar`, `cell`, `line`, `point`, `err`, `legend`) so tests
//! and style sheets can find it; text is escaped; numbers are printed with fixed decimals,
//! so the same input always gives the same bytes.

use crate::html::esc;

/// A vertical bar chart of labelled values.
pub fn bar_chart(title: &str, labels: &[String], values: &[f64], y_label: &str) -> String {
    let (w, h, left, bottom, top) = (640.0, 300.0, 70.0, 50.0, 30.0);
    let max = values.iter().cloned().fold(0.0f64, f64::max).max(1e-12);
    let n = values.len().max(1) as f64;
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let bw = plot_w / n * 0.8;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{}</title>",
        esc(title)
    );
    s.push_str(&format!(
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        w / 2.0,
        esc(title)
    ));
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom,
        h - bottom,
        w - 20.0,
        h - bottom
    ));
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = h - bottom - plot_h * k as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            left - 4.0,
            y + 3.0,
            short(v)
        ));
    }
    s.push_str(&format!(
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(y_label)
    ));
    for (i, (l, v)) in labels.iter().zip(values).enumerate() {
        let x = left + plot_w * (i as f64 + 0.1) / n;
        let bh = plot_h * v / max;
        s.push_str(&format!(
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"#4878b0\"><title>{}: {}</title></rect>",
            h - bottom - bh,
            esc(l),
            short(*v)
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            x + bw / 2.0,
            h - bottom + 14.0,
            esc(l)
        ));
    }
    s.push_str("</svg>");
    s
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Ten distinct colours (Tableau 10), cycled for series.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn open_svg(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" font-family=\"system-ui,sans-serif\"><title>{t}</title><text x=\"{:.1}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{t}</text>",
        w / 2.0,
        t = esc(title)
    )
}

/// Cuts a label to `max` characters, ending it with an ellipsis when cut.
fn fit(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Linear interpolation through the viridis colour map, `t` in [0, 1].
fn viridis(t: f64) -> (u8, u8, u8) {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let j = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - j as f64;
    let (a, b) = (STOPS[j], STOPS[j + 1]);
    let mix = |u: f64, v: f64| (u + (v - u) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Axis bounds widened to a round step and the step: about `target` intervals.
fn nice_range(lo: f64, hi: f64, target: usize) -> (f64, f64, f64) {
    let (lo, hi) = if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// Tick label of `v` on an axis of step `step`: just enough decimals, never "-0".
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    if v.abs() >= 1e4 {
        return short(v);
    }
    let t = format!("{v:.decimals$}");
    // A value that rounds to zero prints as "0", not "-0".
    match t.strip_prefix('-') {
        Some(z) if z.chars().all(|c| c == '0' || c == '.') => z.to_string(),
        _ => t,
    }
}

/// Accuracy-matrix heatmap: `values[k][i]` (percent, 0..100) for rows k = "after training
/// task k" and columns i = "evaluated on task i". Cells above the diagonal (tasks not trained
/// yet) are drawn lighter with a dashed border. Each cell is `class="cell"`; the value is
/// printed in it when cells are large enough (always in its tooltip).
pub fn accuracy_heatmap(title: &str, tasks: &[String], values: &[Vec<f64>]) -> String {
    let t = values.len();
    let cell = (440.0 / t.max(1) as f64).clamp(12.0, 56.0).floor();
    let (left, top) = (96.0, 62.0);
    let grid = cell * t as f64;
    let legend_x = left + grid + 24.0;
    let w = (legend_x + 70.0).max(360.0);
    let h = top + grid + 44.0;
    let mut s = open_svg(w, h, title);
    let label =
        |i: usize| -> String { tasks.get(i).cloned().unwrap_or_else(|| (i + 1).to_string()) };
    let max_chars = ((cell / 7.0).floor() as usize).max(2);
    // Axis titles.
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"36\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">evaluated on task i</text>",
        left + grid / 2.0
    ));
    s.push_str(&format!(
        "<text x=\"14\" y=\"{y:.1}\" transform=\"rotate(-90 14 {y:.1})\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">after training task k</text>",
        y = top + grid / 2.0
    ));
    let show_labels = cell >= 14.0;
    for i in 0..t {
        let c = left + cell * (i as f64 + 0.5);
        if show_labels {
            s.push_str(&format!(
                "<text x=\"{c:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}<title>{}</title></text>",
                top - 6.0,
                esc(&fit(&label(i), max_chars)),
                esc(&label(i))
            ));
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}<title>{}</title></text>",
                left - 6.0,
                top + cell * (i as f64 + 0.5) + 3.5,
                esc(&fit(&label(i), 10)),
                esc(&label(i))
            ));
        }
    }
    let font = (cell / 3.4).min(12.0);
    for (k, row) in values.iter().enumerate() {
        for (i, &v) in row.iter().enumerate().take(t) {
            let (x, y) = (left + cell * i as f64, top + cell * k as f64);
            let upper = i > k;
            let ok = v.is_finite();
            let rgb = viridis(v / 100.0);
            let fill = if ok { hex(rgb) } else { "#dddddd".to_string() };
            let extra = if upper {
                " fill-opacity=\"0.35\" stroke=\"#999\" stroke-dasharray=\"3 2\""
            } else {
                " stroke=\"#fff\""
            };
            let shown = if ok { format!("{v:.1}") } else { "–".into() };
            s.push_str(&format!(
                "<rect class=\"cell\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{fill}\"{extra}><title>after task {}, on task {}: {}</title></rect>",
                esc(&label(k)),
                esc(&label(i)),
                shown
            ));
            if cell >= 24.0 {
                // Luminance decides black or white text; light cells (upper) take dark text.
                let lum = 0.299 * rgb.0 as f64 + 0.587 * rgb.1 as f64 + 0.114 * rgb.2 as f64;
                let ink = if upper || !ok {
                    "#555"
                } else if lum < 140.0 {
                    "#fff"
                } else {
                    "#111"
                };
                let text = if !ok {
                    "–".to_string()
                } else if cell >= 40.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                };
                s.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"{font:.1}\" fill=\"{ink}\">{text}</text>",
                    x + cell / 2.0,
                    y + cell / 2.0 + font * 0.35
                ));
            }
        }
    }
    // Colour bar, 0 at the bottom, 100 at the top.
    let steps = 10;
    let sh = grid.max(100.0) / steps as f64;
    for j in 0..steps {
        let v = 100.0 * (j as f64 + 0.5) / steps as f64;
        s.push_str(&format!(
            "<rect class=\"legend\" x=\"{legend_x:.1}\" y=\"{:.1}\" width=\"14\" height=\"{:.1}\" fill=\"{}\"/>",
            top + sh * (steps - 1 - j) as f64,
            sh + 0.5,
            hex(viridis(v / 100.0))
        ));
    }
    for (v, y) in [
        (100, top),
        (50, top + sh * steps as f64 / 2.0),
        (0, top + sh * steps as f64),
    ] {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{v}%</text>",
            legend_x + 18.0,
            y + 3.5
        ));
    }
    s.push_str("</svg>");
    s
}

/// One polyline of a [`line_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y) points in drawing order; non-finite points (and x ≤ 0 on a log axis) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Axes and options of a [`line_chart`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (decades).
    pub log_x: bool,
    /// Fixed y range (e.g. 0..100 for accuracies); otherwise from the data.
    pub y_range: Option<(f64, f64)>,
    /// Integer x ticks only (task counts).
    pub integer_x: bool,
}

/// A line chart: one `class="line"` polyline per series, markers (`class="point"`) when a
/// series has at most 40 points, and a legend (`class="legend"`) when there are two or more
/// series. Long curves (hundreds of points) are fine; `log_x` spreads out their start.
pub fn line_chart(spec: &LineChart, series: &[Series]) -> String {
    let (w, h, left, bottom, top) = (640.0, 320.0, 62.0, 46.0, 32.0);
    let legend = series.len() > 1;
    let right = if legend { 150.0 } else { 20.0 };
    let plot_w = w - left - right;
    let plot_h = h - bottom - top;
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!spec.log_x || x > 0.0);
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(usable).collect())
        .collect();
    let all = pts.iter().flatten();
    let (mut x0, mut x1) = all
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = spec.y_range.unwrap_or_else(|| {
        all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        })
    });
    let empty = !x0.is_finite();
    if empty {
        (x0, x1) = (if spec.log_x { 1.0 } else { 0.0 }, 1.0);
    }
    let (y0, y1, ystep) = if y0.is_finite() && y1.is_finite() {
        nice_range(y0, y1, 5)
    } else {
        nice_range(0.0, 1.0, 5)
    };
    let mut s = open_svg(w, h, &spec.title);
    // x axis: [xa, xb] in axis units (log10 x on a log axis) and its ticks.
    let ax = |x: f64| if spec.log_x { x.log10() } else { x };
    let (xa, xb, x_ticks): (f64, f64, Vec<(f64, String)>) = if spec.log_x {
        let l0 = x0.log10().floor();
        let l1 = x1.log10().ceil().max(l0 + 1.0);
        let ticks = (l0 as i32..=l1 as i32)
            .map(|e| {
                let v = 10f64.powi(e);
                (v, short_int(v))
            })
            .collect();
        (l0, l1, ticks)
    } else {
        let (a, b, mut step) = if spec.integer_x && x1 - x0 <= 12.0 {
            (x0.floor(), x1.ceil().max(x0.floor() + 1.0), 1.0)
        } else {
            nice_range(x0, x1, 6)
        };
        if spec.integer_x {
            step = step.max(1.0).round();
        }
        let n = ((b - a) / step + 1e-9).floor() as usize;
        let ticks = (0..=n)
            .map(|j| {
                let v = a + step * j as f64;
                (v, tick_label(v, step))
            })
            .collect();
        (a, b, ticks)
    };
    let fx = |x: f64| left + plot_w * (ax(x) - xa) / (xb - xa);
    let fy = |y: f64| top + plot_h * (1.0 - (y - y0) / (y1 - y0));
    // Grid and axes.
    let mut v = y0;
    while v <= y1 + ystep * 1e-9 {
        let y = fy(v);
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            left + plot_w,
            left - 5.0,
            y + 3.5,
            tick_label(v, ystep)
        ));
        v += ystep;
    }
    for (v, l) in &x_ticks {
        let x = fx(*v);
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            top + plot_h,
            top + plot_h + 4.0,
            top + plot_h + 15.0,
            esc(l)
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b:.1}\" stroke=\"#444\"/><line x1=\"{left}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"#444\"/>",
        left + plot_w,
        b = top + plot_h
    ));
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
        left + plot_w / 2.0,
        h - 8.0,
        esc(&spec.x_label)
    ));
    s.push_str(&format!(
        "<text x=\"14\" y=\"{y:.1}\" transform=\"rotate(-90 14 {y:.1})\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
        esc(&spec.y_label),
        y = top + plot_h / 2.0
    ));
    if empty {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#888\">no data</text>",
            left + plot_w / 2.0,
            top + plot_h / 2.0
        ));
    }
    for (j, (ser, p)) in series.iter().zip(&pts).enumerate() {
        if p.is_empty() {
            continue;
        }
        let colour = PALETTE[j % PALETTE.len()];
        let coords: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", fx(x), fy(y)))
            .collect();
        s.push_str(&format!(
            "<polyline class=\"line\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"{}\"><title>{}</title></polyline>",
            coords.join(" "),
            esc(&ser.label)
        ));
        if p.len() <= 40 {
            for &(x, y) in p {
                s.push_str(&format!(
                    "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}: {} → {:.2}</title></circle>",
                    fx(x),
                    fy(y),
                    esc(&ser.label),
                    short(x),
                    y
                ));
            }
        }
    }
    if legend {
        let lx = left + plot_w + 14.0;
        let max_rows = ((plot_h / 16.0).floor() as usize).max(1);
        for (j, ser) in series.iter().enumerate().take(max_rows) {
            let y = top + 8.0 + 16.0 * j as f64;
            let colour = PALETTE[j % PALETTE.len()];
            let label = if j + 1 == max_rows && series.len() > max_rows {
                format!("… {} more", series.len() - j)
            } else {
                fit(&ser.label, 18)
            };
            s.push_str(&format!(
                "<g class=\"legend\"><line x1=\"{lx:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}<title>{}</title></text></g>",
                lx + 18.0,
                lx + 23.0,
                y + 3.5,
                esc(&label),
                esc(&ser.label)
            ));
        }
    }
    s.push_str("</svg>");
    s
}

/// Powers of ten as short labels: 1, 10, 100, 1k, 10k, 1M.
fn short_int(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// Grouped bars: `values[g][s]` is the bar of series `s` in group `g` (e.g. groups =
/// strategies, series = forgetting and BWT); `None` draws no bar. `errors[g][s]`, when given,
/// draws a ±error whisker (`class="err"`). Negative values grow down from a zero line. Each
/// bar is `class="bar"`.
pub fn grouped_bar_chart(
    title: &str,
    groups: &[String],
    series: &[String],
    values: &[Vec<Option<f64>>],
    errors: Option<&[Vec<Option<f64>>]>,
    y_label: &str,
) -> String {
    let legend = series.len() > 1;
    let (left, bottom, top) = (62.0, 50.0, 32.0);
    let right = if legend { 140.0 } else { 20.0 };
    let w = (left + right + 80.0 * groups.len() as f64).clamp(420.0, 960.0);
    let h = 320.0;
    let plot_w = w - left - right;
    let plot_h = h - bottom - top;
    let get = |m: &[Vec<Option<f64>>], g: usize, j: usize| {
        m.get(g)
            .and_then(|r| r.get(j))
            .copied()
            .flatten()
            .filter(|v| v.is_finite())
    };
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for g in 0..groups.len() {
        for j in 0..series.len() {
            if let Some(v) = get(values, g, j) {
                let e = errors.and_then(|e| get(e, g, j)).unwrap_or(0.0).abs();
                lo = lo.min(v - e);
                hi = hi.max(v + e);
            }
        }
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let (lo, hi, step) = nice_range(lo, hi, 5);
    let fy = |v: f64| top + plot_h * (1.0 - (v - lo) / (hi - lo));
    let mut s = open_svg(w, h, title);
    let mut v = lo;
    while v <= hi + step * 1e-9 {
        let y = fy(v);
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            left + plot_w,
            left - 5.0,
            y + 3.5,
            tick_label(v, step)
        ));
        v += step;
    }
    s.push_str(&format!(
        "<text x=\"14\" y=\"{y:.1}\" transform=\"rotate(-90 14 {y:.1})\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
        esc(y_label),
        y = top + plot_h / 2.0
    ));
    let ng = groups.len().max(1) as f64;
    let gw = plot_w / ng;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    let zero = fy(0.0);
    let max_chars = ((gw / 6.5).floor() as usize).max(3);
    for (g, name) in groups.iter().enumerate() {
        let gx = left + gw * g as f64 + gw * 0.1;
        for (j, ser) in series.iter().enumerate() {
            let Some(v) = get(values, g, j) else {
                continue;
            };
            let x = gx + bw * j as f64;
            let (y, bh) = if v >= 0.0 {
                (fy(v), zero - fy(v))
            } else {
                (zero, fy(v) - zero)
            };
            let colour = PALETTE[j % PALETTE.len()];
            let err = errors.and_then(|e| get(e, g, j));
            let tip = match err {
                Some(e) => format!("{}, {}: {v:.2} ± {:.2}", name, ser, e.abs()),
                None => format!("{}, {}: {v:.2}", name, ser),
            };
            s.push_str(&format!(
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{}</title></rect>",
                bw * 0.92,
                esc(&tip)
            ));
            if let Some(e) = err {
                let cx = x + bw * 0.46;
                let (ya, yb) = (fy(v + e.abs()), fy(v - e.abs()));
                s.push_str(&format!(
                    "<path class=\"err\" d=\"M{cx:.1} {ya:.1}V{yb:.1}M{:.1} {ya:.1}H{:.1}M{:.1} {yb:.1}H{:.1}\" stroke=\"#222\" fill=\"none\"/>",
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                ));
            }
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}<title>{}</title></text>",
            left + gw * (g as f64 + 0.5),
            top + plot_h + 14.0,
            esc(&fit(name, max_chars)),
            esc(name)
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"#444\"/><line x1=\"{left}\" y1=\"{zero:.1}\" x2=\"{:.1}\" y2=\"{zero:.1}\" stroke=\"#444\"/>",
        top + plot_h,
        left + plot_w
    ));
    if legend {
        let lx = left + plot_w + 14.0;
        for (j, ser) in series.iter().enumerate() {
            let y = top + 8.0 + 16.0 * j as f64;
            s.push_str(&format!(
                "<g class=\"legend\"><rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text></g>",
                y - 5.0,
                PALETTE[j % PALETTE.len()],
                lx + 17.0,
                y + 3.5,
                esc(&fit(ser, 18))
            ));
        }
    }
    s.push_str("</svg>");
    s
}

/// A scatter of labelled points with their values in a legend beside the plot; one colour
/// per family (a label's first word: `lora r8` and `lora r32` share one); every point
/// carries `class="point"`, points with a non-finite coordinate are left out.
pub fn scatter(title: &str, x_label: &str, y_label: &str, pts: &[(String, f64, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 60.0, 46.0, 32.0, 200.0);
    let ok: Vec<&(String, f64, f64)> = pts
        .iter()
        .filter(|p| p.1.is_finite() && p.2.is_finite())
        .collect();
    let range = |f: &dyn Fn(&(String, f64, f64)) -> f64| {
        let (a, b) = ok
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(f(p)), b.max(f(p)))
            });
        if !a.is_finite() {
            (0.0, 1.0)
        } else {
            let pad = ((b - a) * 0.08).max(0.5);
            (a - pad, b + pad)
        }
    };
    let (x0, x1) = range(&|p| p.1);
    let (y0, y1) = range(&|p| p.2);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{t}</title><text x=\"{:.1}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{t}</text>",
        left + pw / 2.0,
        t = esc(title)
    );
    s.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>"
    ));
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{fx:.1}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{fy:.1}</text>",
            sx(fx),
            top + ph + 14.0,
            left - 4.0,
            sy(fy) + 3.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        left + pw / 2.0,
        h - 8.0,
        esc(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    ));
    const COLOURS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    let family = |l: &str| l.split(' ').next().unwrap_or("").to_string();
    let mut families: Vec<String> = ok.iter().map(|p| family(&p.0)).collect();
    families.dedup();
    let mut seen = Vec::new();
    for f in families {
        if !seen.contains(&f) {
            seen.push(f);
        }
    }
    for (i, p) in ok.iter().enumerate() {
        let c = seen.iter().position(|f| *f == family(&p.0)).unwrap_or(0);
        s.push_str(&format!(
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"><title>{}: {:.1}, {:.1}</title></circle>",
            sx(p.1),
            sy(p.2),
            COLOURS[c % COLOURS.len()],
            esc(&p.0),
            p.1,
            p.2
        ));
        s.push_str(&format!(
            "<text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>",
            w - right + 14.0,
            top + 12.0 + 12.0 * i as f64,
            esc(&format!("{} ({:.1}, {:.1})", p.0, p.1, p.2))
        ));
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
            w - right + 8.0,
            top + 9.0 + 12.0 * i as f64,
            COLOURS[c % COLOURS.len()]
        ));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_maximum() {
        let svg = bar_chart("t", &["a".into(), "b".into()], &[1.0, 2.0], "y");
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert!(svg.contains("height=\"220.0\""), "{svg}");
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("task {i}")).collect()
    }

    #[test]
    fn heatmap_has_one_cell_per_entry_and_lighter_upper_triangle() {
        let a = vec![
            vec![90.0, 10.0, 20.0],
            vec![70.0, 95.0, 15.0],
            vec![60.0, 80.0, 85.0],
        ];
        let svg = accuracy_heatmap("m", &names(3), &a);
        assert_eq!(svg.matches("class=\"cell\"").count(), 9);
        // 3 cells above the diagonal.
        assert_eq!(svg.matches("fill-opacity=\"0.35\"").count(), 3);
        // Values printed in the cells (cells are 56 px: one decimal).
        assert!(
            svg.contains(">95.0</text>") && svg.contains(">60.0</text>"),
            "{svg}"
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // Colour map ends: 0 → dark purple, 100 → yellow.
        assert_eq!(hex(viridis(0.0)), "#440154");
        assert_eq!(hex(viridis(1.0)), "#fde725");
        // Large matrices: small cells, no printed numbers, still one cell per entry.
        let big = vec![vec![50.0; 40]; 40];
        let svg = accuracy_heatmap("big", &names(40), &big);
        assert_eq!(svg.matches("class=\"cell\"").count(), 1600);
        assert!(!svg.contains(">50</text>"));
    }

    #[test]
    fn line_chart_draws_one_polyline_per_series() {
        let series: Vec<Series> = (0..3)
            .map(|i| Series {
                label: format!("task {i}"),
                points: (i..3)
                    .map(|k| ((k + 1) as f64, 90.0 - 10.0 * k as f64))
                    .collect(),
            })
            .collect();
        let spec = LineChart {
            title: "per task".into(),
            x_label: "tasks trained".into(),
            y_label: "accuracy (%)".into(),
            y_range: Some((0.0, 100.0)),
            integer_x: true,
            ..Default::default()
        };
        let svg = line_chart(&spec, &series);
        assert_eq!(svg.matches("class=\"line\"").count(), 3);
        assert_eq!(svg.matches("class=\"point\"").count(), 3 + 2 + 1);
        assert_eq!(svg.matches("class=\"legend\"").count(), 3);
        // Integer ticks 1, 2, 3 on x.
        assert!(svg.contains(">1</text>") && svg.contains(">3</text>") && !svg.contains(">1.5<"));

        // A long curve on a log axis: one polyline, no markers, decade ticks.
        let long = Series {
            label: "all classes".into(),
            points: (1..=500)
                .map(|s| (s as f64, 50.0 + (s as f64).ln()))
                .collect(),
        };
        let spec = LineChart {
            log_x: true,
            ..spec
        };
        let svg = line_chart(&spec, std::slice::from_ref(&long));
        assert_eq!(svg.matches("class=\"line\"").count(), 1);
        assert_eq!(svg.matches("class=\"point\"").count(), 0);
        assert_eq!(svg.matches("class=\"legend\"").count(), 0);
        assert!(
            svg.contains(">100</text>") && svg.contains(">1k</text>"),
            "{svg}"
        );
        let poly = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(poly.split(' ').count(), 500);
        // Non-finite points and x ≤ 0 on a log axis are skipped, not drawn as NaN.
        let odd = Series {
            label: "odd".into(),
            points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (4.0, 5.0)],
        };
        let svg = line_chart(&spec, &[odd]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("class=\"point\"").count(), 2);
        // No data at all still gives a valid chart.
        let svg = line_chart(&spec, &[]);
        assert!(svg.contains("no data") && svg.ends_with("</svg>"));
    }

    #[test]
    fn grouped_bars_count_and_go_below_zero() {
        let groups = vec!["ewc".to_string(), "replay".into(), "naive".into()];
        let series = vec!["forgetting".to_string(), "BWT".into()];
        let values = vec![
            vec![Some(10.0), Some(-8.0)],
            vec![Some(-2.0), Some(3.0)],
            vec![Some(40.0), None],
        ];
        let errors = vec![
            vec![Some(1.5), None],
            vec![None, None],
            vec![Some(2.0), None],
        ];
        let svg = grouped_bar_chart("f", &groups, &series, &values, Some(&errors), "points");
        assert_eq!(svg.matches("class=\"bar\"").count(), 5);
        assert_eq!(svg.matches("class=\"err\"").count(), 2);
        assert_eq!(svg.matches("class=\"legend\"").count(), 2);
        assert!(svg.contains("ewc, forgetting: 10.00 ± 1.50"));
        // The axis goes below zero: a negative tick is printed.
        assert!(svg.contains(">-10</text>"), "{svg}");
        // No bar has a negative height.
        assert!(!svg.contains("height=\"-"));
    }

    #[test]
    fn labels_are_escaped() {
        let evil = "<script>&\"x\"".to_string();
        let a = vec![vec![1.0]];
        let h = accuracy_heatmap(&evil, std::slice::from_ref(&evil), &a);
        let l = line_chart(
            &LineChart {
                title: evil.clone(),
                x_label: evil.clone(),
                y_label: evil.clone(),
                ..Default::default()
            },
            &[
                Series {
                    label: evil.clone(),
                    points: vec![(1.0, 1.0)],
                },
                Series {
                    label: "b".into(),
                    points: vec![(1.0, 2.0)],
                },
            ],
        );
        let g = grouped_bar_chart(
            &evil,
            std::slice::from_ref(&evil),
            std::slice::from_ref(&evil),
            &[vec![Some(1.0)]],
            None,
            &evil,
        );
        for svg in [h, l, g] {
            assert!(!svg.contains("<script"), "{svg}");
            assert!(svg.contains("&lt;script&gt;&amp;&quot;x&quot;"));
        }
    }

    #[test]
    fn output_is_deterministic() {
        let a: Vec<Vec<f64>> = (0..5)
            .map(|k| {
                (0..5)
                    .map(|i| ((k * 7 + i * 13) % 100) as f64 + 0.25)
                    .collect()
            })
            .collect();
        assert_eq!(
            accuracy_heatmap("m", &names(5), &a),
            accuracy_heatmap("m", &names(5), &a)
        );
        let s = vec![Series {
            label: "x".into(),
            points: vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0)],
        }];
        let spec = LineChart::default();
        assert_eq!(line_chart(&spec, &s), line_chart(&spec, &s));
        assert!(line_chart(&spec, &s).contains("0.33"));
    }

    #[test]
    fn nice_ranges_are_round() {
        assert_eq!(nice_range(0.0, 100.0, 5), (0.0, 100.0, 20.0));
        assert_eq!(nice_range(-8.0, 41.5, 5), (-10.0, 50.0, 10.0));
        // A flat range is widened by ±0.5, then rounded out to the step 0.2: 2.4 .. 3.6.
        let (a, b, step) = nice_range(3.0, 3.0, 5);
        assert!((a - 2.4).abs() < 1e-9 && (b - 3.6).abs() < 1e-9 && step == 0.2);
        assert_eq!(tick_label(-0.0000001, 0.5), "0.0");
        assert_eq!(fit("abcdef", 4), "abc…");
    }

    #[test]
    fn scatter_draws_every_finite_point_and_escapes_labels() {
        let s = scatter(
            "t",
            "x",
            "y",
            &[
                ("lift <r8>".into(), 90.0, 60.0),
                ("full".into(), 95.0, 20.0),
                ("bad".into(), f64::NAN, 1.0),
            ],
        );
        assert_eq!(s.matches("class=\"point\"").count(), 2);
        assert!(s.contains("lift &lt;r8&gt;") && !s.contains("<r8>"));
        assert_eq!(
            s,
            scatter(
                "t",
                "x",
                "y",
                &[
                    ("lift <r8>".into(), 90.0, 60.0),
                    ("full".into(), 95.0, 20.0),
                    ("bad".into(), f64::NAN, 1.0)
                ]
            )
        );
    }
}
