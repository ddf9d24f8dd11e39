//! `gradscope parity`: the same run on several backends, compared step by step.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_probe::{ProbeConfig, ProbeSchedule, ProbedRun, RunConfig};
use gradscope_train::{Backend, ModelChoice, TrainConfig};

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// Backends to compare; the first is the reference.
    #[arg(long, value_delimiter = ',', default_value = "flex,ndarray,wgpu")]
    pub backends: Vec<String>,
    /// Model preset.
    #[arg(long, default_value = "mlp-sigmoid-10x128")]
    pub preset: String,
    /// Optimiser steps to compare.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Relative tolerance on losses and gradient norms.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Directory for the per-backend runs and parity.json (must not exist or be empty).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit with status 1 if any backend differs beyond the tolerance.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: ParityArgs) -> Result<()> {
    let backends: Vec<Backend> = args
        .backends
        .iter()
        .map(|b| {
            toml::Value::String(b.clone())
                .try_into()
                .map_err(|_| anyhow::anyhow!("--backends: unknown backend `{b}`; expected flex, ndarray, wgpu or cuda"))
        })
        .collect::<Result<_>>()?;
    if backends.len() < 2 {
        bail!("--backends needs at least two backends; found {}", backends.len());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::train_cmd::default_run_dir(&format!("parity-{}", args.preset)));
    if out.exists()
        && std::fs::read_dir(&out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty; choose a new --out directory", out.display());
    }
    let mut dirs = Vec::new();
    for backend in &backends {
        let config = TrainConfig {
            model: ModelChoice::Preset {
                preset: args.preset.clone(),
            },
            backend: *backend,
            lr: args.lr,
            batch_size: args.batch_size,
            max_steps: Some(args.steps),
            log_every: 1,
            seed: args.seed,
            ..TrainConfig::default()
        };
        let probe = ProbeConfig {
            schedule: ProbeSchedule::Every { n: 1 },
            ..ProbeConfig::default()
        };
        let dir = out.join(backend.to_string());
        let run = ProbedRun::start(&RunConfig::new(config, probe), &dir)
            .with_context(|| format!("starting the {backend} run"))?;
        run.run().with_context(|| format!("training on {backend}"))?;
        dirs.push((backend.to_string(), dir));
    }
    let refs: Vec<(String, &std::path::Path)> = dirs.iter().map(|(b, d)| (b.clone(), d.as_path())).collect();
    let rows = gradscope_probe::parity::compare(&refs, args.tol).map_err(anyhow::Error::msg)?;
    println!(
        "parity of {} over {} steps (reference: {}, tolerance {:e} relative)",
        args.preset, args.steps, backends[0], args.tol
    );
    println!(
        "{:<9} {:>14} {:>14} {:>12}  first divergence",
        "backend", "max loss diff", "max |g| diff", "samples/s"
    );
    let mut diverged = false;
    for r in &rows {
        let first = r.first_divergence.as_ref().map_or("none".to_owned(), |d| {
            diverged = true;
            format!(
                "step {} {}{}: {:.6e} vs {:.6e}",
                d.step,
                d.quantity,
                d.layer.as_ref().map_or(String::new(), |l| format!(" at {l}")),
                d.reference,
                d.other
            )
        });
        println!(
            "{:<9} {:>14.3e} {:>14.3e} {:>12}  {first}",
            r.backend,
            r.max_loss_rel_diff,
            r.max_grad_rel_diff,
            r.samples_per_s.map_or("-".into(), |s| format!("{s:.0}"))
        );
    }
    let json = serde_json::to_string_pretty(
        &serde_json::json!({ "preset": args.preset, "steps": args.steps, "tolerance": args.tol, "rows": rows }),
    )?;
    std::fs::write(out.join("parity.json"), json)
        .with_context(|| format!("writing {}", out.join("parity.json").display()))?;
    if diverged && args.strict {
        bail!("backends differ beyond the tolerance {:e}", args.tol);
    }
    Ok(())
}
