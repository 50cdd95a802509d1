//! Where the CNN's training time goes: each layer of the Fashion-MNIST CNN timed alone,
//! forward and forward + backward, at batch 128 on the `flex` CPU backend, with burn's layers
//! (`Conv2d`, `Relu` + `MaxPool2d`) and with engram's (model/conv.rs); then whole training
//! steps (forward, backward, Adam) of the CNN built from each, and of the MLP.
//!
//! Times are CPU time summed over the process's threads (from /proc/self/task/*/schedstat),
//! which other processes on a shared machine disturb less than wall time; `WALL=1` reports
//! wall time instead. Random inputs; no data needed.
//!
//! `cargo run --release -p engram-learn --example cnn_probe [calls per round]`
//! (`RAYON_NUM_THREADS=1` for one thread; `LAYER=conv2` to time only matching rows).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use engram_learn::model::conv::{Conv, relu_max_pool2_nhwc};
use engram_learn::model::{ModelConfig, Net};
use std::time::Instant;

/// CPU time of all this process's threads, ns.
fn cpu_ns() -> u64 {
    let mut t = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            t += std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0);
        }
    }
    t
}

/// Milliseconds per call of `f`: median of 5 rounds of `n` calls, after 3 warm-up calls.
fn time(n: usize, mut f: impl FnMut() -> f32) -> f64 {
    let wall = std::env::var("WALL").is_ok();
    let mut sink = 0.0f32;
    for _ in 0..3 {
        sink += f();
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let (t, c) = (Instant::now(), cpu_ns());
        for _ in 0..n {
            sink += f();
        }
        let ms = if wall {
            t.elapsed().as_secs_f64() * 1e3
        } else {
            (cpu_ns() - c) as f64 / 1e6
        };
        rounds.push(ms / n as f64);
    }
    std::hint::black_box(sink);
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

fn wanted(name: &str) -> bool {
    std::env::var("LAYER").map_or(true, |l| name.contains(l.as_str()))
}

/// Forward, then forward + backward of `f` on `x` (loss: the sum of the output).
fn layer(name: &str, n: usize, steps: usize, x: &Tensor<4>, f: impl Fn(Tensor<4>) -> Tensor<4>) {
    if !wanted(name) {
        return;
    }
    let fwd = time(n, || f(x.clone()).sum().into_scalar::<f32>());
    let both = time(n, || {
        let l = f(x.clone()).sum();
        let v = l.clone().into_scalar::<f32>();
        let _g = l.backward();
        v
    });
    println!(
        "{name:<30} fwd {fwd:8.3} ms  bwd {:8.3} ms  total {both:8.3} ms  x{steps} steps = {:6.2} s",
        both - fwd,
        both * steps as f64 / 1e3
    );
}

/// The CNN as it was built from burn's layers.
#[derive(Module, Debug)]
struct BurnCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    pool: MaxPool2d,
    act: Relu,
}

impl BurnCnn {
    fn new(d: &Device) -> BurnCnn {
        BurnCnn {
            conv1: Conv2dConfig::new([1, 32], [3, 3]).init(d),
            conv2: Conv2dConfig::new([32, 64], [3, 3]).init(d),
            fc1: LinearConfig::new(1600, 128).init(d),
            fc2: LinearConfig::new(128, 10).init(d),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            act: Relu::new(),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let x: Tensor<4> = x.reshape([b, 1, 28, 28]);
        let x = self.pool.forward(self.act.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.act.forward(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

#[allow(clippy::large_enum_variant)] // two values in a benchmark
enum Model {
    Burn(Box<BurnCnn>),
    Engram(Net),
}

impl Model {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Model::Burn(m) => m.forward(x),
            Model::Engram(m) => m.forward(x),
        }
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let b = 128;
    let steps = 60_000usize.div_ceil(b);
    let base = Device::flex();
    base.seed(1);
    let d = base.autodiff();
    println!(
        "rayon threads: {}; batch {b}; ms per call",
        rayon::current_num_threads()
    );

    let rand4 = |shape: [usize; 4], grad: bool| {
        let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &d);
        if grad { t.require_grad() } else { t }
    };
    let (c1, c2) = (
        Conv2dConfig::new([1, 32], [3, 3]).init(&d),
        Conv2dConfig::new([32, 64], [3, 3]).init(&d),
    );
    let (e1, e2) = (Conv::new([1, 32], 3, &d), Conv::new([32, 64], 3, &d));
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let relu = Relu::new();
    let nchw = |x: Tensor<4>| x.permute([0, 3, 1, 2]);

    layer("conv1 burn", n, steps, &rand4([b, 1, 28, 28], false), |x| {
        c1.forward(x)
    });
    layer(
        "conv1 engram",
        n,
        steps,
        &rand4([b, 28, 28, 1], false),
        |x| e1.forward_nhwc(x),
    );
    layer("conv2 burn", n, steps, &rand4([b, 32, 13, 13], true), |x| {
        c2.forward(x)
    });
    layer(
        "conv2 engram",
        n,
        steps,
        &rand4([b, 13, 13, 32], true),
        |x| e2.forward_nhwc(x),
    );
    layer(
        "relu+pool1 burn",
        n,
        steps,
        &rand4([b, 32, 26, 26], true),
        |x| pool.forward(relu.forward(x)),
    );
    layer(
        "relu+pool1 engram",
        n,
        steps,
        &rand4([b, 26, 26, 32], true),
        relu_max_pool2_nhwc,
    );
    layer(
        "relu+pool2 burn",
        n,
        steps,
        &rand4([b, 64, 11, 11], true),
        |x| pool.forward(relu.forward(x)),
    );
    layer(
        "relu+pool2 engram",
        n,
        steps,
        &rand4([b, 11, 11, 64], true),
        relu_max_pool2_nhwc,
    );
    layer(
        "flatten nhwc->nchw [b,5,5,64]",
        n,
        steps,
        &rand4([b, 5, 5, 64], true),
        |x| nchw(x).reshape([b, 1, 1, 1600]),
    );

    let x: Tensor<2> = Tensor::random([b, 784], Distribution::Uniform(0.0, 1.0), &d);
    let y = Tensor::<1, Int>::from_data(
        TensorData::new((0..b as i64).map(|i| i % 10).collect::<Vec<_>>(), [b]),
        &d,
    );
    let ce = CrossEntropyLossConfig::new().init(&d);
    let build = |cfg: ModelConfig| match cfg.build(784, Some((1, 28, 28)), 10, &d) {
        Ok(net) => Model::Engram(net),
        Err(e) => panic!("{e}"),
    };
    let models = [
        ("cnn, burn layers", Model::Burn(Box::new(BurnCnn::new(&d)))),
        (
            "cnn, engram",
            build(ModelConfig::Cnn {
                channels: [32, 64],
                hidden: 128,
            }),
        ),
        (
            "mlp 784-400-400-10",
            build(ModelConfig::Mlp {
                hidden: vec![400, 400],
            }),
        ),
    ];
    for (name, model) in models {
        if !wanted(name) {
            continue;
        }
        let fwd = time(n, || {
            ce.forward(model.forward(x.clone()), y.clone())
                .into_scalar::<f32>()
        });
        let mut opt = AdamConfig::new().init();
        let mut m = Some(model);
        let step = time(n, || {
            let Some(model) = m.take() else { return 0.0 };
            let l = ce.forward(model.forward(x.clone()), y.clone());
            let v = l.clone().into_scalar::<f32>();
            let g = l.backward();
            m = Some(match model {
                Model::Burn(mm) => {
                    let g = GradientsParams::from_grads(g, mm.as_ref());
                    Model::Burn(Box::new(opt.step(1e-3, *mm, g)))
                }
                Model::Engram(mm) => {
                    let g = GradientsParams::from_grads(g, &mm);
                    Model::Engram(opt.step(1e-3, mm, g))
                }
            });
            v
        });
        println!(
            "{name:<30} step (fwd+bwd+adam) {step:8.3} ms (fwd {fwd:7.3})  x{steps} steps = {:6.2} s",
            step * steps as f64 / 1e3
        );
    }
}
