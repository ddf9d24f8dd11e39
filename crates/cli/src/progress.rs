//! A terminal progress bar for training, as a trainer observer.

use std::io::IsTerminal;

use gradscope_probe::LiveHandle;
use gradscope_train::{Control, MetricsRow, Observer, RunInfo, StepInfo, TrainError};
use indicatif::{ProgressBar, ProgressStyle};

/// One bar per epoch with the latest loss, accuracy and throughput, and, with
/// the probe on, how much of the back-propagated signal reaches the input
/// side; hidden when stdout is not a terminal or when asked to be quiet.
pub struct Progress {
    bar: ProgressBar,
    steps_per_epoch: u64,
    total_steps: u64,
    live: Option<LiveHandle>,
}

impl Progress {
    pub fn new(quiet: bool, live: Option<LiveHandle>) -> Self {
        let bar = if quiet || !std::io::stdout().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Self {
            bar,
            steps_per_epoch: 1,
            total_steps: 0,
            live,
        }
    }

    /// Shows the epoch holding `step` (0-based): its number of the run's
    /// epochs, and a bar as long as the steps the run takes in it (the last
    /// one shorter under `--max-steps`).
    fn show_epoch(&self, step: u64) {
        let epoch = step / self.steps_per_epoch;
        let epochs = self.total_steps.div_ceil(self.steps_per_epoch).max(1);
        let start = epoch * self.steps_per_epoch;
        self.bar.reset();
        self.bar
            .set_length(self.steps_per_epoch.min(self.total_steps.saturating_sub(start)).max(1));
        self.bar.set_position(step - start);
        self.bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    }
}

impl<M> Observer<M> for Progress {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        self.steps_per_epoch = run.steps_per_epoch.max(1);
        self.total_steps = run.total_steps;
        self.show_epoch(run.resumed_at.unwrap_or(0));
        Ok(())
    }

    fn after_step(&mut self, info: &StepInfo, _after: &M) -> Control {
        let done = info.step + 1;
        if done.is_multiple_of(self.steps_per_epoch) && done < self.total_steps {
            self.show_epoch(done);
        } else {
            self.bar
                .set_position(done - info.step / self.steps_per_epoch * self.steps_per_epoch);
        }
        Control::Continue
    }

    fn on_log(&mut self, row: &MetricsRow) {
        let mut msg = String::new();
        if let (Some(l), Some(a)) = (row.train_loss, row.train_acc) {
            msg.push_str(&format!("loss {l:.4} acc {:.1}%", a * 100.0));
        }
        if let Some(s) = row.samples_per_s {
            msg.push_str(&format!(" {s:.0} samples/s"));
        }
        if let Some(a) = row.test_acc {
            msg.push_str(&format!(" test acc {:.1}%", a * 100.0));
        }
        let live = self.live.as_ref().and_then(|l| l.lock().ok().and_then(|l| *l));
        if let Some(live) = live {
            if let Some(r) = live.signal_ratio {
                msg.push_str(&format!(" | dL/dh input/output {r:.1e}"));
            }
            if let Some(u) = live.stuck_units {
                msg.push_str(&format!(", dead/saturated units {:.0}%", u * 100.0));
            }
        }
        self.bar.set_message(msg);
    }

    fn on_finish(&mut self, _summary: &mut gradscope_train::Summary) -> Result<(), TrainError> {
        self.bar.finish_and_clear();
        Ok(())
    }
}
