//! `gradscope tensorboard`: (re)writes TensorBoard event files for run directories.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use gradscope_train::run_dir::{CONFIG_FILE, METRICS_FILE, POINTS_FILE, is_run};

#[derive(Args, Debug)]
pub struct TensorboardArgs {
    /// Run directories, or folders holding them (a lab's output, `runs/`).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// Run directories at or below `dir` (three levels down at most).
fn runs_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if is_run(dir) {
        out.push(dir.to_owned());
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut subdirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    for d in subdirs {
        runs_under(&d, depth - 1, out);
    }
}

/// Exports one run after training; a failure is a warning, the run stands.
pub fn export_after_run(dir: &Path) {
    if let Err(e) = gradscope_tensorboard::export(dir) {
        eprintln!("warning: no TensorBoard events for {}: {e}", dir.display());
    }
}

pub fn run(args: TensorboardArgs) -> Result<()> {
    let mut runs = Vec::new();
    for d in &args.dirs {
        if !d.is_dir() {
            bail!("{}: not a directory", d.display());
        }
        let before = runs.len();
        runs_under(d, 3, &mut runs);
        if runs.len() == before {
            bail!(
                "{}: no run directory (one with {METRICS_FILE} and {CONFIG_FILE} or {POINTS_FILE}) in it or below it",
                d.display()
            );
        }
    }
    for r in &runs {
        let path = gradscope_tensorboard::export(r)?;
        println!("{}", path.display());
    }
    let logdir = match &args.dirs[..] {
        [one] => one.display().to_string(),
        _ => "<a folder that holds them>".into(),
    };
    println!(
        "{} run(s) exported; view them with: tensorboard --logdir {logdir}",
        runs.len()
    );
    Ok(())
}
