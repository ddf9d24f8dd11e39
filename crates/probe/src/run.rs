//! A probed training run, started or resumed in one place: the run's
//! configuration saved with the probe's keys, the trainer built, and the
//! probe the configuration asks for attached after the caller's own observers.

use std::path::Path;

use gradscope_models::Model;
use gradscope_train::{Extend, Observer, Summary, TrainError, Trainer};

use crate::config::RunConfig;
use crate::observer::{GradientProbe, LiveHandle};

/// A run ready to train, with its probe (none when the schedule is `off`).
pub struct ProbedRun {
    pub trainer: Trainer<Model>,
    pub config: RunConfig,
    probe: Option<GradientProbe>,
}

impl ProbedRun {
    /// A new run in `dir` (which must not exist or be empty).
    pub fn start(config: &RunConfig, dir: &Path) -> Result<Self, TrainError> {
        // The training's settings are checked by `gradscope_train::start`;
        // the probe's before anything is written.
        config.probe.validate()?;
        Self::with(gradscope_train::start(config.joined(), dir)?)
    }

    /// The run in `dir`, continued from its last checkpoint with the
    /// configuration it saved (the probe's keys included).
    pub fn resume(dir: &Path, extend: Extend) -> Result<Self, TrainError> {
        Self::with(gradscope_train::resume(dir, extend)?)
    }

    fn with(trainer: Trainer<Model>) -> Result<Self, TrainError> {
        let config = RunConfig::split(trainer.config.clone())?;
        let probe = GradientProbe::for_run(&config)?;
        Ok(Self { trainer, config, probe })
    }

    /// Whether the run is probed.
    pub fn probed(&self) -> bool {
        self.probe.is_some()
    }

    /// Where the probe leaves its latest summary, for a live display.
    pub fn live(&mut self) -> Option<LiveHandle> {
        self.probe.as_mut().map(GradientProbe::live)
    }

    /// Adds an observer; it sees each step before the probe does.
    pub fn observe(&mut self, observer: Box<dyn Observer<Model>>) {
        self.trainer.observe(observer);
    }

    /// Trains to the end (or a stop), the probe observing.
    pub fn run(self) -> Result<Summary, TrainError> {
        self.run_with(|probe| Box::new(probe))
    }

    /// As [`Self::run`], with the probe inside an observer of the caller's
    /// (a benchmark probing blocks of steps).
    pub fn run_with(
        mut self,
        wrap: impl FnOnce(GradientProbe) -> Box<dyn Observer<Model>>,
    ) -> Result<Summary, TrainError> {
        if let Some(probe) = self.probe.take() {
            self.trainer.observe(wrap(probe));
        }
        Ok(self.trainer.run()?.0)
    }
}
