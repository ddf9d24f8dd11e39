//! When the probe looks.

use std::fmt;
use std::str::FromStr;

/// Which optimiser steps are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeSchedule {
    /// Every step for the first 100 steps, then every 10th: dense where things
    /// change fast, cheap afterwards.
    #[default]
    Default,
    /// Every `n`th step (and step 0).
    Every { n: u64 },
    /// Never.
    Off,
}

impl ProbeSchedule {
    /// Whether step `step` (0-based) is probed.
    pub fn probes(&self, step: u64) -> bool {
        match *self {
            ProbeSchedule::Default => step < 100 || step.is_multiple_of(10),
            ProbeSchedule::Every { n } => step.is_multiple_of(n.max(1)),
            ProbeSchedule::Off => false,
        }
    }
}

impl fmt::Display for ProbeSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeSchedule::Default => write!(f, "default"),
            ProbeSchedule::Every { n } => write!(f, "{n}"),
            ProbeSchedule::Off => write!(f, "off"),
        }
    }
}

/// A schedule that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid probe schedule `{0}`; expected `default`, `off`, or a step interval such as `10`")]
pub struct ParseScheduleError(String);

impl FromStr for ProbeSchedule {
    type Err = ParseScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(ProbeSchedule::Default),
            "off" => Ok(ProbeSchedule::Off),
            n => n
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| ProbeSchedule::Every { n })
                .ok_or_else(|| ParseScheduleError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let d = ProbeSchedule::Default;
        assert!(d.probes(0) && d.probes(99) && !d.probes(101) && d.probes(110));
        let e: ProbeSchedule = "7".parse().unwrap();
        assert!(e.probes(0) && e.probes(14) && !e.probes(15));
        assert!(!"off".parse::<ProbeSchedule>().unwrap().probes(0));
        assert!("0".parse::<ProbeSchedule>().is_err());
        assert!(
            "often"
                .parse::<ProbeSchedule>()
                .unwrap_err()
                .to_string()
                .contains("`often`")
        );
    }
}
