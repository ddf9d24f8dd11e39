//! `gradscope bench`: the table of measurements gradscope-bench takes: throughput of the real training loop (samples/s, median of
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_bench::blocks::block_pairs;
use gradscope_bench::system::idx_load_seconds;
use gradscope_bench::{
    BLOCK, Launcher, MATMUL_SHAPES, Measured, Mode, PyTorch, Roof, Settings, burn_matmul, burn_peak, run_child,
};
use gradscope_probe::Reductions;
use gradscope_train::Backend;

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

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

impl BenchArgs {
    fn settings(&self) -> Settings {
        Settings {
            steps: self.steps,
            reps: self.reps,
            batch_size: self.batch_size,
            probe_reductions: self.probe_reductions,
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(spec) = &args.child {
        println!("{}", gradscope_bench::serve(spec)?);
        return Ok(());
    }
    let settings = args.settings();
    let launcher = Launcher {
        program: std::env::current_exe().context("finding this program, to measure in child processes")?,
        args: ["bench", "--skip-idx", "--child"].map(String::from).to_vec(),
    };
    if let Some(out) = &args.out
        && out.exists()
    {
        bail!("--out {}: the file already exists; choose another name", out.display());
    }
    let mut table = String::new();
    if !args.idx_only {
        emit(&mut table, &format!("{}\n", crate::isa::describe()));
    }
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
                match run_child(&launcher, preset, backend, threads, Mode::Throughput, &settings) {
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
                                        burn: (device == "cpu").then(|| burn_peak(&launcher, threads)).flatten(),
                                    })
                                    .best();
                                match py.reference(preset, threads, device, &settings) {
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
                    let row = match run_child(&launcher, preset, backend, threads, Mode::ProbeBlocks, &settings) {
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
                block_pairs(&settings) * args.reps
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
                    let burn = burn_matmul(&launcher, backend, threads, m, k, n);
                    let torch = pytorch.as_ref().and_then(|py| py.matmul_gflops(threads, m, k, n));
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
