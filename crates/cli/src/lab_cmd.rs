//! `gradscope lab`: runs an experiment suite (reusing finished runs), judges each
//! claim from the measurements, and writes one report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_probe::GradientProbe;
use gradscope_report::lab::{ClaimResult, Job, Outcome, Suite, evaluate};
use gradscope_train::{Backend, ModelChoice, Optimizer, Status};
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
    let c = &job.config;
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
    s.push_str(&format!(" --probe {} --quiet --out {}", c.probe, job.dir.display()));
    Ok(s)
}

/// Runs one job, or reuses/resumes what a previous lab left in its directory.
pub(crate) fn run_job(job: &Job) -> Result<&'static str> {
    // What a previous lab left here is reused only if it is this very run.
    if job.dir.join(gradscope_train::run_dir::CONFIG_FILE).exists() {
        let saved = gradscope_train::run_dir::read_config(&job.dir)?;
        if saved != job.config {
            bail!(
                "{} holds a run of another configuration (from another suite or version); move it away or choose another --out",
                job.dir.display()
            );
        }
    }
    let summary = job.dir.join("summary.json");
    if let Ok(text) = std::fs::read_to_string(&summary) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["status"] == "completed" || v["status"] == "diverged" {
            return Ok("reused");
        }
    }
    let probe = GradientProbe::for_run(&job.config)?;
    let (mut trainer, what) = if job.dir.join("checkpoints/latest").exists() {
        (gradscope_train::resume(&job.dir, Default::default())?, "resumed")
    } else {
        if job.dir.exists() {
            // Another process still training here (a second lab on the same --out) is left alone.
            if job.dir.join(gradscope_train::run_dir::CONFIG_FILE).exists() {
                drop(gradscope_train::RunDir::open(&job.dir)?);
            }
            // A previous lab died before this run's first checkpoint: keep it aside, never delete it.
            let aside = job
                .dir
                .with_extension(format!("incomplete-{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
            std::fs::rename(&job.dir, &aside).with_context(|| format!("moving {} aside", job.dir.display()))?;
        }
        (gradscope_train::start(job.config.clone(), &job.dir)?, "trained")
    };
    if let Some(probe) = probe {
        trainer.observe(Box::new(probe));
    }
    let (s, _) = trainer.run()?;
    if s.status == Status::Interrupted {
        bail!("{} was interrupted", job.dir.display());
    }
    crate::tensorboard_cmd::export_after_run(&job.dir);
    Ok(what)
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
        let mut listed: Vec<&PathBuf> = Vec::new();
        for job in &jobs {
            // A run several claims share is listed once.
            if listed.contains(&&job.dir) {
                continue;
            }
            listed.push(&job.dir);
            if !matches!(job.config.model, ModelChoice::Preset { .. }) {
                let text = toml::to_string_pretty(&job.config)?;
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
    crate::train_cmd::pin_default_device(jobs.first().map_or(Backend::Flex, |j| j.config.backend));
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(jobs.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("lab [{bar:30}] {pos}/{len} runs, eta {eta}  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    for (k, job) in jobs.iter().enumerate() {
        bar.set_message(format!("{}/{} seed {}", job.claim, job.role, job.seed));
        let what = run_job(job).with_context(|| format!("lab run {}/{} seed {}", job.claim, job.role, job.seed))?;
        if args.quiet || bar.is_hidden() {
            eprintln!("[{}/{}] {what} {}", k + 1, jobs.len(), job.dir.display());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    // A run shared by several claims is trained once and drawn once.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for j in &jobs {
        if !dirs.contains(&j.dir) {
            dirs.push(j.dir.clone());
        }
    }
    let mut report = gradscope_report::lab_report(&dirs, Vec::new())?;
    let mut results: Vec<ClaimResult> = Vec::new();
    for claim in &suite.claims {
        // The claim's runs by role, in the order its kind names them.
        let mut roles: Vec<&str> = claim.kind.roles().to_vec();
        roles.extend(
            claim
                .roles
                .keys()
                .map(String::as_str)
                .filter(|r| !claim.kind.roles().contains(r)),
        );
        let mut by_role: BTreeMap<String, Vec<gradscope_report::RunData>> = BTreeMap::new();
        let mut ordered: Vec<(String, gradscope_report::RunData)> = Vec::new();
        for role in roles {
            for job in jobs.iter().filter(|j| j.claim == claim.id && j.role == role) {
                if let Some(r) = report.runs.iter().find(|r| r.dir == job.dir) {
                    by_role.entry(job.role.clone()).or_default().push(r.clone());
                    ordered.push((job.role.clone(), r.clone()));
                }
            }
        }
        let result = evaluate(claim, &by_role);
        report
            .sections
            .push(gradscope_report::claim_section(result.clone(), &ordered)?);
        results.push(result);
    }
    let html = report.write(&args.out.join("report"))?;
    let json = serde_json::to_string_pretty(&serde_json::json!({ "suite": suite.name, "claims": results }))?;
    gradscope_train::files::write_atomic(&args.out.join("claims.json"), json.as_bytes())?;
    println!(
        "{} ({} runs, {:.0} s)\n",
        suite.name,
        dirs.len(),
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
