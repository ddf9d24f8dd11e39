//! `gradscope lab`: runs an experiment suite (reusing finished runs), judges each
//! claim from the measurements, and writes one report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_lab::{Job, JobOutcome, Outcome, Spread, Suite, distinct_runs, judge_suite, run_all};
use gradscope_train::{Backend, ModelChoice, Optimizer};
use indicatif::{ProgressBar, ProgressStyle};

/// The default suite and its quick and full variants, compiled in so
/// `gradscope lab` works outside a checkout too.
const DEFAULT_SUITE: &str = include_str!("../../../experiments/vanishing.toml");
const QUICK_SUITE: &str = include_str!("../../../experiments/quick.toml");
const FULL_SUITE: &str = include_str!("../../../experiments/full.toml");

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Suite file (default: experiments/vanishing.toml, bundled).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// The quick suite (one seed, one epoch).
    #[arg(long, conflicts_with = "suite")]
    pub quick: bool,
    /// The full suite: three seeds, and skip connections on convolutional
    /// ResNets too (several minutes on a 2-core CPU).
    #[arg(long, conflicts_with_all = ["suite", "quick"])]
    pub full: bool,
    /// Output directory; runs already completed in it are reused.
    #[arg(long, default_value = "lab")]
    pub out: PathBuf,
    /// Backend for every run (overrides the suite).
    #[arg(long, value_parser = crate::train_cmd::parse_backend)]
    pub backend: Option<Backend>,
    /// Seeds of every claim (overrides the suite's), e.g. `--seeds 5,6`.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Dataset of every run (overrides the suite's): a catalogue name, or any
    /// name with --data-dir.
    #[arg(long)]
    pub dataset: Option<String>,
    /// A folder with the four IDX files of another MNIST-like dataset
    /// (e.g. Fashion-MNIST), for every run.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Runs at a time, one thread each (1: one run at a time on every thread).
    /// Small MLPs train faster on one thread than on two here, so `--jobs 2`
    /// finishes the default suite sooner on a 2-core machine (BENCHMARKS.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: u64,
    /// Print one self-contained `gradscope train` command per run and exit.
    #[arg(long)]
    pub list_jobs: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn load_suite(args: &LabArgs) -> Result<Suite> {
    let (name, text) = match (&args.suite, args.quick, args.full) {
        (Some(p), ..) => return Suite::load(p).map_err(anyhow::Error::msg),
        (None, true, _) => ("quick", QUICK_SUITE),
        (None, _, true) => ("full", FULL_SUITE),
        (None, false, false) => ("default", DEFAULT_SUITE),
    };
    Suite::parse(text).map_err(|e| anyhow::anyhow!("bundled {name} suite: {e}"))
}

/// A `gradscope train` command line reproducing `job`.
pub(crate) fn command_line(job: &Job) -> Result<String> {
    let c = &job.config.train;
    let ModelChoice::Preset { preset } = &c.model else {
        let path = job.dir.with_extension("toml");
        return Ok(format!(
            "gradscope train --config {} --out {}",
            path.display(),
            job.dir.display()
        ));
    };
    let mut s = format!(
        "gradscope train --preset {preset} --dataset {} --backend {} --lr {} --batch-size {} --epochs {} --log-every {} --seed {}",
        c.dataset, c.backend, c.lr, c.batch_size, c.epochs, c.log_every, c.seed
    );
    if let Some(dir) = &c.data_dir {
        s.push_str(&format!(" --data-dir {}", dir.display()));
    }
    match c.optimizer {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            s.push_str(&format!(
                " --optimizer sgd --momentum {momentum} --weight-decay {weight_decay}"
            ));
            if nesterov {
                s.push_str(" --nesterov");
            }
        }
        _ => bail!(
            "--list-jobs writes flags for SGD suites only; use a config file for {:?}",
            c.optimizer
        ),
    }
    if let Some(m) = c.max_steps {
        s.push_str(&format!(" --max-steps {m}"));
    }
    let p = &job.config.probe;
    s.push_str(&format!(
        " --probe {} --probe-update-every {} --probe-reductions {} --quiet --out {}",
        p.schedule,
        p.update_every,
        p.reductions,
        job.dir.display()
    ));
    Ok(s)
}

pub fn run(args: LabArgs) -> Result<()> {
    let mut suite = load_suite(&args)?;
    if let Some(b) = args.backend {
        suite.base.insert("backend".into(), toml::Value::String(b.to_string()));
    }
    if let Some(seeds) = &args.seeds {
        if seeds.is_empty() {
            bail!("--seeds: expected one or more seeds, e.g. `--seeds 5,6`");
        }
        suite.seeds = seeds.clone();
    }
    if let Some(d) = &args.dataset {
        suite.base.insert("dataset".into(), toml::Value::String(d.clone()));
    }
    if let Some(dir) = &args.data_dir {
        let text = dir.to_str().context("--data-dir: the path is not UTF-8")?;
        suite.base.insert("data_dir".into(), toml::Value::String(text.into()));
    }
    let jobs = suite.jobs(&args.out).map_err(anyhow::Error::msg)?;
    if args.list_jobs {
        for job in distinct_runs(&jobs).into_iter().map(|i| &jobs[i]) {
            if !matches!(job.config.train.model, ModelChoice::Preset { .. }) {
                let text = toml::to_string_pretty(&job.config.joined())?;
                std::fs::create_dir_all(job.dir.parent().expect("job dirs have parents"))?;
                std::fs::write(job.dir.with_extension("toml"), text)?;
            }
            println!("{}", command_line(job)?);
        }
        println!(
            "# then: gradscope compare {}/*/* --out {}/report",
            args.out.display(),
            args.out.display()
        );
        return Ok(());
    }
    crate::train_cmd::pin_default_device(jobs.first().map_or(Backend::Flex, |j| j.config.train.backend));
    let runs = distinct_runs(&jobs).len();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(runs as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("lab [{bar:30}] {pos}/{len} runs, eta {eta}  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let spread = match args.jobs {
        1 => Spread::Sequential,
        n => Spread::Concurrent(n as usize),
    };
    let report = |i: usize, what: JobOutcome, warning: Option<String>| {
        let job = &jobs[i];
        let k = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if let Some(w) = warning {
            bar.suspend(|| eprintln!("warning: {w}"));
        }
        if args.quiet || bar.is_hidden() {
            eprintln!("[{k}/{runs}] {} {}", what.as_str(), job.dir.display());
        }
        bar.set_message(format!("{}/{} seed {}", job.claim, job.role, job.seed));
        bar.inc(1);
    };
    run_all(&jobs, spread, &report).map_err(|(i, e)| {
        let job = &jobs[i];
        anyhow::Error::new(e).context(format!("lab run {}/{} seed {}", job.claim, job.role, job.seed))
    })?;
    bar.finish_and_clear();
    let (results, html) = judge_suite(&suite, &jobs, &args.out)?;
    println!(
        "{} ({} runs, {:.0} s)\n",
        suite.name,
        runs,
        started.elapsed().as_secs_f64()
    );
    for c in &results {
        let word = if c.outcome == Outcome::Confirmed {
            "CONFIRMED"
        } else {
            "NOT CONFIRMED"
        };
        println!("{word:<14} {}", c.title);
        for e in &c.evidence {
            println!("               - {e}");
        }
    }
    println!(
        "\nreport: {}\nclaims: {}",
        html.display(),
        args.out.join("claims.json").display()
    );
    Ok(())
}
