//! Weight oscillation tracking (OFQ's `TrackOscillation`; arXiv 2302.02210, nbasyl/OFQ).
//! Card: shared/methods/quantization.md ("OFQ", step 6).
//!
//! Each update gives every weight's integer code. A code change whose direction is opposite
//! to the weight's previous change counts as one oscillation (a +1 then a −1, or the other
//! way, with any number of steps without change between them); a change in the same
//! direction does not. The oscillation frequency is the EMA of the per-step oscillation
//! indicator, momentum 0.01: f ← 0.01·[oscillated] + 0.99·f. The first update only records
//! the codes. engram reports, per layer type, the mean frequency and the share of weights
//! whose frequency is above 0.005 (an engram choice, the card's), and, because the EMA
//! remembers about 100 steps, the raw rate of oscillations per weight and step since the
//! previous report (the window), which shows at once when oscillation stops.

use std::collections::BTreeMap;

/// The EMA momentum of the reference.
pub const MOMENTUM: f32 = 0.01;
/// A weight counts as oscillating when its frequency is above this (engram's choice).
pub const THRESHOLD: f32 = 0.005;

/// The oscillation state of one tensor's codes.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    prev: Vec<i8>,
    /// Sign of each weight's last code change (0 before the first).
    dir: Vec<i8>,
    freq: Vec<f32>,
    started: bool,
    momentum: f32,
    /// Oscillations and updates since the window was last reset.
    window: (u64, u64),
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::with_momentum(MOMENTUM)
    }

    pub fn with_momentum(momentum: f32) -> Tracker {
        Tracker {
            momentum,
            ..Tracker::default()
        }
    }

    /// Takes the codes after a step; returns how many weights oscillated in it. The codes
    /// must keep their length.
    pub fn update(&mut self, codes: &[i8]) -> crate::Result<usize> {
        if !self.started {
            self.prev = codes.to_vec();
            self.dir = vec![0; codes.len()];
            self.freq = vec![0.0; codes.len()];
            self.started = true;
            return Ok(0);
        }
        if codes.len() != self.prev.len() {
            return Err(crate::err!(
                "oscillation tracking: {} codes after {} before",
                codes.len(),
                self.prev.len()
            ));
        }
        let m = self.momentum;
        let mut count = 0;
        for (((&c, p), d), f) in codes
            .iter()
            .zip(self.prev.iter_mut())
            .zip(self.dir.iter_mut())
            .zip(self.freq.iter_mut())
        {
            let step = (c as i16 - *p as i16).signum() as i8;
            let osc = step != 0 && step == -*d;
            if step != 0 {
                *d = step;
            }
            *p = c;
            *f = m * (osc as u8 as f32) + (1.0 - m) * *f;
            count += osc as usize;
        }
        self.window.0 += count as u64;
        self.window.1 += 1;
        Ok(count)
    }

    /// Oscillations and updates (after the first) since the last [`Tracker::reset_window`].
    pub fn window(&self) -> (u64, u64) {
        self.window
    }

    pub fn reset_window(&mut self) {
        self.window = (0, 0);
    }

    /// Each weight's oscillation frequency (empty before the first update).
    pub fn frequency(&self) -> &[f32] {
        &self.freq
    }
}

/// A layer type's oscillation.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OscStat {
    /// Mean EMA frequency over the weights.
    pub mean_frequency: f64,
    /// Share of the weights whose frequency is above [`THRESHOLD`].
    pub share_oscillating: f64,
    /// Oscillations per weight and step over the window (0 for an empty window).
    pub window_rate: f64,
}

/// The statistics of groups of trackers by key (a layer type), pooling every weight of a
/// key, plus `all` over every tracker.
pub fn summarize<'a>(
    trackers: impl IntoIterator<Item = (&'a str, &'a Tracker)>,
) -> BTreeMap<String, OscStat> {
    #[derive(Default)]
    struct Acc {
        sum: f64,
        above: usize,
        weights: usize,
        oscillations: f64,
        weight_steps: f64,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for (key, t) in trackers {
        let f = t.frequency();
        let sum: f64 = f.iter().map(|&v| v as f64).sum();
        let above = f.iter().filter(|&&v| v > THRESHOLD).count();
        let (osc, steps) = t.window();
        for k in [key, "all"] {
            let e = acc.entry(k.to_string()).or_default();
            e.sum += sum;
            e.above += above;
            e.weights += f.len();
            e.oscillations += osc as f64;
            e.weight_steps += (f.len() as u64 * steps) as f64;
        }
    }
    acc.into_iter()
        .map(|(k, a)| {
            let n = a.weights.max(1) as f64;
            let stat = OscStat {
                mean_frequency: a.sum / n,
                share_oscillating: a.above as f64 / n,
                window_rate: if a.weight_steps > 0.0 {
                    a.oscillations / a.weight_steps
                } else {
                    0.0
                },
            };
            (k, stat)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// +1, −1 flips count once each after the first change; a monotone sequence never.
    #[test]
    fn counts_flips_not_monotone_changes() -> crate::Result<()> {
        // Weight 0 flips 0 → 1 → 0 → 1 → 1 → 0: the changes are +, −, +, (none), −:
        // oscillations at the 2nd, 3rd and 5th changes. Weight 1 climbs 0 → 1 → 1 → 2 → 3 → 3.
        let seq: [[i8; 2]; 6] = [[0, 0], [1, 1], [0, 1], [1, 2], [1, 3], [0, 3]];
        let mut t = Tracker::new();
        let counts: Vec<usize> = seq
            .iter()
            .map(|c| t.update(c))
            .collect::<crate::Result<_>>()?;
        assert_eq!(counts, [0, 0, 1, 1, 0, 1]);
        // EMA by hand for weight 0: indicators 0, 1, 1, 0, 1 after the first update.
        let mut f = 0f32;
        for o in [0.0, 1.0, 1.0, 0.0, 1.0] {
            f = MOMENTUM * o + (1.0 - MOMENTUM) * f;
        }
        assert_eq!(t.frequency(), [f, 0.0]);
        let s = summarize([("q", &t)]);
        assert_eq!(s["q"].share_oscillating, 0.5);
        assert!((s["q"].mean_frequency - f as f64 / 2.0).abs() < 1e-12);
        assert_eq!(s["all"], s["q"]);
        // 3 oscillations over 2 weights × 5 updates.
        assert_eq!(t.window(), (3, 5));
        assert_eq!(s["q"].window_rate, 0.3);
        t.reset_window();
        t.update(&[1, 3])?;
        assert_eq!(summarize([("q", &t)])["q"].window_rate, 0.5);
        assert!(t.update(&[0]).is_err());
        Ok(())
    }
}
