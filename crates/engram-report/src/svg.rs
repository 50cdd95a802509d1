//! Hand-written SVG charts (no dependency, no script): bar charts for now.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_maximum() {
        let svg = bar_chart("t", &["a".into(), "b".into()], &[1.0, 2.0], "y");
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert!(svg.contains("height=\"220.0\""), "{svg}");
    }
}
