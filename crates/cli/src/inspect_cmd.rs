//! `gradscope inspect RUN`: the probe's table and verdicts for a finished run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A run directory written by `gradscope train` (or a `ModelProbe`).
    pub run: PathBuf,
    /// Print verdicts.json instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let ins = gradscope_probe::inspect(&args.run).with_context(|| format!("inspecting {}", args.run.display()))?;
    if args.json {
        let v = ins
            .verdicts
            .as_ref()
            .context("no verdicts.json (the run did not finish)")?;
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", gradscope_probe::render(&ins));
        if let Ok(Some(s)) = gradscope_train::run_dir::read_summary(&args.run) {
            let acc = s.final_test_acc.map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0));
            let status = format!("{:?}", s.status).to_lowercase();
            println!("run: {status}, {} steps, final test accuracy {acc}", s.steps);
        }
        let report = args.run.join(gradscope_train::run_dir::REPORT_DIR).join("report.html");
        if report.is_file() {
            println!("report: {}", report.display());
        }
        // `fix` retrains a configuration: a run of gradscope's own.
        if ins
            .verdicts
            .as_ref()
            .is_some_and(|v| v.verdict != gradscope_probe::verdict::Verdict::Healthy)
            && args.run.join(gradscope_train::run_dir::CONFIG_FILE).is_file()
        {
            println!("try the remedies: gradscope fix {}", args.run.display());
        }
    }
    Ok(())
}
