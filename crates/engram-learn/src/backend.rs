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

/// Where the trainer computes (`train.device` in a run file, `--device` on the command line):
/// the CPU through burn's `flex` backend (always built, the default), or a GPU through burn's
/// wgpu backend pinned to Vulkan, which only a build with the cargo feature `gpu` has
/// (`cargo build --release -p engram-cli --features gpu`; see the README). A GPU asked of a
/// build without it is an error, never a quiet run on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compute {
    /// burn's `flex` CPU backend with engram's own kernels (convolutions, pooling, Adam).
    #[default]
    Cpu,
    /// The first discrete GPU, through Vulkan.
    Gpu,
    /// Vulkan's CPU device (Mesa's lavapipe): the GPU code path on a machine without a GPU,
    /// for checking it, not for speed.
    VulkanCpu,
}

impl Compute {
    /// The run-file and command-line spellings.
    pub const NAMES: [&'static str; 3] = ["cpu", "gpu", "vulkan-cpu"];

    pub fn parse(s: &str) -> crate::Result<Compute> {
        match s {
            "cpu" => Ok(Compute::Cpu),
            "gpu" => Ok(Compute::Gpu),
            "vulkan-cpu" => Ok(Compute::VulkanCpu),
            _ => Err(crate::err!(
                "device {s:?}: expected one of {}",
                Compute::NAMES.join(", ")
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compute::Cpu => "cpu",
            Compute::Gpu => "gpu",
            Compute::VulkanCpu => "vulkan-cpu",
        }
    }

    /// Whether this build can compute there (an error saying how to get a build that can).
    pub fn available(self) -> crate::Result<()> {
        if self == Compute::Cpu || cfg!(feature = "gpu") {
            return Ok(());
        }
        Err(crate::err!(
            "device {:?}: this engram was built without the `gpu` feature; build one with \
             `cargo build --release -p engram-cli --features gpu` (burn's Vulkan backend; a \
             clean build takes about an hour on two cores)",
            self.name()
        ))
    }

    /// The device (without autodiff).
    pub fn device(self) -> crate::Result<Device> {
        self.available()?;
        match self {
            Compute::Cpu => Ok(Device::flex()),
            #[cfg(feature = "gpu")]
            Compute::Gpu => Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(0))),
            #[cfg(feature = "gpu")]
            Compute::VulkanCpu => Ok(Device::vulkan(burn::tensor::DeviceKind::Cpu)),
            #[cfg(not(feature = "gpu"))]
            _ => unreachable!("refused by available()"),
        }
    }
}

/// Whether tensors on `device` live in host memory on the `flex` backend, the one engram's own
/// kernels (convolutions, pooling, the fused optimizer) run on.
pub fn is_flex(device: &Device) -> bool {
    *device == Device::flex()
}

/// The device `net`'s parameters are on (the CPU for a module without parameters).
pub fn device_of<M: burn::module::Module>(net: &M) -> Device {
    net.devices()
        .into_iter()
        .next()
        .unwrap_or_else(Device::flex)
}

#[cfg(test)]
mod compute_tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for n in Compute::NAMES {
            assert_eq!(Compute::parse(n).unwrap().name(), n);
        }
        let e = Compute::parse("cuda").unwrap_err().to_string();
        assert!(e.contains("cuda") && e.contains("vulkan-cpu"), "{e}");
    }

    #[test]
    fn the_cpu_is_always_there_and_a_gpu_only_with_the_feature() {
        assert!(is_flex(&Compute::Cpu.device().unwrap()));
        assert!(is_flex(&Compute::Cpu.device().unwrap().autodiff()));
        let gpu = Compute::Gpu.available();
        if cfg!(feature = "gpu") {
            assert!(gpu.is_ok());
        } else {
            let e = gpu.unwrap_err().to_string();
            assert!(e.contains("--features gpu"), "{e}");
        }
    }
}
