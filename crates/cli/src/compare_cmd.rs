//! `gradscope compare RUN...`: charts, summary table and report.html comparing runs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use gradscope_report::{ReportOptions, XAxis};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum XArg {
    Step,
    Epoch,
    Time,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Run directories written by `gradscope train` (or `lab`).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output directory for report.html, the SVG charts and their CSV data.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// X axis of the convergence charts.
    #[arg(long, value_enum, default_value = "step")]
    pub x: XArg,
    /// Moving-average window (in logged rows) for the curves.
    #[arg(long, default_value_t = 1)]
    pub smooth: usize,
    /// Test accuracy (0..1) whose first crossing the summary reports.
    #[arg(long, default_value_t = 0.9)]
    pub target_acc: f64,
}

pub fn run(args: CompareArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.target_acc) {
        bail!("--target-acc must be between 0 and 1; found {}", args.target_acc);
    }
    let x = match args.x {
        XArg::Step => XAxis::Step,
        XArg::Epoch => XAxis::Epoch,
        XArg::Time => XAxis::Time,
    };
    let report = gradscope_report::build(
        &args.runs,
        ReportOptions {
            x,
            smooth: args.smooth.max(1),
            target_acc: args.target_acc,
        },
    )?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let html = report.write(&args.out)?;
    print!("{}", gradscope_report::render_text(&report.summary, args.target_acc));
    println!();
    print!("{}", gradscope_report::text_plot(&report.runs, 64, 12));
    println!("\nreport: {}", html.display());
    Ok(())
}
