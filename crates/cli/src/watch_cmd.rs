//! `gradscope watch RUN`: follows a run directory that another process is
//! writing (a `gradscope train`, a `ModelProbe` in a user's own loop, a job on
//! a cluster's shared disk) and redraws its latest metrics, per-layer table
//! and verdict so far, until the run ends.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use gradscope_probe::{Inspection, inspect, judge, render};
use gradscope_train::run_dir::{CONFIG_FILE, METRICS_FILE, VERDICTS_FILE, read_config, read_end};

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The run directory to follow (it may not exist yet).
    pub run: PathBuf,
    /// Seconds between reads of the run's files.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Draw once and exit.
    #[arg(long)]
    pub once: bool,
}

/// Whether the run has ended: its last event is `end` (gradscope's trainer),
/// or, for a `ModelProbe` run (no `config.toml`), its verdicts are written.
fn ended(dir: &Path) -> Option<String> {
    if dir.join(CONFIG_FILE).is_file() {
        read_end(dir)
    } else {
        dir.join(VERDICTS_FILE).is_file().then(|| "finished".to_owned())
    }
}

/// The latest `metrics.csv` row, in words.
fn latest_metrics(dir: &Path) -> Option<String> {
    let mut warnings = Vec::new();
    let rows = gradscope_report::load::read_metrics(&dir.join(METRICS_FILE), &mut warnings).ok()?;
    let last = rows.last()?;
    let mut parts = vec![format!("step {}", last.step)];
    if last.epoch.is_finite() {
        parts.push(format!("epoch {:.2}", last.epoch));
    }
    if let Some(l) = rows.iter().rev().find_map(|r| r.train_loss) {
        parts.push(format!("train loss {l:.4}"));
    }
    if let Some(a) = rows.iter().rev().find_map(|r| r.test_acc) {
        parts.push(format!("test acc {:.2}%", a * 100.0));
    }
    if let Some(s) = last.samples_per_s {
        parts.push(format!("{s:.0} samples/s"));
    }
    Some(parts.join(", "))
}

/// One frame: what the run's files say now, and the step it is at.
fn frame(dir: &Path, status: Option<&str>) -> (String, Option<u64>) {
    let mut out = format!("gradscope watch {} ({})\n", dir.display(), status.unwrap_or("running"));
    if let Some(m) = latest_metrics(dir) {
        out.push_str(&m);
        out.push('\n');
    }
    match inspect(dir) {
        Ok(mut ins) => {
            let step = ins.records.last().map(|r| r.step);
            if status.is_none() || ins.verdicts.is_none() {
                // The verdict so far, from the records written up to now.
                ins.verdicts = Some(live_verdicts(dir, &ins));
            }
            out.push('\n');
            out.push_str(&render(&ins));
            (out, step)
        }
        Err(e) => {
            out.push_str(&format!("(no probe table yet: {e})\n"));
            (out, None)
        }
    }
}

fn live_verdicts(dir: &Path, ins: &Inspection) -> gradscope_probe::Verdicts {
    let classes = read_config(dir)
        .ok()
        .and_then(|c| c.classes.map(|c| c.len()))
        .unwrap_or(10);
    judge(&ins.points, &ins.records, classes, None)
}

pub fn run(args: WatchArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!(
            "--interval: found {}; expected a number of seconds above 0",
            args.interval
        );
    }
    if args.run.is_file() {
        bail!("{}: a file; expected a run directory", args.run.display());
    }
    let tty = std::io::stdout().is_terminal();
    let mut shown: Option<(Option<u64>, Option<String>)> = None;
    let mut changed = Instant::now();
    loop {
        let status = ended(&args.run);
        if !args.run.is_dir() {
            if args.once {
                bail!("{}: no such run directory", args.run.display());
            }
            if shown.is_none() {
                println!("waiting for {} to appear", args.run.display());
                shown = Some((None, None));
            }
        } else {
            let (text, step) = frame(&args.run, status.as_deref());
            let key = (step, status.clone());
            if shown.as_ref() != Some(&key) {
                changed = Instant::now();
            }
            // A terminal gets the frame redrawn in place, every tick (with the
            // time since the last new record); a pipe or file gets a frame
            // only when the run has moved on.
            let mut stdout = std::io::stdout().lock();
            if tty {
                let idle = changed.elapsed().as_secs();
                let note = if status.is_none() && idle >= 10 {
                    format!("(no new probe record for {idle} s)\n")
                } else {
                    String::new()
                };
                write!(stdout, "\x1b[H\x1b[2J{text}{note}")?;
            } else if shown.as_ref() != Some(&key) {
                writeln!(stdout, "{text}")?;
            }
            stdout.flush()?;
            shown = Some(key);
            if status.is_some() || args.once {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}
