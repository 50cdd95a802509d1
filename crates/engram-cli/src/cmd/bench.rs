//! `engram bench ...`: benchmarks that print ratios against baselines measured in the same run.
//! The benchmarks live in engram-bench; here are their arguments (each turned into the
//! benchmark's options), the progress and the printing.

use super::Ctx;
use super::progress::Reporter;
use anyhow::Result;
use engram_bench::{
    binary, cil, cl, compress, finetune, hypernet, ignorance, io, lora, merge, quant, robust,
    train, tta,
};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Read and convert throughput against the raw read bound.
    Io(IoArgs),
    /// Merge speed and memory (TA, TIES, TALL, Consensus) against the read-and-write bound and
    /// mergekit, on synthetic models (B1 in BENCHMARKS.md).
    Merge(MergeArgs),
    /// LoRA extraction: `engram lora extract` at ranks 8, 32, 128 against
    /// `mergekit-extract-lora` on the same synthetic Llama-shaped bf16 model (~200M; a
    /// fine-tune with a decaying task-vector spectrum), time and the error ‖ΔW − s·B·A‖/‖ΔW‖ of
    /// both adapters, measured the same way. `--quick` (~10M) for a smoke check.
    Lora(LoraArgs),
    /// Training speed: one epoch of Fashion-MNIST (MLP and CNN) against PyTorch on CPU with
    /// the same threads (B4 in BENCHMARKS.md).
    Train(TrainArgs),
    /// Compression and the scale check (B6 in BENCHMARKS.md): merge, TALL masks and bundles
    /// with packed and entropy-coded masks on large synthetic families; bytes, time, memory.
    Compress(CompressArgs),
    /// The continual-learning suite (B3 in BENCHMARKS.md): every strategy on Split, Permuted,
    /// Rotated and SCoLe Fashion-MNIST and Split MNIST, MLP and CNN, three seeds, tuned on
    /// validation; JSON and an HTML report. `--quick` for a smoke check.
    Cl(ClArgs),
    /// Exemplar-free class-incremental learning (B8 in BENCHMARKS.md): the half-base protocol
    /// (4 base classes, 3 increments of 2) on Fashion-MNIST and MNIST with a CNN of 64-d
    /// features; naive, LwF, PASS-style, NAPA-VQ and its random-neighbour ablation, iCaRL, ER
    /// at NAPA-VQ's prototype bytes and ER with 200 exemplars; 3 seeds; AIA, last accuracy,
    /// forgetting, memory; the card's claim judged. `--quick` for a smoke check.
    Cil(CilArgs),
    /// Selective fine-tuning: pre-train on Fashion-MNIST, fine-tune on MNIST and permuted
    /// MNIST with full fine-tuning, LoRA, LIFT (and its controls), KappaTune and block
    /// expansion; target accuracy, source accuracy kept, parameters, optimizer memory, time;
    /// three seeds. `--quick` for a smoke check.
    Finetune(FinetuneArgs),
    /// Continual test-time adaptation: a BatchNorm CNN trained on clean Fashion-MNIST meets
    /// the 15 FMNIST-C corruptions at severity 5 for 10 rounds; Source, BN-adapt, TENT, CoTTA
    /// and CoTTA's ablations, a class-sorted control, 3 seeds; error per domain per round in
    /// JSON and an HTML report, the card's claims judged. Finished runs are read back when
    /// rerun with the same settings. `--quick` for a smoke check.
    Tta(TtaArgs),
    /// Quantization (B5 in BENCHMARKS.md): trained Fashion-MNIST MLP, CNN and tiny
    /// transformer at 8/4/3/2 bits with RTN, PowerQuant, StatsQ and NUPES (accuracy, error per
    /// layer, error against the exponent a); OFQ 2-bit quantization-aware training (LSQ,
    /// StatsQ, + CGA, + QKR; accuracy and oscillation, 2 seeds); speed of `engram quantize`
    /// and GGUF Q8_0/Q4_0 conversion against the gguf package and the read-and-write bound.
    /// JSON and an HTML report with the card's claims judged. `--quick` for a smoke check.
    Quant(QuantArgs),
    /// Adversarial robustness (B9 in BENCHMARKS.md): standard training, PGD-AT, dro-softmax
    /// (the doubly robust reweighting's simplified variant, r chosen on validation) and GAIRAT
    /// on balanced and 10:1 long-tailed Fashion-MNIST (clean, PGD-10, RA-Tail-30, FMNIST-C;
    /// gradient-masking checks); RiFT's module robust criticality, critical fine-tuning and
    /// α curves; the Robust Weight Signatures table (α sweep, composition, quantization,
    /// removal, transfer). 3 seeds; JSON and an HTML report with the cards' claims judged;
    /// finished parts are read back when rerun with the same settings. `--quick` for a smoke
    /// check.
    Robust(RobustArgs),
    /// Networks that write networks (B10 in BENCHMARKS.md): the chunked-MLP and the LSTM
    /// (dependency-preserving) hypernetworks, with per-chunk regulariser weights and growth,
    /// against EWC and SI on Split Fashion-MNIST (Task-IL, and HNET+ENT Class-IL) and Permuted
    /// Fashion-MNIST; HY-WU's instance-conditioned LoRA generator against one shared LoRA on 4
    /// conflicting label permutations (joint and sequential, gradient cosines); KNOW weight
    /// nowcasting against naive and linear extrapolation (5 seeds). JSON and an HTML report
    /// with the card's claims judged; finished units are read back when rerun with the same
    /// settings. `--quick` for a smoke check.
    Hypernet(HypernetArgs),
    /// Knowledge that never enters the weights (Deep Ignorance): a character language model
    /// on Shakespeare pretrained unfiltered, blocklist-filtered, and unlearned by gradient
    /// ascent, each attacked by fine-tuning on held-out hazard scenes (0–1000 steps, one
    /// budget for all), with a benign control and the in-context test; the Fashion-MNIST
    /// image analogue as a fast check. 3 seeds; JSON and an HTML report with the card's
    /// claims judged; finished units are read back when rerun with the same settings.
    /// `--quick` for a smoke check.
    Ignorance(IgnoranceArgs),
    /// Binary weights in field space and the Ker-VLJEPA parts (B12 in BENCHMARKS.md): the
    /// teacher–student perceptron (error against both teachers over α₂, three teacher
    /// overlaps, with and without the KL to task 1; 3 repetitions); deep binary networks on Permuted
    /// Fashion-MNIST (field space per-step and task-anchor, straight-through, metaplastic),
    /// evaluated in the mean-field pass and as true binary networks; anisotropy and whitening
    /// of CNN and language-model features; a two-phase freeze-and-anchor curriculum; per-class
    /// thresholds for multi-label macro-F1. JSON and an HTML report with the cards' claims
    /// judged; finished units are read back when rerun with the same settings. `--quick` for
    /// a smoke check.
    Binary(BinaryArgs),
}

#[derive(clap::Args)]
pub struct LoraArgs {
    /// A ~10M-parameter model: a smoke check, not the benchmark's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Parameter count of the model [default: 200M; --quick: 10M].
    #[arg(long)]
    pub params: Option<String>,
    /// Ranks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    pub ranks: Vec<usize>,
    /// Runs of each engram extraction (medians are reported); mergekit runs once per rank.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Output folder: model/, adapters/, results.json (default bench-out/lora, or
    /// bench-out/lora-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seed of the fine-tune's task vectors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The `mergekit-extract-lora` executable; default:
    /// bench-out/mergekit-venv/bin/mergekit-extract-lora.
    #[arg(long)]
    pub mergekit: Option<PathBuf>,
    /// Create bench-out/mergekit-venv and pip-install mergekit into it first.
    #[arg(long)]
    pub install_mergekit: bool,
    /// Skip mergekit (engram only).
    #[arg(long)]
    pub no_mergekit: bool,
}

impl From<LoraArgs> for lora::Options {
    fn from(a: LoraArgs) -> Self {
        lora::Options {
            quick: a.quick,
            params: a.params,
            ranks: a.ranks,
            runs: a.runs,
            out: a.out,
            seed: a.seed,
            mergekit: a.mergekit,
            install_mergekit: a.install_mergekit,
            no_mergekit: a.no_mergekit,
            engram: None,
        }
    }
}

#[derive(clap::Args)]
pub struct BinaryArgs {
    /// Small problems and short training, one seed: a smoke check, not the study's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/binary, or
    /// bench-out/binary-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seeds, comma-separated [default: each part's own (deep and whiten: 0, others 0,1,2); --quick:
    /// 0].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Only these parts, comma-separated: perceptron, deep, whiten, curriculum, thresholds
    /// [default: all].
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct IgnoranceArgs {
    /// Short pretraining and attacks (to 200 steps), one seed: a smoke check, not the study's
    /// numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/ignorance, or
    /// bench-out/ignorance-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seeds, comma-separated [default: 0,1,2; --quick: 0].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Only these parts, comma-separated: text, image [default: both].
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct HypernetArgs {
    /// Small data and few steps, one seed (two for KNOW): a smoke check, not the study's
    /// numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/hypernet, or
    /// bench-out/hypernet-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seeds, comma-separated [default: 0,1,2, and 0–4 for KNOW; --quick: 0, and 0,1 for KNOW].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Only these parts, comma-separated: tasks (task-conditioned hypernetworks), hywu, know
    /// [default: all].
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RobustArgs {
    /// Small data, 2 epochs, one seed: a smoke check of the pipeline, not the study's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/robust, or
    /// bench-out/robust-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seeds, comma-separated [default: 0,1,2; --quick: 0]; the RWS part uses the first.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Only these parts, comma-separated: at (adversarial training), rift, rws [default: all].
    /// rift trains the PGD-AT models it starts from when at has not.
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct QuantArgs {
    /// Small data, few epochs and steps, one OFQ seed, a tiny synthetic model: a smoke check
    /// of the pipeline, not the benchmark's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json and report/index.html (default bench-out/quant, or
    /// bench-out/quant-quick); synthetic models of the speed part go to OUT.work.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seed (training, calibration sample; the OFQ seeds are SEED..SEED+OFQ_SEEDS).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only these parts, comma-separated: weights, ofq, speed [default: all].
    #[arg(long, value_delimiter = ',')]
    pub parts: Vec<String>,
    /// OFQ seeds [default: 2; --quick: 1].
    #[arg(long)]
    pub ofq_seeds: Option<usize>,
    /// Synthetic model sizes of the speed part, comma-separated [default: small,1b; --quick:
    /// tiny].
    #[arg(long, value_delimiter = ',')]
    pub speed_sizes: Vec<String>,
    /// Python with numpy and gguf for the speed baseline [default: target/pyenv/bin/python].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<QuantArgs> for quant::Options {
    fn from(a: QuantArgs) -> Self {
        let quick = a.quick;
        quant::Options {
            out: a.out.unwrap_or_else(|| {
                if quick {
                    "bench-out/quant-quick"
                } else {
                    "bench-out/quant"
                }
                .into()
            }),
            seed: a.seed,
            quick,
            parts: a.parts,
            ofq_seeds: a.ofq_seeds,
            speed_sizes: a.speed_sizes,
            engram: None,
            python: a.python,
            data_dir: a.data_dir,
        }
    }
}

#[derive(clap::Args)]
pub struct CilArgs {
    /// One seed, Fashion-MNIST only, 300 training images per task, 2 base epochs and 1 per
    /// increment: a smoke check of the pipeline, not the study's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/cil, or
    /// bench-out/cil-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Seeds, comma-separated [default: 0,1,2; --quick: 0].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Data sets, comma-separated: fashion-mnist, mnist [default: both; --quick:
    /// fashion-mnist].
    #[arg(long, value_delimiter = ',')]
    pub data: Vec<String>,
    /// Only these arms, comma-separated: naive, lwf, pass, napa-vq, napa-vq-random,
    /// napa-vq-raw, napa-vq-sched, napa-vq-random-sched, icarl, er-equal, er-200, and the arms
    /// whose hyperparameters are chosen on
    /// validation first: pass-tuned, napa-vq-tuned, napa-vq-random-tuned.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Leave out the -tuned arms and their validation runs.
    #[arg(long)]
    pub no_tune: bool,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<CilArgs> for cil::Options {
    fn from(a: CilArgs) -> Self {
        cil::Options {
            quick: a.quick,
            out: a.out,
            seeds: a.seeds,
            datasets: a.data,
            arms: a.arms,
            no_tune: a.no_tune,
            data_dir: a.data_dir,
            command: String::new(),
        }
    }
}

#[derive(clap::Args)]
pub struct TtaArgs {
    /// 2 rounds, 20 test images per class, batch 100, one seed, a source trained 1 epoch on
    /// 10 000 images: a smoke check of the pipeline, not the benchmark's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: results.json, report/index.html, runs/ (default bench-out/tta, or
    /// bench-out/tta-quick).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// First seed; seeds SEED..SEED+SEEDS (each: test subsample, corruption draws, image
    /// order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of seeds [default: 3; --quick: 1].
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Rounds of the 15-corruption sequence [default: 10; --quick: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Test images per class in each domain [default: 200, i.e. 2 000 per domain; --quick:
    /// 20].
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Only these arms, separated by semicolons: source, bn-adapt, tent, cotta, "cotta, no restore",
    /// "cotta, no augmentation averaging", "cotta, N = 8"; and, only when named, "cotta, AP 0.92"
    /// (the reference's CIFAR-10 threshold instead of the calibrated one).
    #[arg(long, value_delimiter = ';')]
    pub arms: Vec<String>,
    /// Leave out the class-sorted (non-i.i.d.) control.
    #[arg(long)]
    pub no_control: bool,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<TtaArgs> for tta::Options {
    fn from(a: TtaArgs) -> Self {
        let quick = a.quick;
        tta::Options {
            out: a.out.unwrap_or_else(|| {
                if quick {
                    "bench-out/tta-quick"
                } else {
                    "bench-out/tta"
                }
                .into()
            }),
            seed: a.seed,
            seeds: a.seeds,
            quick,
            rounds: a.rounds,
            test_per_class: a.test_per_class,
            arms: a.arms,
            no_control: a.no_control,
            data_dir: a.data_dir,
        }
    }
}

#[derive(clap::Args)]
pub struct IoArgs {
    /// Model size: a preset (tiny, small, medium, 1b, 3b, 7b) or a parameter count (250M).
    #[arg(long, default_value = "1b")]
    pub size: String,
    /// Folder for the synthetic model (reused when it already holds one of this size) and for
    /// the converted outputs.
    #[arg(long, default_value = "bench-out/io-model")]
    pub dir: PathBuf,
    /// Runs of each step; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-out/io.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Shard size of the resharding step.
    #[arg(long, default_value = "500MB", value_name = "SIZE")]
    pub shard_size: String,
    /// Delete the model and the outputs afterwards.
    #[arg(long)]
    pub clean: bool,
}

impl From<IoArgs> for io::Options {
    fn from(a: IoArgs) -> Self {
        io::Options {
            size: a.size,
            dir: a.dir,
            repeat: a.repeat,
            json_out: a.json_out,
            shard_size: a.shard_size,
            clean: a.clean,
            engram: None,
        }
    }
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Model sizes (parameter counts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100M,500M,1B")]
    pub sizes: Vec<String>,
    /// Numbers of fine-tuned models, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub n: Vec<usize>,
    /// Working folder for the synthetic families (reused) and the outputs.
    #[arg(long, default_value = "bench-out/merge")]
    pub dir: PathBuf,
    /// Runs of each engram step (medians are reported). mergekit runs once per case.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// The `mergekit-pytorch` executable; default: bench-out/mergekit-venv/bin/mergekit-pytorch.
    #[arg(long)]
    pub mergekit: Option<PathBuf>,
    /// Create bench-out/mergekit-venv and pip-install mergekit into it first.
    #[arg(long)]
    pub install_mergekit: bool,
    /// Skip mergekit (engram and the bound only).
    #[arg(long)]
    pub no_mergekit: bool,
    /// Skip mergekit above this many parameters (its TIES takes minutes per case).
    #[arg(long, default_value = "2B")]
    pub mergekit_max: String,
    #[arg(long, default_value = "bench-out/merge.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    #[arg(long)]
    pub clean: bool,
    /// Also measure a family made elsewhere: FOLDER/base and FOLDER/ft-1 .. ft-N (e.g.
    /// `python scripts/make-family.py --shape 1b -n 8 -o FOLDER`); repeatable.
    #[arg(long, value_name = "FOLDER")]
    pub family: Vec<PathBuf>,
}

impl From<MergeArgs> for merge::Options {
    fn from(a: MergeArgs) -> Self {
        merge::Options {
            sizes: a.sizes,
            n: a.n,
            dir: a.dir,
            repeat: a.repeat,
            mergekit: a.mergekit,
            install_mergekit: a.install_mergekit,
            no_mergekit: a.no_mergekit,
            mergekit_max: a.mergekit_max,
            json_out: a.json_out,
            clean: a.clean,
            engram: None,
            families: a.family,
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Networks to measure, comma-separated: mlp, cnn.
    #[arg(long, value_delimiter = ',', default_value = "mlp,cnn")]
    pub models: Vec<String>,
    /// Timed pairs of epochs per network, engram then PyTorch (interleaved, so that a burst
    /// of load lands on both sides), after a warm-up epoch each; the median of the per-pair
    /// ratios is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Train on the first N examples only (default: all 60,000), for quick tries; times are
    /// still reported per epoch of N.
    #[arg(long, value_name = "N")]
    pub train_examples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where Fashion-MNIST is (default: the system package's location).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Python with torch and numpy [default: bench-out/torch-venv/bin/python].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Create bench-out/torch-venv and pip-install torch (CPU build) and numpy into it first.
    #[arg(long)]
    pub install_torch: bool,
    /// engram only.
    #[arg(long)]
    pub no_torch: bool,
    /// Where both sides train: cpu (default); gpu (engram through Vulkan, which needs a build
    /// with `--features gpu`, against PyTorch on CUDA; the warm-up epochs take the kernel
    /// compilation); vulkan-cpu (engram's GPU path on Vulkan's CPU device, with --no-torch).
    #[arg(long, default_value = "cpu", value_parser = engram_learn::backend::Compute::NAMES)]
    pub device: String,
    #[arg(long, default_value = "bench-out/train.json", value_name = "FILE")]
    pub json_out: PathBuf,
}

impl TryFrom<TrainArgs> for train::Options {
    type Error = anyhow::Error;
    fn try_from(a: TrainArgs) -> Result<Self> {
        Ok(train::Options {
            models: a.models,
            repeat: a.repeat,
            batch_size: a.batch_size,
            lr: a.lr,
            train_examples: a.train_examples,
            seed: a.seed,
            data_dir: a.data_dir,
            python: a.python,
            install_torch: a.install_torch,
            no_torch: a.no_torch,
            device: engram_learn::backend::Compute::parse(&a.device)?,
            json_out: a.json_out,
        })
    }
}

#[derive(clap::Args)]
pub struct CompressArgs {
    /// Model sizes (parameter counts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1B")]
    pub sizes: Vec<String>,
    /// Number of fine-tuned models (tasks).
    #[arg(short = 'n', long, default_value_t = 4)]
    pub tasks: usize,
    /// TALL λ of every task.
    #[arg(long, default_value_t = 0.4)]
    pub lambda: f32,
    /// Working folder for the synthetic families (reused) and the outputs.
    #[arg(long, default_value = "bench-out/compress")]
    pub dir: PathBuf,
    #[arg(long, default_value = "bench-out/compress.json", value_name = "FILE")]
    pub json_out: PathBuf,
    /// Delete the synthetic families afterwards.
    #[arg(long)]
    pub clean: bool,
}

impl From<CompressArgs> for compress::Options {
    fn from(a: CompressArgs) -> Self {
        compress::Options {
            sizes: a.sizes,
            tasks: a.tasks,
            lambda: a.lambda,
            dir: a.dir,
            json_out: a.json_out,
            clean: a.clean,
            engram: None,
        }
    }
}

#[derive(clap::Args)]
pub struct ClArgs {
    /// Tiny budgets and one seed: a smoke check of a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Suite folder (default: bench-out/cl, or bench-out/cl-quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Strategies (default: every registered one but probe).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Scenarios, by key or key:model (default: all): split-fmnist-cil, split-fmnist-til,
    /// permuted-fmnist, rotated-fmnist, scole-fmnist, split-mnist-cil.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Seeds (default: 0,1,2; 0 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Use the strategies' default hyperparameters instead of tuning on validation.
    #[arg(long)]
    pub no_tune: bool,
    /// Run again the runs that failed in an earlier invocation.
    #[arg(long)]
    pub retry_failed: bool,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl ClArgs {
    fn options(self, ctx: &Ctx) -> cl::Options {
        cl::Options {
            quick: self.quick,
            out: self.out,
            strategies: self.strategies,
            scenarios: self.scenarios,
            seeds: self.seeds,
            no_tune: self.no_tune,
            retry_failed: self.retry_failed,
            data_dir: self.data_dir,
            command: ctx.command_line.clone(),
        }
    }
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Small data and network, one seed: a smoke check.
    #[arg(long)]
    pub quick: bool,
    /// Output folder (default bench-out/finetune, or bench-out/finetune-quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seeds 0..N.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Pre-training epochs.
    #[arg(long, default_value_t = 2)]
    pub pretrain_epochs: usize,
    /// Learning rate of every fine-tuning run.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate of the pre-training.
    #[arg(long, default_value_t = 1e-3)]
    pub pretrain_lr: f64,
    /// Only the methods whose label contains one of these words (e.g. lift,lora).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<FinetuneArgs> for finetune::Options {
    fn from(a: FinetuneArgs) -> Self {
        finetune::Options {
            quick: a.quick,
            out: a.out,
            seeds: a.seeds,
            epochs: a.epochs,
            pretrain_epochs: a.pretrain_epochs,
            lr: a.lr,
            pretrain_lr: a.pretrain_lr,
            only: a.only,
            data_dir: a.data_dir,
        }
    }
}

pub fn run(ctx: &Ctx, b: Bench) -> Result<()> {
    // The benchmarks' tables go to stdout even with --quiet, as their results.
    let mut r = Reporter::new(ctx, true);
    let res = match b {
        Bench::Io(a) => io::run(&a.into(), &mut |p| r.show(p)),
        Bench::Merge(a) => merge::run(&a.into(), &mut |p| r.show(p)),
        Bench::Lora(a) => lora::run(&a.into(), &mut |p| r.show(p)),
        Bench::Train(a) => train::run(&a.try_into()?, &mut |p| r.show(p)),
        Bench::Compress(a) => compress::run(&a.into(), &mut |p| r.show(p)),
        Bench::Cl(a) => cl::run(&a.options(ctx), &mut |p| r.show(p)),
        Bench::Finetune(a) => finetune::run(&a.into(), &mut |p| r.show(p)),
        Bench::Cil(a) => {
            let o = cil::Options {
                command: ctx.command_line.clone(),
                ..a.into()
            };
            cil::run(&o, &mut |p| r.show(p)).and_then(|v| Ok(serde_json::to_value(v)?))
        }
        Bench::Tta(a) => tta::run(&a.into(), &mut |p| r.show(p)),
        Bench::Quant(a) => quant::run(&a.into(), &mut |p| r.show(p)),
        Bench::Robust(a) => {
            let o = robust::Options {
                out: a.out,
                seeds: a.seeds,
                quick: a.quick,
                parts: a.parts,
                data_dir: a.data_dir,
                command: ctx.command_line.clone(),
            };
            robust::run(&o, &mut |p| r.show(p)).and_then(|v| Ok(serde_json::to_value(v)?))
        }
        Bench::Hypernet(a) => {
            let o = hypernet::Options {
                out: a.out,
                seeds: a.seeds,
                quick: a.quick,
                parts: a.parts,
                data_dir: a.data_dir,
                command: ctx.command_line.clone(),
            };
            hypernet::run(&o, &mut |p| r.show(p))
        }
        Bench::Ignorance(a) => {
            let o = ignorance::Options {
                out: a.out,
                seeds: a.seeds,
                quick: a.quick,
                parts: a.parts,
                data_dir: a.data_dir,
                command: ctx.command_line.clone(),
            };
            ignorance::run(&o, &mut |p| r.show(p))
        }
        Bench::Binary(a) => {
            let o = binary::Options {
                out: a.out,
                seeds: a.seeds,
                quick: a.quick,
                parts: a.parts,
                data_dir: a.data_dir,
                command: ctx.command_line.clone(),
            };
            binary::run(&o, &mut |p| r.show(p))
        }
    };
    r.finish(res.map(drop))
}
