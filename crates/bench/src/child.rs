//! One configuration measured in a child process: the parent sends a
//! [`ChildJob`] as JSON through [`Launcher`], the child runs it ([`serve`]) and
//! prints one JSON line back. A fresh process fixes the thread count
//! (`RAYON_NUM_THREADS`) before any pool starts, and its peak memory is the
//! row's own.

use std::time::Instant;

use gradscope_probe::{ProbeConfig, ProbeSchedule, ProbedRun, RunConfig};
use gradscope_train::{Backend, ModelChoice, Optimizer, TrainConfig};

use crate::blocks::{BLOCK, Mode, ProbeInBlocks, block_means, block_pairs, neighbour_ratios, probed_block};
use crate::system::peak_rss_mib;
use crate::{BenchError, Launcher, Settings, median};

/// What a child process is asked to measure.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "job")]
pub enum ChildJob {
    /// Train `preset` in the real loop.
    Train {
        preset: String,
        backend: Backend,
        mode: Mode,
        settings: Settings,
    },
    /// Burn's `[m, k] @ [k, n]`.
    Matmul {
        backend: Backend,
        m: usize,
        k: usize,
        n: usize,
    },
}

/// One measured configuration, as a child process reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Samples per second: median over repetitions (NaN when a run logged
    /// none after its warm-up), and each repetition's.
    #[serde(with = "gradscope_train::files::json_float")]
    pub median: f64,
    pub samples: Vec<f64>,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Blocks mode: median over blocks of the mean seconds per step, unprobed and probed.
    pub plain_step_s: Option<f64>,
    pub probed_step_s: Option<f64>,
    /// Blocks mode: median over probed blocks of the block's mean step time
    /// against the mean of its two unprobed neighbours, minus 1.
    pub probe_overhead: Option<f64>,
}

/// A matmul rate a script or a child process measures.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Peak {
    pub gflops: f64,
}

/// Runs `job` in a child started by `launcher` with `threads` threads.
fn spawn(launcher: &Launcher, job: &ChildJob, threads: usize, backend: Backend) -> Result<Vec<u8>, BenchError> {
    let spec = serde_json::to_string(job).expect("a job serialises");
    let out = launcher
        .command(&spec)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("BURN_DEVICE", backend.burn_device_name())
        .output()?;
    if !out.status.success() {
        return Err(BenchError::Failed(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .map_or("failed", |l| l.trim_start_matches("error: "))
                .to_owned(),
        ));
    }
    Ok(out.stdout)
}

/// Measures `preset` on `backend` with `threads` threads in a child process.
pub fn run_child(
    launcher: &Launcher,
    preset: &str,
    backend: Backend,
    threads: usize,
    mode: Mode,
    settings: &Settings,
) -> Result<Measured, BenchError> {
    let job = ChildJob::Train {
        preset: preset.to_owned(),
        backend,
        mode,
        settings: *settings,
    };
    let out = spawn(launcher, &job, threads, backend)?;
    serde_json::from_slice(&out).map_err(|e| BenchError::Failed(format!("unreadable result of {preset}: {e}")))
}

/// GFLOP/s of Burn's `[m, k] @ [k, n]` on `backend` with `threads` threads,
/// measured in a child process.
pub fn burn_matmul(launcher: &Launcher, backend: Backend, threads: usize, m: usize, k: usize, n: usize) -> Option<f64> {
    let out = spawn(launcher, &ChildJob::Matmul { backend, m, k, n }, threads, backend).ok()?;
    serde_json::from_slice::<Peak>(&out).map(|p| p.gflops).ok()
}

/// Burn flex's best square fp32 product, at the sizes PyTorch's roof uses.
pub fn burn_peak(launcher: &Launcher, threads: usize) -> Option<f64> {
    [512, 1024, 2048]
        .into_iter()
        .filter_map(|n| burn_matmul(launcher, Backend::Flex, threads, n, n, n))
        .reduce(f64::max)
}

/// `[m, k] @ [k, n]` shapes of one training step of a 784-256-...-10 MLP at
/// batch 128: forward, weight gradient (`x^T dy`), input gradient (`dy W^T`).
pub const MATMUL_SHAPES: [(usize, usize, usize, &str); 4] = [
    (128, 784, 256, "forward, first layer"),
    (128, 256, 256, "forward, hidden layer"),
    (256, 128, 256, "weight gradient, hidden layer"),
    (784, 128, 256, "weight gradient, first layer"),
];

/// The fp32 matmul roof: the best of PyTorch's square products and Burn's.
/// (PyTorch's CPU wheel alone can sit below the machine's roof: on an AMD
/// CPU with AVX-512 its `torch.mm` ran at half the rate of Burn's gemm.)
#[derive(Debug, Clone)]
pub struct Roof {
    pub torch: Result<f64, String>,
    pub burn: Option<f64>,
}

impl Roof {
    pub fn best(&self) -> Result<f64, String> {
        match (&self.torch, self.burn) {
            (Ok(t), Some(b)) => Ok(t.max(b)),
            (Ok(t), None) => Ok(*t),
            (Err(_), Some(b)) => Ok(b),
            (Err(e), None) => Err(e.clone()),
        }
    }
}

/// The child's side: runs the job a parent sent (as JSON) and returns the
/// line to print.
pub fn serve(spec: &str) -> Result<String, BenchError> {
    let job: ChildJob =
        serde_json::from_str(spec).map_err(|e| BenchError::Failed(format!("bad child job `{spec}`: {e}")))?;
    let line = match job {
        ChildJob::Matmul { backend, m, k, n } => {
            serde_json::json!({ "gflops": matmul_gflops(backend, m, k, n)? }).to_string()
        }
        ChildJob::Train {
            preset,
            backend,
            mode,
            settings,
        } => serde_json::to_string(&measure(&preset, backend, mode, &settings)?).expect("results serialise"),
    };
    Ok(line)
}

/// Trains `preset` in this process and measures it.
fn measure(preset: &str, backend: Backend, mode: Mode, settings: &Settings) -> Result<Measured, BenchError> {
    let rows = train(preset, backend, mode, settings)?;
    let samples: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let (mut plain_step_s, mut probed_step_s, mut probe_overhead) = (None, None, None);
    if mode == Mode::ProbeBlocks {
        let blocks = block_means(&rows, settings.batch_size);
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
    Ok(Measured {
        median: median(&mut samples.clone()),
        samples,
        peak_rss_mib: peak_rss_mib(),
        plain_step_s,
        probed_step_s,
        probe_overhead,
    })
}

/// Trains `preset` in this process; returns the metrics rows after the warm-up
/// as `(step, samples/s)`.
fn train(preset: &str, backend: Backend, mode: Mode, settings: &Settings) -> Result<Vec<(u64, f64)>, BenchError> {
    let tmp = tempfile::tempdir()?;
    let (steps, log_every, schedule) = match mode {
        Mode::Throughput => (settings.steps * (settings.reps + 1), settings.steps, ProbeSchedule::Off),
        Mode::ProbeBlocks => (
            2 * BLOCK * block_pairs(settings) * (settings.reps + 1),
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
        batch_size: settings.batch_size,
        epochs: 1000,
        max_steps: Some(steps),
        log_every,
        ..TrainConfig::default()
    };
    let probe = ProbeConfig {
        schedule,
        reductions: settings.probe_reductions,
        ..ProbeConfig::default()
    };
    // Throughput runs have the probe off: `run_with` then has no probe to wrap.
    let summary = ProbedRun::start(&RunConfig::new(config, probe), &tmp.path().join("run"))?
        .run_with(|probe| Box::new(ProbeInBlocks(probe)))?;
    if let Some(d) = summary.diverged {
        return Err(BenchError::Failed(format!(
            "{preset} diverged at step {} ({}) with the benchmark's SGD (lr 0.1, momentum 0.9)",
            d.step, d.cause
        )));
    }
    let rows = gradscope_report::load::read_metrics(&tmp.path().join("run/metrics.csv"), &mut Vec::new())
        .map_err(BenchError::Failed)?;
    // Row 0 is the untrained evaluation; the first `steps / (reps + 1)` steps are the warm-up.
    let warm_up = steps / (settings.reps + 1);
    Ok(rows
        .iter()
        .filter(|r| r.step > warm_up)
        .filter_map(|r| Some((r.step, r.samples_per_s?)))
        .collect())
}

/// GFLOP/s of Burn's `[m, k] @ [k, n]` on `backend` (median of 7 timings).
fn matmul_gflops(backend: Backend, m: usize, k: usize, n: usize) -> Result<f64, BenchError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that logged nothing after its warm-up reports a NaN median, which
    /// reaches the parent as NaN rather than as JSON it cannot read.
    #[test]
    fn a_nan_median_survives_the_trip_to_the_parent() {
        let m = Measured {
            median: f64::NAN,
            samples: Vec::new(),
            peak_rss_mib: None,
            plain_step_s: None,
            probed_step_s: None,
            probe_overhead: None,
        };
        let back: Measured = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(back.median.is_nan() && back.samples.is_empty());
    }

    #[test]
    fn jobs_travel_as_json() {
        let job = ChildJob::Train {
            preset: "mlp-relu-2x16".into(),
            backend: Backend::Flex,
            mode: Mode::ProbeBlocks,
            settings: Settings {
                steps: 3,
                reps: 1,
                batch_size: 8,
                probe_reductions: gradscope_probe::Reductions::Host,
            },
        };
        let text = serde_json::to_string(&job).unwrap();
        let ChildJob::Train { preset, settings, .. } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!((preset.as_str(), settings.batch_size), ("mlp-relu-2x16", 8));
        assert!(
            serve("{\"job\": \"sing\"}")
                .unwrap_err()
                .to_string()
                .contains("bad child job")
        );
    }
}
