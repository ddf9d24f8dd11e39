//! `gradscope bench`: throughput of the real training loop (samples/s, median of
//! repetitions after warm-up) per preset, backend and thread count, probe
//! overhead, and the time to load a 60,000-image IDX file. Each configuration
//! runs in a child process so that the thread count (RAYON_NUM_THREADS) is fixed
//! before any thread pool starts.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_probe::GradientProbe;
use gradscope_train::{Backend, ModelChoice, Optimizer, ProbeSchedule, TrainConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Presets to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mlp-sigmoid-8x256,mlp-relu-bn-8x256,mlp-relu-4x512,resnet20-plain,resnet20-residual"
    )]
    pub presets: Vec<String>,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "flex,ndarray")]
    pub backends: Vec<String>,
    /// Thread counts (RAYON_NUM_THREADS) to measure.
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
    /// Also measure with the probe on every step (probe overhead).
    #[arg(long)]
    pub probe: bool,
    /// Measure only the IDX load time.
    #[arg(long)]
    pub idx_only: bool,
    /// Internal: run one configuration in this process and print its result as JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// One measured configuration.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Measured {
    preset: String,
    backend: String,
    threads: usize,
    probe: bool,
    median: f64,
    samples: Vec<f64>,
}

fn measure(preset: &str, backend: Backend, probe: bool, args: &BenchArgs) -> Result<Vec<f64>> {
    let tmp = tempfile::tempdir()?;
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
        max_steps: Some(args.steps * (args.reps + 1)),
        log_every: args.steps,
        probe: if probe {
            ProbeSchedule::Every { n: 1 }
        } else {
            ProbeSchedule::Off
        },
        ..TrainConfig::default()
    };
    let mut trainer = gradscope_train::start(config, &tmp.path().join("run"))?;
    // The config's probe schedule (every step or off) decides.
    if let Some(probe) = GradientProbe::for_run(&trainer.config)? {
        trainer.observe(Box::new(probe));
    }
    trainer.run()?;
    let rows = gradscope_report::load::read_metrics(&tmp.path().join("run/metrics.csv"), &mut Vec::new())
        .map_err(anyhow::Error::msg)?;
    // Row 0 is the untrained evaluation, row 1 the warm-up repetition.
    Ok(rows.iter().skip(2).filter_map(|r| r.samples_per_s).collect())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
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

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(spec) = &args.child {
        let parts: Vec<&str> = spec.split(':').collect();
        let [preset, backend, threads, probe] = parts[..] else {
            bail!("bad --child spec `{spec}`")
        };
        let b: Backend = toml::Value::String(backend.into()).try_into().context("backend")?;
        let mut samples = measure(preset, b, probe == "probe", &args)?;
        let m = Measured {
            preset: preset.into(),
            backend: backend.into(),
            threads: threads.parse()?,
            probe: probe == "probe",
            median: median(&mut samples.clone()),
            samples: std::mem::take(&mut samples),
        };
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let (plain, gz) = idx_load_seconds()?;
    println!(
        "IDX load, 60,000 x 28 x 28 images (median of 5): plain {:.1} ms, gzip {:.1} ms\n",
        plain * 1e3,
        gz * 1e3
    );
    if args.idx_only {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    println!(
        "| preset | backend | threads | probe | samples/s (median of {}) | min | max |",
        args.reps
    );
    println!("|---|---|---|---|---:|---:|---:|");
    let probes: &[bool] = if args.probe { &[false, true] } else { &[false] };
    for preset in &args.presets {
        for backend in &args.backends {
            for &threads in &args.threads {
                for &probe in probes {
                    let spec = format!("{preset}:{backend}:{threads}:{}", if probe { "probe" } else { "off" });
                    let out = Command::new(&exe)
                        .args([
                            "bench",
                            "--child",
                            &spec,
                            "--steps",
                            &args.steps.to_string(),
                            "--reps",
                            &args.reps.to_string(),
                            "--batch-size",
                            &args.batch_size.to_string(),
                        ])
                        .env("RAYON_NUM_THREADS", threads.to_string())
                        .env("BURN_DEVICE", backend)
                        .output()
                        .with_context(|| format!("running {spec}"))?;
                    if !out.status.success() {
                        println!(
                            "| {preset} | {backend} | {threads} | {probe} | failed: {} | | |",
                            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
                        );
                        continue;
                    }
                    let m: Measured =
                        serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the result of {spec}"))?;
                    let lo = m.samples.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = m.samples.iter().copied().fold(0.0, f64::max);
                    println!(
                        "| {preset} | {backend} | {threads} | {} | {:.0} | {lo:.0} | {hi:.0} |",
                        if probe { "every step" } else { "off" },
                        m.median
                    );
                }
            }
        }
    }
    Ok(())
}
