//! `gradscope inspect RUN`: the probe's table and verdicts for a finished run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A run directory written by `gradscope train`.
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
    }
    Ok(())
}
