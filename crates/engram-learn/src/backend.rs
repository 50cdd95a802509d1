//! The one place that knows burn's CPU backend is process-wide state: its random generator.
//! Networks are built and random tensors drawn under [`rng_guard`], and a seed is set with
//! [`seed`], so that a seed fixes a network whatever else runs in the process. [`host`] reads
//! a tensor's values back (one helper for every module).

use burn::prelude::*;

/// burn's CPU backend keeps one process-wide random generator: networks built (and random
/// tensors drawn) on parallel threads — tests, a library user running trainers side by side —
/// would interleave their draws, and a seed would no longer fix a network. Seeding, building
/// a network and drawing random tensors hold this guard. It is re-entrant on one thread (the
/// trainer seeds and then builds, and building takes it again).
pub struct RngGuard(());

static RNG_OWNER: std::sync::Mutex<(Option<std::thread::ThreadId>, usize)> =
    std::sync::Mutex::new((None, 0));
static RNG_FREE: std::sync::Condvar = std::sync::Condvar::new();

pub fn rng_guard() -> RngGuard {
    let me = std::thread::current().id();
    let mut g = RNG_OWNER.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match g.0 {
            None => {
                *g = (Some(me), 1);
                break;
            }
            Some(t) if t == me => {
                g.1 += 1;
                break;
            }
            Some(_) => g = RNG_FREE.wait(g).unwrap_or_else(|e| e.into_inner()),
        }
    }
    RngGuard(())
}

impl Drop for RngGuard {
    fn drop(&mut self) {
        let mut g = RNG_OWNER.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = g.1.saturating_sub(1);
        if g.1 == 0 {
            g.0 = None;
            RNG_FREE.notify_all();
        }
    }
}

/// Seeds burn's generator for `device` and holds the guard, so that the draws that follow on
/// this thread (building a network) come from that seed alone.
pub fn seeded(device: &Device, seed: u64) -> RngGuard {
    let g = rng_guard();
    device.seed(seed);
    g
}

/// A tensor's values on the host, as f32 (empty if they cannot be read as such).
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}
