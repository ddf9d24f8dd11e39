//! `gradscope bench`: throughput of the real training loop (samples/s, median of
//! repetitions after warm-up) per preset, backend and thread count, the probe's
//! overhead, peak memory, and the time to load a 60,000-image IDX file. With
//! `--pytorch`, the PyTorch reference (`bench/pytorch/bench.py`, bundled into
//! the binary) trains the same networks in the same loop beside each row, so the
//! table's gradscope/PyTorch ratios come from one run on one machine; it and
//! Burn's own matmul also measure the fp32 matmul peak (the better of the two)
//! each row's achieved FLOP rate is read against.
//!
//! Each configuration runs in a child process so that the thread count
//! (RAYON_NUM_THREADS, `torch.set_num_threads`) is fixed before any thread pool
//! starts, and so that each row's peak memory is its own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_probe::{GradientProbe, ProbeConfig, ProbeSchedule, ProbedRun, Reductions, RunConfig};
use gradscope_train::{
    Backend, BackwardView, Control, ModelChoice, Observer, Optimizer, RunInfo, StepInfo, Summary, TrainConfig,
    TrainError,
};

/// The PyTorch reference script, shipped inside the binary.
const PYTORCH_SCRIPT: &str = include_str!("../../../bench/pytorch/bench.py");

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Presets to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mlp-sigmoid-8x256,mlp-relu-bn-8x256,mlp-relu-4x512,resnet20-plain,resnet20-residual"
    )]
    pub presets: Vec<String>,
    /// Backends to measure (flex, ndarray, wgpu, cuda).
    #[arg(long, value_delimiter = ',', default_value = "flex,ndarray", value_parser = crate::train_cmd::parse_backend)]
    pub backends: Vec<Backend>,
    /// CPU thread counts (RAYON_NUM_THREADS) to measure; GPU backends run once.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Steps per repetition (one more repetition runs first as warm-up).
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: u64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Also measure the probe's overhead (probed and unprobed steps alternating in one process).
    #[arg(long)]
    pub probe: bool,
    /// Where the probe reduces in the overhead runs: auto, host or device.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<Reductions>())]
    pub probe_reductions: Reductions,
    /// Run the PyTorch reference beside every row (needs `pip install torch numpy`).
    #[arg(long)]
    pub pytorch: bool,
    /// The Python interpreter that has PyTorch.
    #[arg(long, default_value = "python3", env = "GRADSCOPE_PYTHON")]
    pub python: PathBuf,
    /// Also measure Burn's matmul (flex) at the shapes an `8x256` MLP step
    /// multiplies, beside PyTorch's with --pytorch: where the training gap comes from.
    #[arg(long)]
    pub matmul: bool,
    /// Measure only the matmul table (implies --matmul): the smallest
    /// reproduction of the MLP gap.
    #[arg(long)]
    pub matmul_only: bool,
    /// Measure only the IDX load time.
    #[arg(long, conflicts_with = "skip_idx")]
    pub idx_only: bool,
    /// Skip the IDX load time.
    #[arg(long)]
    pub skip_idx: bool,
    /// Also write the table (Markdown) to this file; an existing file is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: run one configuration in this process and print its result as JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// What a child process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Throughput without the probe: samples/s per repetition.
    Throughput,
    /// Probe overhead: blocks of [`BLOCK`] steps probed at every step alternate
    /// with blocks of as many unprobed steps in one process (free of the 10-20%
    /// drift between processes here), every step logged. The probe takes its
    /// statistics on its own thread while the next step trains, so a probed
    /// step's cost shows partly in the step after it: blocks, each drained of
    /// the probe's work before the next begins, account for all of it.
    ProbeBlocks,
}

/// Steps per block in [`Mode::ProbeBlocks`].
const BLOCK: u64 = 20;

/// Pairs of blocks (probed, unprobed) per repetition: `--steps` probed steps, rounded up to whole blocks.
fn block_pairs(args: &BenchArgs) -> u64 {
    args.steps.div_ceil(BLOCK).max(1)
}

/// Whether block `b` (steps `b * BLOCK ..`) is probed: the even ones.
fn probed_block(b: u64) -> bool {
    b.is_multiple_of(2)
}

/// Whether `step` falls in a probed block.
fn in_probed_block(step: u64) -> bool {
    probed_block(step / BLOCK)
}

/// The probe on blocks of steps ([`Mode::ProbeBlocks`]).
///
/// A probed step's record is taken on the probe's thread while the next step
/// trains, and collected at that step's backward pass, as in a run probed at
/// every step; the last probed step of a block overlaps the first step of the
/// unprobed block after it in the same way: a block does not wait for its
/// last record, a wait that a run probed at every step never has. What the
/// overlap leaves in the unprobed neighbour is one step's sharing of memory
/// with the probe's thread per block.
struct ProbeInBlocks(GradientProbe);

impl<M: gradscope_models::Network> Observer<M> for ProbeInBlocks {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        Observer::<M>::on_start(&mut self.0, run)
    }
    fn wants_probe(&mut self, step: u64) -> bool {
        in_probed_block(step)
    }
    fn after_backward(&mut self, view: &BackwardView<'_, M>) -> Control {
        self.0.after_backward(view)
    }
    fn after_step(&mut self, info: &StepInfo, after: &M) -> Control {
        self.0.after_step(info, after)
    }
    fn on_finish(&mut self, summary: &mut Summary) -> Result<(), TrainError> {
        Observer::<M>::on_finish(&mut self.0, summary)
    }
}

impl Mode {
    fn spec(self) -> &'static str {
        match self {
            Mode::Throughput => "off",
            Mode::ProbeBlocks => "blocks",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Mode::Throughput),
            "blocks" => Ok(Mode::ProbeBlocks),
            _ => bail!("bad mode `{s}`"),
        }
    }
}

/// One measured configuration, as a child process reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Measured {
    median: f64,
    samples: Vec<f64>,
    /// Peak resident memory of the process (VmHWM), MiB.
    peak_rss_mib: Option<f64>,
    /// Blocks mode: median over blocks of the mean seconds per step, unprobed and probed.
    plain_step_s: Option<f64>,
    probed_step_s: Option<f64>,
    /// Blocks mode: median over probed blocks of the block's mean step time
    /// against the mean of its two unprobed neighbours, minus 1.
    probe_overhead: Option<f64>,
}

/// What the PyTorch reference script prints.
#[derive(Debug, serde::Deserialize)]
struct Reference {
    median: f64,
    flops_per_sample: f64,
    peak_rss_mib: Option<f64>,
}

/// A matmul rate the script or a child process measures.
#[derive(Debug, serde::Deserialize)]
struct Peak {
    gflops: f64,
}

/// Trains `preset` in this process; returns the metrics rows after the warm-up
/// as `(step, samples/s)`.
fn measure(preset: &str, backend: Backend, mode: Mode, args: &BenchArgs) -> Result<Vec<(u64, f64)>> {
    let tmp = tempfile::tempdir()?;
    let (steps, log_every, probe) = match mode {
        Mode::Throughput => (args.steps * (args.reps + 1), args.steps, ProbeSchedule::Off),
        Mode::ProbeBlocks => (
            2 * BLOCK * block_pairs(args) * (args.reps + 1),
            1,
            ProbeSchedule::Every { n: 1 },
        ),
    };
    let config = TrainConfig {
        model: ModelChoice::Preset {
            preset: preset.to_owned(),
        },
        backend,
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        batch_size: args.batch_size,
        epochs: 1000,
        max_steps: Some(steps),
        log_every,
        ..TrainConfig::default()
    };
    let probe = ProbeConfig {
        schedule: probe,
        reductions: args.probe_reductions,
        ..ProbeConfig::default()
    };
    // Throughput runs have the probe off: `run_with` then has no probe to wrap.
    ProbedRun::start(&RunConfig::new(config, probe), &tmp.path().join("run"))?
        .run_with(|probe| Box::new(ProbeInBlocks(probe)))?;
    let rows = gradscope_report::load::read_metrics(&tmp.path().join("run/metrics.csv"), &mut Vec::new())
        .map_err(anyhow::Error::msg)?;
    // Row 0 is the untrained evaluation; the first `steps / (reps + 1)` steps are the warm-up.
    let warm_up = steps / (args.reps + 1);
    Ok(rows
        .iter()
        .filter(|r| r.step > warm_up)
        .filter_map(|r| Some((r.step, r.samples_per_s?)))
        .collect())
}

/// This process's peak resident set size, MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The median, NaN when there is nothing to take it of.
fn median(v: &mut [f64]) -> f64 {
    gradscope_train::median(v).unwrap_or(f64::NAN)
}

fn idx_load_seconds() -> Result<(f64, f64)> {
    use gradscope_data::idx::{IdxImages, encode_images};
    use std::io::Write;
    // 60,000 real MNIST digits: the bundled 8,000, repeated.
    let sample = gradscope_data::MnistLike::bundled()?;
    let src = &sample.train.images;
    let mut pixels = Vec::with_capacity(60_000 * 784);
    while pixels.len() < 60_000 * 784 {
        let need = (60_000 * 784 - pixels.len()).min(src.pixels.len());
        pixels.extend_from_slice(&src.pixels[..need]);
    }
    let bytes = encode_images(&IdxImages {
        count: 60_000,
        rows: 28,
        cols: 28,
        pixels,
    });
    let tmp = tempfile::tempdir()?;
    let plain = tmp.path().join("train-images-idx3-ubyte");
    std::fs::write(&plain, &bytes)?;
    let gz = tmp.path().join("train-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::default());
    enc.write_all(&bytes)?;
    enc.finish()?;
    let time = |p: &Path| -> Result<f64> {
        let mut t = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let images = gradscope_data::idx::read_images(p)?;
            t.push(start.elapsed().as_secs_f64());
            if images.count != 60_000 {
                bail!("read {} images", images.count);
            }
        }
        Ok(median(&mut t))
    };
    Ok((time(&plain)?, time(&gz)?))
}

/// The PyTorch side: the script, the bundled training split as IDX files, and
/// the models' layouts, in a temporary directory.
struct PyTorch {
    version: String,
    python: PathBuf,
    dir: tempfile::TempDir,
    /// Results per (preset, threads, device), measured once each.
    references: HashMap<(String, usize, &'static str), Result<Reference, String>>,
}

impl PyTorch {
    fn new(python: &Path) -> Result<Self> {
        let check = Command::new(python)
            .args(["-c", "import torch, numpy; print(torch.__version__)"])
            .output();
        let version = match check {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            Ok(out) => bail!(
                "--pytorch: `{}` cannot import torch and numpy ({}); install them with `pip install torch numpy`, \
                 or name another interpreter with --python",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no output")
                    .trim()
            ),
            Err(e) => bail!("--pytorch: cannot run --python `{}`: {e}", python.display()),
        };
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("bench.py"), PYTORCH_SCRIPT)?;
        let train = gradscope_data::MnistLike::bundled()?.train;
        std::fs::write(
            dir.path().join("images.idx"),
            gradscope_data::idx::encode_images(&train.images),
        )?;
        std::fs::write(
            dir.path().join("labels.idx"),
            gradscope_data::idx::encode_labels(&train.labels),
        )?;
        Ok(Self {
            version,
            python: python.to_owned(),
            dir,
            references: HashMap::new(),
        })
    }

    fn script(&self, threads: usize, device: &str) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.dir.path().join("bench.py"))
            .args(["--threads", &threads.to_string(), "--device", device]);
        cmd
    }

    fn run_json<T: serde::de::DeserializeOwned>(mut cmd: Command) -> Result<T, String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
                .to_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output: {e}"))
    }

    fn peak_gflops(&self, threads: usize, device: &str) -> Result<f64, String> {
        let mut cmd = self.script(threads, device);
        cmd.arg("--peak");
        Self::run_json::<Peak>(cmd).map(|p| p.gflops)
    }

    fn reference(
        &mut self,
        preset: &str,
        threads: usize,
        device: &'static str,
        args: &BenchArgs,
    ) -> &Result<Reference, String> {
        let key = (preset.to_owned(), threads, device);
        if !self.references.contains_key(&key) {
            let result = (|| {
                let model = self.dir.path().join(format!("{preset}.json"));
                let layout = crate::models_cmd::layout_json(preset).map_err(|e| e.to_string())?;
                std::fs::write(&model, layout.to_string()).map_err(|e| e.to_string())?;
                let mut cmd = self.script(threads, device);
                cmd.arg("--model")
                    .arg(&model)
                    .arg("--images")
                    .arg(self.dir.path().join("images.idx"))
                    .arg("--labels")
                    .arg(self.dir.path().join("labels.idx"))
                    .args(["--steps", &args.steps.to_string(), "--reps", &args.reps.to_string()])
                    .args(["--batch-size", &args.batch_size.to_string()]);
                Self::run_json::<Reference>(cmd)
            })();
            self.references.insert(key.clone(), result);
        }
        &self.references[&key]
    }
}

/// Runs one configuration in a child process.
fn run_child(preset: &str, backend: Backend, threads: usize, mode: Mode, args: &BenchArgs) -> Result<Measured> {
    let spec = format!("{preset}:{backend}:{threads}:{}", mode.spec());
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", "--child", &spec, "--skip-idx"])
        .args(["--steps", &args.steps.to_string(), "--reps", &args.reps.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--probe-reductions", &args.probe_reductions.to_string()])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("BURN_DEVICE", backend.burn_device_name())
        .output()
        .with_context(|| format!("running {spec}"))?;
    if !out.status.success() {
        bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed")
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the result of {spec}"))
}

/// `[m, k] @ [k, n]` shapes of one training step of a 784-256-...-10 MLP at
/// batch 128: forward, weight gradient (`x^T dy`), input gradient (`dy W^T`).
const MATMUL_SHAPES: [(usize, usize, usize, &str); 4] = [
    (128, 784, 256, "forward, first layer"),
    (128, 256, 256, "forward, hidden layer"),
    (256, 128, 256, "weight gradient, hidden layer"),
    (784, 128, 256, "weight gradient, first layer"),
];

/// The fp32 matmul roof: the best of PyTorch's square products and Burn's.
/// (PyTorch's CPU wheel alone can sit below the machine's roof: on an AMD
/// CPU with AVX-512 its `torch.mm` ran at half the rate of Burn's gemm.)
struct Roof {
    torch: Result<f64, String>,
    burn: Option<f64>,
}

impl Roof {
    fn best(&self) -> Result<f64, String> {
        match (&self.torch, self.burn) {
            (Ok(t), Some(b)) => Ok(t.max(b)),
            (Ok(t), None) => Ok(*t),
            (Err(_), Some(b)) => Ok(b),
            (Err(e), None) => Err(e.clone()),
        }
    }
}

/// GFLOP/s of Burn's `[m, k] @ [k, n]` on `backend` with `threads` threads,
/// measured in a child process (its thread pool set before it starts).
fn burn_matmul(backend: Backend, threads: usize, m: usize, k: usize, n: usize) -> Option<f64> {
    let out = Command::new(std::env::current_exe().ok()?)
        .args([
            "bench",
            "--skip-idx",
            "--child",
            &format!("matmul:{backend}:{m}:{k}:{n}"),
        ])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    serde_json::from_slice::<Peak>(&out.stdout).map(|p| p.gflops).ok()
}

/// Burn flex's best square fp32 product, at the sizes PyTorch's roof uses.
fn burn_peak(threads: usize) -> Option<f64> {
    [512, 1024, 2048]
        .into_iter()
        .filter_map(|n| burn_matmul(Backend::Flex, threads, n, n, n))
        .reduce(f64::max)
}

/// GFLOP/s of Burn's `[m, k] @ [k, n]` on `backend` (median of 7 timings).
fn matmul_gflops(backend: Backend, m: usize, k: usize, n: usize) -> Result<f64> {
    use burn::tensor::{Distribution, Tensor};
    let device = backend.device()?;
    let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
    let b = Tensor::<2>::random([k, n], Distribution::Default, &device);
    let reps = (1e10 / (2 * m * k * n) as f64).max(10.0) as usize;
    let mut times = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        let mut out = None;
        for _ in 0..reps {
            out = Some(a.clone().matmul(b.clone()));
        }
        // Reading one product waits for all of them (GPU queues run in order).
        let _ = out.map(|o| o.slice([0..1, 0..1]).into_data());
        times.push(start.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(2.0 * (m * k * n) as f64 / median(&mut times[1..]) / 1e9)
}

fn child(spec: &str, args: &BenchArgs) -> Result<()> {
    if let Some(rest) = spec.strip_prefix("matmul:") {
        let [backend, m, k, n] = rest.split(':').collect::<Vec<_>>()[..] else {
            bail!("bad --child spec `{spec}`")
        };
        let backend = crate::train_cmd::parse_backend(backend).map_err(anyhow::Error::msg)?;
        let gflops = matmul_gflops(backend, m.parse()?, k.parse()?, n.parse()?)?;
        println!("{}", serde_json::json!({ "gflops": gflops }));
        return Ok(());
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let [preset, backend, _threads, mode] = parts[..] else {
        bail!("bad --child spec `{spec}`")
    };
    let backend = crate::train_cmd::parse_backend(backend).map_err(anyhow::Error::msg)?;
    let mode = Mode::parse(mode)?;
    let rows = measure(preset, backend, mode, args)?;
    let mut samples: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let (mut plain_step_s, mut probed_step_s, mut probe_overhead) = (None, None, None);
    if mode == Mode::ProbeBlocks {
        let blocks = block_means(&rows, args.batch_size);
        let secs = |probed: bool| {
            let mut t: Vec<f64> = blocks
                .iter()
                .filter(|(b, _)| probed_block(**b) == probed)
                .map(|(_, t)| *t)
                .collect();
            median(&mut t)
        };
        plain_step_s = Some(secs(false));
        probed_step_s = Some(secs(true));
        probe_overhead = Some(median(&mut neighbour_ratios(&blocks)));
    }
    let m = Measured {
        median: median(&mut samples.clone()),
        samples: std::mem::take(&mut samples),
        peak_rss_mib: peak_rss_mib(),
        plain_step_s,
        probed_step_s,
        probe_overhead,
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// Mean seconds per step of each whole block, by block index. The row at step
/// `s` timed step `s - 1`.
fn block_means(rows: &[(u64, f64)], batch_size: usize) -> BTreeMap<u64, f64> {
    let mut blocks: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (s, sps) in rows {
        blocks.entry((s - 1) / BLOCK).or_default().push(batch_size as f64 / sps);
    }
    blocks
        .into_iter()
        .filter(|(_, steps)| steps.len() as u64 == BLOCK)
        .map(|(b, steps)| (b, steps.iter().sum::<f64>() / BLOCK as f64))
        .collect()
}

/// Each probed block's mean step time against the mean of the unprobed
/// blocks on either side, minus 1. Comparing neighbours, 0.4 s apart, cancels
/// the slow drifts of a shared machine that a ratio of two medians over the
/// whole run keeps.
fn neighbour_ratios(blocks: &BTreeMap<u64, f64>) -> Vec<f64> {
    blocks
        .iter()
        .filter(|(b, _)| probed_block(**b))
        .filter_map(|(&b, &t)| {
            let (before, after) = (blocks.get(&b.checked_sub(1)?)?, blocks.get(&(b + 1))?);
            Some(t / ((before + after) / 2.0) - 1.0)
        })
        .collect()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(spec) = &args.child {
        return child(spec, &args);
    }
    if let Some(out) = &args.out
        && out.exists()
    {
        bail!("--out {}: the file already exists; choose another name", out.display());
    }
    let mut table = String::new();
    if !args.skip_idx {
        let (plain, gz) = idx_load_seconds()?;
        let line = format!(
            "IDX load, 60,000 x 28 x 28 images (median of 5): plain {:.1} ms, gzip {:.1} ms\n",
            plain * 1e3,
            gz * 1e3
        );
        emit(&mut table, &line);
        if args.idx_only {
            return write_out(&args, &table);
        }
    }
    let mut pytorch = if args.pytorch {
        Some(PyTorch::new(&args.python)?)
    } else {
        None
    };
    // The fp32 matmul roof per (threads, device).
    let mut peaks: HashMap<(usize, &'static str), Roof> = HashMap::new();

    let header = format!(
        "| preset | backend | threads | samples/s (median of {}) | min | max | peak RSS MiB | \
         PyTorch samples/s | gradscope / PyTorch | GFLOP/s | % of fp32 matmul peak |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        args.reps
    );
    if !args.matmul_only {
        emit(&mut table, &header);
    }
    let mut overhead_rows = Vec::new();
    let presets: &[String] = if args.matmul_only { &[] } else { &args.presets };
    for preset in presets {
        for &backend in &args.backends {
            let (threads_list, device): (&[usize], &'static str) = if backend.is_gpu() {
                (&args.threads[..1], "cuda")
            } else {
                (&args.threads, "cpu")
            };
            for &threads in threads_list {
                let threads_label = if backend.is_gpu() {
                    "-".to_owned()
                } else {
                    threads.to_string()
                };
                let mut row = format!("| {preset} | {backend} | {threads_label} |");
                match run_child(preset, backend, threads, Mode::Throughput, &args) {
                    Ok(m) => {
                        let lo = m.samples.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = m.samples.iter().copied().fold(0.0, f64::max);
                        let _ = write!(
                            row,
                            " {:.0} | {lo:.0} | {hi:.0} | {} |",
                            m.median,
                            fmt_opt(m.peak_rss_mib, 0)
                        );
                        match pytorch.as_mut() {
                            Some(py) => {
                                let peak = peaks
                                    .entry((threads, device))
                                    .or_insert_with(|| Roof {
                                        torch: py.peak_gflops(threads, device),
                                        burn: (device == "cpu").then(|| burn_peak(threads)).flatten(),
                                    })
                                    .best();
                                match py.reference(preset, threads, device, &args) {
                                    Ok(r) => {
                                        let gflops = m.median * r.flops_per_sample / 1e9;
                                        let _ = write!(
                                            row,
                                            " {:.0} | {:.2} | {gflops:.1} | {} |",
                                            r.median,
                                            m.median / r.median,
                                            peak.map_or_else(|e| e, |p| format!("{:.1}", 100.0 * gflops / p))
                                        );
                                    }
                                    Err(e) => {
                                        let _ = write!(row, " failed: {e} | | | |");
                                    }
                                }
                            }
                            None => row.push_str(" | | | |"),
                        }
                    }
                    Err(e) => {
                        let _ = write!(row, " failed: {e} | | | | | | | |");
                    }
                }
                emit(&mut table, &row);
                if args.probe {
                    let row = match run_child(preset, backend, threads, Mode::ProbeBlocks, &args) {
                        Ok(Measured {
                            plain_step_s: Some(plain),
                            probed_step_s: Some(probed),
                            probe_overhead: Some(extra),
                            ..
                        }) if extra.is_finite() => {
                            format!(
                                "| {preset} | {backend} | {threads_label} | {:.2} | {:.2} | {:.1}% | {:.1}% |",
                                plain * 1e3,
                                probed * 1e3,
                                100.0 * extra,
                                10.0 * extra
                            )
                        }
                        Ok(_) => {
                            format!("| {preset} | {backend} | {threads_label} | failed: no complete blocks | | | |")
                        }
                        Err(e) => format!("| {preset} | {backend} | {threads_label} | failed: {e} | | | |"),
                    };
                    overhead_rows.push(row);
                }
            }
        }
    }
    if args.probe && !args.matmul_only {
        emit(
            &mut table,
            &format!(
                "\nProbe overhead: blocks of {BLOCK} steps with the full per-layer probe at every step \
                 alternate with blocks of {BLOCK} unprobed steps in one process ({} blocks of each after \
                 warm-up). Step times: mean per block, median over blocks. Overhead: each probed block \
                 against the mean of its two unprobed neighbours, median over probed blocks (neighbours \
                 cancel this machine's slow drifts). The probe's statistics are taken on its own thread \
                 while the next step trains, as in a run probed at every step; a probed block's last \
                 step overlaps the first step of the unprobed block after it. Every 10th step: a \
                 tenth of the every-step overhead.\n\n\
                 | preset | backend | threads | step ms, no probe | step ms, probed | overhead, probe every step | \
                 overhead, probe every 10 steps |\n|---|---|---|---:|---:|---:|---:|",
                block_pairs(&args) * args.reps
            ),
        );
        for row in &overhead_rows {
            emit(&mut table, row);
        }
    }
    if args.matmul || args.matmul_only {
        emit(
            &mut table,
            "\nMatmul alone, `[m, k] @ [k, n]` at the shapes of an 8x256 MLP step (batch 128), GFLOP/s:\n\n\
             | m x k x n | what | backend | threads | Burn | PyTorch | Burn / PyTorch |\n|---|---|---|---|---:|---:|---:|",
        );
        for &backend in args.backends.iter().filter(|b| !b.is_gpu()) {
            for &threads in &args.threads {
                for (m, k, n, what) in MATMUL_SHAPES {
                    let burn = burn_matmul(backend, threads, m, k, n);
                    let torch = pytorch.as_ref().and_then(|py| {
                        let mut cmd = py.script(threads, "cpu");
                        cmd.args(["--matmul", &format!("{m}x{k}x{n}")]);
                        PyTorch::run_json::<Peak>(cmd).ok().map(|p| p.gflops)
                    });
                    let ratio = burn.zip(torch).map(|(b, t)| b / t);
                    emit(
                        &mut table,
                        &format!(
                            "| {m}x{k}x{n} | {what} | {backend} | {threads} | {} | {} | {} |",
                            fmt_opt(burn, 1),
                            fmt_opt(torch, 1),
                            fmt_opt(ratio, 2)
                        ),
                    );
                }
            }
        }
    }
    if let Some(py) = pytorch.as_ref().filter(|py| !py.references.is_empty()) {
        let mut lines = vec![
            String::new(),
            format!("PyTorch {} reference (same network, same loop):", py.version),
        ];
        let mut keys: Vec<_> = py.references.keys().collect();
        keys.sort();
        for key in keys {
            if let Ok(r) = &py.references[key] {
                lines.push(format!(
                    "- {} on {} with {} thread(s): {:.0} samples/s, {:.2} MFLOP per sample (forward + backward), \
                     peak RSS {} MiB",
                    key.0,
                    key.2,
                    key.1,
                    r.median,
                    r.flops_per_sample / 1e6,
                    fmt_opt(r.peak_rss_mib, 0)
                ));
            }
        }
        let mut peak_keys: Vec<_> = peaks.iter().collect();
        peak_keys.sort_by_key(|(k, _)| **k);
        for ((threads, device), roof) in peak_keys {
            lines.push(format!(
                "- fp32 matmul peak on {device} with {threads} thread(s), the best square product (512, 1024, 2048) of PyTorch's `torch.mm` and Burn flex's matmul: {} (PyTorch {}, Burn {})",
                roof.best().map_or_else(|e| format!("failed: {e}"), |g| format!("{g:.1} GFLOP/s")),
                roof.torch
                    .as_ref()
                    .map_or_else(|e| format!("failed: {e}"), |g| format!("{g:.1}")),
                fmt_opt(roof.burn, 1)
            ));
        }
        for l in &lines {
            emit(&mut table, l);
        }
    }
    write_out(&args, &table)
}

/// Prints a line and keeps it for `--out`.
fn emit(table: &mut String, line: &str) {
    println!("{line}");
    table.push_str(line);
    table.push('\n');
}

fn write_out(args: &BenchArgs, table: &str) -> Result<()> {
    if let Some(out) = &args.out {
        gradscope_train::files::write_atomic(out, table.as_bytes())
            .with_context(|| format!("writing --out {}", out.display()))?;
        eprintln!("table written to {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probed blocks 0 and 2 at 11 and 13.2 ms per step, unprobed blocks 1 and 3
    /// drifting from 10 to 14 ms: block 2 is 10% over its neighbours, where a
    /// ratio of the two medians says 12.1 / 12 - 1 = 0.8%.
    #[test]
    fn probed_blocks_are_compared_with_their_neighbours() {
        let ms = |b: u64| match b {
            0 => 11.0,
            1 => 10.0,
            2 => 13.2,
            3 => 14.0,
            _ => unreachable!(),
        };
        // Rows at steps 1..=80 time steps 0..80; batch 100 samples.
        let rows: Vec<(u64, f64)> = (1..=4 * BLOCK)
            .map(|s| (s, 100.0 / (ms((s - 1) / BLOCK) / 1e3)))
            .collect();
        let blocks = block_means(&rows, 100);
        assert_eq!(blocks.len(), 4);
        assert!((blocks[&2] - 13.2e-3).abs() < 1e-12);
        let ratios = neighbour_ratios(&blocks);
        // Block 0 has no unprobed block before it; block 2 sits between 10 and 14 ms.
        assert_eq!(ratios.len(), 1);
        assert!((ratios[0] - 0.1).abs() < 1e-9, "{ratios:?}");
    }
}
