//! The card's "reproduced if" criteria (`shared/methods/quantization.md`) and B5's targets,
//! judged on what `engram bench quant` measured. A claim not measured in this run says so.

use super::WeightsPart;
use super::ofq::OfqPart;
use super::speed::SpeedPart;
use super::weights::{ArmResult, NetResult};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub claim: String,
    /// `holds`, `does not hold` or `not measured`.
    pub verdict: String,
    pub evidence: String,
}

pub(crate) fn verdict(claim: &str, holds: Option<bool>, evidence: String) -> Verdict {
    Verdict {
        claim: claim.into(),
        verdict: match holds {
            Some(true) => "holds",
            Some(false) => "does not hold",
            None => "not measured",
        }
        .into(),
        evidence,
    }
}

pub(crate) fn arm<'a>(
    n: &'a NetResult,
    method: &str,
    scope: &str,
    bits: u32,
) -> Option<&'a ArmResult> {
    n.arms
        .iter()
        .find(|a| a.method == method && a.scope == scope && a.bits == bits)
}

fn weights_verdicts(w: &WeightsPart) -> Vec<Verdict> {
    let mut out = Vec::new();
    // RTN sanity: 8-bit per channel within 0.1 point; per channel ≤ per tensor on every layer.
    let mut ev = Vec::new();
    let mut ok = true;
    for n in &w.nets {
        if let Some(a) = arm(n, "rtn", "channel", 8) {
            let loss = n.fp_accuracy - a.accuracy;
            ok &= loss <= 0.1;
            ev.push(format!("{} {:+.2}", n.name, -loss));
        }
    }
    out.push(verdict(
        "RTN 8-bit per channel loses ≤ 0.1 point of accuracy",
        (!ev.is_empty()).then_some(ok),
        format!("accuracy change: {}", ev.join(", ")),
    ));
    let (mut worse, mut total) = (Vec::new(), 0);
    for n in &w.nets {
        for &b in &w.settings.bits {
            if let (Some(t), Some(c)) = (arm(n, "rtn", "tensor", b), arm(n, "rtn", "channel", b)) {
                for (i, (et, ec)) in t.rel_error.iter().zip(&c.rel_error).enumerate() {
                    total += 1;
                    if ec > et {
                        worse.push(format!("{} {} {b} bits", n.name, n.layers[i].name));
                    }
                }
            }
        }
    }
    out.push(verdict(
        "RTN per-channel relative MSE ≤ per-tensor on every layer",
        (total > 0).then_some(worse.is_empty()),
        format!(
            "{} of {total} layer × width cases worse per channel{}",
            worse.len(),
            if worse.is_empty() {
                String::new()
            } else {
                format!(": {}", worse.join("; "))
            }
        ),
    ));
    // The error against a: unimodal, a* < 1 on ≥ 90 % of layers.
    let curves: Vec<_> = w.nets.iter().flat_map(|n| &n.curves).collect();
    let below = curves.iter().filter(|c| c.a_star < 1.0).count();
    let uni = curves.iter().filter(|c| c.unimodal).count();
    let n = curves.len();
    // How far a non-unimodal curve turns back: its largest step against the trend, relative
    // to the error there.
    let reversal = |e: &[f64]| -> f64 {
        let i = (0..e.len())
            .min_by(|&a, &b| e[a].total_cmp(&e[b]))
            .unwrap_or(0);
        (0..e.len().saturating_sub(1))
            .map(|k| {
                let d = e[k + 1] - e[k];
                let against = if k < i { d } else { -d };
                against.max(0.0) / e[k].max(f64::MIN_POSITIVE)
            })
            .fold(0.0, f64::max)
    };
    let worst = curves
        .iter()
        .filter(|c| !c.unimodal)
        .map(|c| (reversal(&c.rel_error), c))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    out.push(verdict(
        "the error against a is unimodal with a* < 1 on ≥ 90 % of layers (3 and 4 bits, per tensor)",
        (n > 0).then_some(uni == n && below as f64 >= 0.9 * n as f64),
        format!(
            "a* < 1 on {below} of {n} layer × width cases ({:.0} %); unimodal on the 0.05 grid on {uni} of {n}{}; a* from {:.2} to {:.2}",
            100.0 * below as f64 / n.max(1) as f64,
            worst.map_or(String::new(), |(r, c)| format!(
                " (largest turn against the trend: {:.1} % of the error, {} at {} bits)",
                100.0 * r,
                c.layer,
                c.bits
            )),
            curves.iter().map(|c| c.a_star).fold(f32::INFINITY, f32::min),
            curves.iter().map(|c| c.a_star).fold(f32::NEG_INFINITY, f32::max),
        ),
    ));
    // PowerQuant below RTN on every layer at 3 and 4 bits (same scope).
    let (mut worse, mut total) = (Vec::new(), 0);
    for n in &w.nets {
        for b in [3, 4] {
            for scope in ["tensor", "channel"] {
                if let (Some(r), Some(p)) = (arm(n, "rtn", scope, b), arm(n, "power", scope, b)) {
                    for (i, (er, ep)) in r.rel_error.iter().zip(&p.rel_error).enumerate() {
                        total += 1;
                        if ep >= er {
                            worse.push(format!(
                                "{} {} {b} bits per {scope}",
                                n.name, n.layers[i].name
                            ));
                        }
                    }
                }
            }
        }
    }
    out.push(verdict(
        "PowerQuant's relative MSE is below RTN's on every layer at 3 and 4 bits",
        (total > 0).then_some(worse.is_empty()),
        format!(
            "below on {} of {total} layer × width × scope cases{}",
            total - worse.len(),
            if worse.is_empty() {
                String::new()
            } else {
                format!("; not on {}", worse.join("; "))
            }
        ),
    ));
    // W3 per tensor: accuracy ≥ RTN + 2 points on the MLP and the CNN.
    let mut ev = Vec::new();
    let mut ok = None;
    for n in w.nets.iter().filter(|n| n.name == "mlp" || n.name == "cnn") {
        if let (Some(r), Some(p)) = (arm(n, "rtn", "tensor", 3), arm(n, "power", "tensor", 3)) {
            let d = p.accuracy - r.accuracy;
            ok = Some(ok.unwrap_or(true) && d >= 2.0);
            ev.push(format!(
                "{}: RTN {:.2} %, PowerQuant {:.2} % ({d:+.2})",
                n.name, r.accuracy, p.accuracy
            ));
        }
    }
    out.push(verdict(
        "at W3 per tensor, PowerQuant's accuracy ≥ RTN + 2 points on the MLP and the CNN",
        ok,
        ev.join("; "),
    ));
    // The data-driven variant improves further at 3 bits.
    let mut ev = Vec::new();
    let mut ok = None;
    for n in &w.nets {
        if let (Some(p), Some(d)) = (arm(n, "power", "tensor", 3), arm(n, "nupes", "tensor", 3)) {
            let diff = d.accuracy - p.accuracy;
            ok = Some(ok.unwrap_or(true) && diff > 0.0);
            ev.push(format!(
                "{}: PowerQuant {:.2} %, NUPES {:.2} % ({diff:+.2})",
                n.name, p.accuracy, d.accuracy
            ));
        }
    }
    out.push(verdict(
        "the data-driven variant (NUPES) improves on PowerQuant at 3 bits per tensor",
        ok,
        ev.join("; "),
    ));
    out
}

/// Every verdict of the parts that ran.
pub fn judge(w: Option<&WeightsPart>, o: Option<&OfqPart>, s: Option<&SpeedPart>) -> Vec<Verdict> {
    let mut out = Vec::new();
    if let Some(w) = w {
        out.extend(weights_verdicts(w));
    }
    if let Some(o) = o {
        out.extend(super::ofq::verdicts(o));
    }
    if let Some(s) = s {
        out.extend(super::speed::verdicts(s));
    }
    out
}
