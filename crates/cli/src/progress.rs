//! A terminal progress bar for training, as a trainer observer.

use std::io::IsTerminal;

use gradscope_train::{Control, MetricsRow, Observer, RunInfo, StepInfo, TrainError};
use indicatif::{ProgressBar, ProgressStyle};

/// One bar per epoch with the latest loss, accuracy and throughput; hidden when
/// stdout is not a terminal or when asked to be quiet.
pub struct Progress {
    bar: ProgressBar,
    steps_per_epoch: u64,
    epochs: u64,
}

impl Progress {
    pub fn new(quiet: bool, epochs: u64) -> Self {
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
            epochs,
        }
    }
}

impl<M> Observer<M> for Progress {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        self.steps_per_epoch = run.steps_per_epoch.max(1);
        self.bar.set_length(self.steps_per_epoch);
        let step = run.resumed_at.unwrap_or(0);
        self.bar.set_position(step % self.steps_per_epoch);
        self.bar
            .set_prefix(format!("{}/{}", step / self.steps_per_epoch + 1, self.epochs));
        Ok(())
    }

    fn after_step(&mut self, info: &StepInfo, _after: &M) -> Control {
        let done = info.step + 1;
        if done.is_multiple_of(self.steps_per_epoch) {
            self.bar.set_position(self.steps_per_epoch);
            self.bar
                .set_prefix(format!("{}/{}", done / self.steps_per_epoch + 1, self.epochs));
            self.bar.reset();
        } else {
            self.bar.set_position(done % self.steps_per_epoch);
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
        self.bar.set_message(msg);
    }

    fn on_finish(&mut self, _summary: &mut gradscope_train::Summary) -> Result<(), TrainError> {
        self.bar.finish_and_clear();
        Ok(())
    }
}
