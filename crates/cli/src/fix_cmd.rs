//! `gradscope fix RUN`: tries each remedy the run's verdict calls for, from the
//! same seed and data, and ranks them by the rules that flagged the run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use gradscope_lab::fix::{self, Judged, Plan};
use gradscope_lab::run_job;
use gradscope_train::run_dir::VERDICTS_FILE;

#[derive(Args, Debug)]
pub struct FixArgs {
    /// The run directory to fix.
    pub run: PathBuf,
    /// Where the candidates' runs and the report go (default: RUN-fix).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimiser steps per candidate (default: the run's own, within --budget).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seconds the whole fix may take, estimated from the run's own speed;
    /// caps the default number of steps.
    #[arg(long, default_value_t = 120.0)]
    pub budget: f64,
    /// Print one `gradscope train` command per candidate and exit.
    #[arg(long)]
    pub list_jobs: bool,
}

/// Steps per candidate: `--steps`, else the run's own capped so that every
/// candidate and the control fit `--budget`.
fn steps_for(args: &FixArgs, run: &gradscope_report::RunData, runs: usize) -> Result<u64> {
    if let Some(s) = args.steps {
        if s == 0 {
            bail!("--steps: found 0; expected at least 1");
        }
        return Ok(s);
    }
    if args.budget.is_nan() || args.budget <= 0.0 {
        bail!("--budget: found {}; expected a positive number of seconds", args.budget);
    }
    Ok(fix::steps_within(run, args.budget, runs))
}

fn default_out(run: &Path) -> PathBuf {
    let name = run
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    run.with_file_name(format!("{name}-fix"))
}

/// The ranking table in the terminal: the same rows as the report's.
fn print_table(table: &gradscope_report::LeadTable) {
    let line = |c: &[String]| {
        println!(
            "{:<4} {:<40} {:<6} {:>9}  {:<13} {}",
            c[0], c[1], c[2], c[3], c[4], c[5]
        )
    };
    println!();
    line(&table.columns);
    table.rows.iter().for_each(|r| line(r));
}

/// The ranking as the report's lead table.
fn ranking_table(plan: &Plan, judged: &[Judged], steps: u64) -> gradscope_report::LeadTable {
    let names: Vec<&str> = plan.flagged.iter().map(|r| r.as_str()).collect();
    gradscope_report::LeadTable {
        title: "Remedies, ranked".into(),
        text: format!(
            "The run was flagged: {}. Each remedy was trained for {steps} steps from the same seed and data, beside the unchanged configuration; a cure does not diverge, clears every flag the run had, and ends at least {:.0} points of test accuracy above the control.",
            names.join(", "),
            fix::BETTER_BY * 100.0
        ),
        columns: ["rank", "remedy", "cured", "test acc", "verdict after", "why"]
            .map(String::from)
            .to_vec(),
        rows: judged
            .iter()
            .enumerate()
            .map(|(k, j)| {
                vec![
                    (k + 1).to_string(),
                    j.description.clone(),
                    if j.cured { "yes" } else { "no" }.into(),
                    j.final_test_acc.map_or("n/a".into(), |a| format!("{:.1}%", a * 100.0)),
                    j.verdict.map_or("-".into(), |v| v.to_string()),
                    j.because.clone(),
                ]
            })
            .collect(),
    }
}

pub fn run(args: FixArgs) -> Result<()> {
    let mut warnings = Vec::new();
    let original = gradscope_report::load_run(&args.run, &mut warnings).map_err(anyhow::Error::msg)?;
    let Some(config) = &original.config else {
        bail!(
            "{}: no config.toml; `gradscope fix` retrains gradscope's own configurations, and this run was probed in a training loop of your own (try its remedies there: see {})",
            args.run.display(),
            args.run.join(VERDICTS_FILE).display()
        );
    };
    let mut flagged = fix::flags(&original);
    if original.verdicts.is_none() {
        if original.summary.as_ref().is_some_and(|s| s.diverged.is_some()) {
            flagged.push(gradscope_probe::verdict::Rule::Diverged);
        } else {
            bail!(
                "{}: missing; `gradscope fix` needs the probe's verdict (train with the probe on)",
                args.run.join(VERDICTS_FILE).display()
            );
        }
    }
    if flagged.is_empty() {
        println!(
            "nothing to fix: {} is healthy (no rule fired; see {})",
            args.run.display(),
            args.run.join(VERDICTS_FILE).display()
        );
        return Ok(());
    }
    let rough = fix::plan(config, &flagged, 1).map_err(anyhow::Error::msg)?;
    let steps = steps_for(&args, &original, rough.candidates.len() + 1)?;
    let plan = fix::plan(config, &flagged, steps).map_err(anyhow::Error::msg)?;
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.run));
    let jobs = plan.jobs(&out)?;
    if args.list_jobs {
        for job in &jobs {
            if !matches!(job.config.train.model, gradscope_train::ModelChoice::Preset { .. }) {
                std::fs::create_dir_all(&out)?;
                std::fs::write(
                    job.dir.with_extension("toml"),
                    toml::to_string_pretty(&job.config.joined())?,
                )?;
            }
            println!("{}", crate::lab_cmd::command_line(job)?);
        }
        return Ok(());
    }
    let names: Vec<&str> = plan.flagged.iter().map(|r| r.as_str()).collect();
    println!(
        "{} is flagged: {}. Trying {} remedies for {steps} steps each (and the unchanged configuration as the control), seed {}:",
        args.run.display(),
        names.join(", "),
        plan.candidates.len(),
        plan.control.seed
    );
    for c in &plan.candidates {
        println!("  - {}", c.remedy.describe());
    }
    for (r, why) in &plan.not_applicable {
        println!("  (not tried: {}: {why})", r.describe());
    }
    for (k, job) in jobs.iter().enumerate() {
        let (what, warning) = run_job(job).with_context(|| format!("fix candidate {}", job.role))?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        eprintln!("[{}/{}] {} {}", k + 1, jobs.len(), what.as_str(), job.dir.display());
    }
    let mut runs = Vec::new();
    for job in &jobs {
        runs.push(gradscope_report::load_run(&job.dir, &mut warnings).map_err(anyhow::Error::msg)?);
    }
    let control = &runs[0];
    let mut judged: Vec<Judged> = std::iter::once(None)
        .chain(plan.candidates.iter().map(|c| Some(c.remedy)))
        .zip(&runs)
        .map(|(remedy, run)| fix::judge(&plan.flagged, control, remedy, run))
        .collect();
    fix::rank(&mut judged);
    let table = ranking_table(&plan, &judged, steps);
    print_table(&table);
    match judged.first().filter(|j| j.cured) {
        Some(best) => println!("\nbest: {} cures it ({})", best.description, best.dir),
        None => println!(
            "\nno candidate cured it within {steps} steps (a longer --steps may); the best: {}",
            judged.first().map_or("-", |j| j.description.as_str())
        ),
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "run": args.run.display().to_string(),
        "flagged": plan.flagged,
        "steps": steps,
        "ranking": judged,
        "not_tried": plan.not_applicable.iter().map(|(r, why)| serde_json::json!({"remedy": r, "why": why})).collect::<Vec<_>>(),
    }))?;
    gradscope_train::files::write_atomic(&out.join("fix.json"), json.as_bytes())?;
    let mut labelled = vec![(
        format!(
            "original run ({} steps)",
            original.summary.as_ref().map_or(0, |s| s.steps)
        ),
        args.run.clone(),
    )];
    labelled.push((format!("unchanged, {steps} steps (control)"), jobs[0].dir.clone()));
    labelled.extend(
        plan.candidates
            .iter()
            .zip(&jobs[1..])
            .map(|(c, j)| (c.remedy.describe().to_owned(), j.dir.clone())),
    );
    let mut report = gradscope_report::build_labelled(&labelled, gradscope_report::ReportOptions::default())?;
    report.lead = Some(table);
    let html = report.write(&out.join("report"))?;
    println!(
        "ranking: {}\nreport: {}",
        out.join("fix.json").display(),
        html.display()
    );
    Ok(())
}
