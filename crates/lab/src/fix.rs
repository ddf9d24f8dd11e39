//! Remedies that prove themselves: from a flagged run's verdict and
//! configuration, the cures worth trying (each an edited copy of the run's
//! configuration, trained from the same seed and data), and the rule that
//! says whether a candidate cured the run.
//!
//! A candidate cures a run when, trained for the same number of steps as the
//! unchanged configuration (the control), it does not diverge, none of the
//! rules that flagged the run fire on it, and it trains: its final test
//! accuracy is at least [`BETTER_BY`] above the control's (or, where the
//! control diverged, [`BETTER_BY`] above chance).

use gradscope_models::{Activation, Init, ModelConfig, Norm};
use gradscope_probe::verdict::{Rule, Verdict};
use std::path::Path;

use gradscope_probe::RunConfig;
use gradscope_report::RunData;
use gradscope_train::{ConfigError, ModelChoice, TrainConfig};

use crate::suite::Job;

/// How far above the control (in test accuracy) a cure must end.
pub const BETTER_BY: f64 = 0.05;

/// One change to a run's configuration (or a combination that only works together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Remedy {
    /// ReLU hidden layers with He initialisation: ReLU alone under a sigmoid's
    /// Xavier init starts with a shrinking signal, so the two go together.
    ReluHe,
    /// BatchNorm after every linear layer or convolution.
    BatchNorm,
    /// Identity skips around every two layers (MLP), or around every block (ResNet).
    Residual,
    /// He initialisation for a ReLU-family net.
    HeInit,
    /// LeakyReLU (slope 0.2): a negative slope passes gradient to units a ReLU would kill.
    LeakyRelu,
    /// Hidden biases started at zero.
    ZeroBias,
    /// The learning rate divided by 10.
    LowerLr,
    /// The learning rate multiplied by 5.
    HigherLr,
    /// The global gradient norm clipped to 1.
    ClipGrad,
}

impl Remedy {
    /// A short name, also the candidate's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Remedy::ReluHe => "relu-he",
            Remedy::BatchNorm => "batchnorm",
            Remedy::Residual => "residual",
            Remedy::HeInit => "he-init",
            Remedy::LeakyRelu => "leaky-relu",
            Remedy::ZeroBias => "zero-bias",
            Remedy::LowerLr => "lower-lr",
            Remedy::HigherLr => "higher-lr",
            Remedy::ClipGrad => "clip-grad",
        }
    }

    /// What the remedy changes, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Remedy::ReluHe => "ReLU hidden layers + He initialisation",
            Remedy::BatchNorm => "BatchNorm",
            Remedy::Residual => "residual (skip) connections",
            Remedy::HeInit => "He initialisation",
            Remedy::LeakyRelu => "LeakyReLU (slope 0.2)",
            Remedy::ZeroBias => "zero initial biases",
            Remedy::LowerLr => "learning rate / 10",
            Remedy::HigherLr => "learning rate x 5",
            Remedy::ClipGrad => "gradient-norm clipping at 1",
        }
    }

    /// The rules a remedy answers.
    fn answers(self) -> &'static [Rule] {
        use Rule::*;
        match self {
            Remedy::ReluHe => &[Vanishing, Saturation],
            Remedy::BatchNorm => &[Vanishing, Saturation, Exploding, ForwardExplosion],
            Remedy::Residual => &[Vanishing],
            Remedy::HeInit => &[Vanishing, DeadRelu, InitialLoss],
            Remedy::LeakyRelu => &[DeadRelu],
            Remedy::ZeroBias => &[DeadRelu, Saturation],
            Remedy::LowerLr => &[Diverged, Exploding, DeadRelu, ForwardExplosion],
            Remedy::HigherLr => &[Vanishing],
            Remedy::ClipGrad => &[Diverged, Exploding],
        }
    }

    const ALL: [Remedy; 9] = [
        Remedy::ReluHe,
        Remedy::BatchNorm,
        Remedy::Residual,
        Remedy::HeInit,
        Remedy::LeakyRelu,
        Remedy::ZeroBias,
        Remedy::LowerLr,
        Remedy::HigherLr,
        Remedy::ClipGrad,
    ];

    /// The edited configuration, or why this remedy does not apply to it.
    fn apply(self, config: &TrainConfig, model: &ModelConfig) -> Result<TrainConfig, String> {
        let mut c = config.clone();
        let mut m = model.clone();
        let relu_family = |a: &Activation| matches!(a, Activation::Relu | Activation::LeakyRelu { .. });
        let is_he = |i: &Init| matches!(i, Init::HeNormal { .. } | Init::HeUniform { .. });
        match (self, &mut m) {
            (Remedy::ReluHe, ModelConfig::Mlp(x)) if x.activation.regime() == gradscope_models::Regime::Saturating => {
                (x.activation, x.init) = (Activation::Relu, Init::HeNormal { gain: None });
            }
            (Remedy::ReluHe, ModelConfig::Resnet(x))
                if x.activation.regime() == gradscope_models::Regime::Saturating =>
            {
                (x.activation, x.init) = (Activation::Relu, Init::HeNormal { gain: None });
            }
            (Remedy::ReluHe, _) => return Err("the hidden layers do not saturate (not sigmoid or tanh)".into()),
            (Remedy::BatchNorm, ModelConfig::Mlp(x)) if x.norm == Norm::None => x.norm = Norm::Batchnorm,
            (Remedy::BatchNorm, ModelConfig::Resnet(x)) if !x.batchnorm => x.batchnorm = true,
            (Remedy::BatchNorm, _) => return Err("the net already has BatchNorm".into()),
            (Remedy::Residual, ModelConfig::Mlp(x)) if x.residual_every.is_none() && x.depth >= 4 => {
                x.residual_every = Some(2)
            }
            (Remedy::Residual, ModelConfig::Resnet(x)) if !x.skip => x.skip = true,
            (Remedy::Residual, _) => return Err("the net already has skips, or is too shallow for them".into()),
            (Remedy::HeInit, ModelConfig::Mlp(x)) if relu_family(&x.activation) && !is_he(&x.init) => {
                x.init = Init::HeNormal { gain: None }
            }
            (Remedy::HeInit, ModelConfig::Resnet(x)) if relu_family(&x.activation) && !is_he(&x.init) => {
                x.init = Init::HeNormal { gain: None }
            }
            (Remedy::HeInit, _) => return Err("not a ReLU-family net, or He initialisation already".into()),
            (Remedy::LeakyRelu, ModelConfig::Mlp(x)) if x.activation == Activation::Relu => {
                x.activation = Activation::LeakyRelu { slope: 0.2 }
            }
            (Remedy::LeakyRelu, ModelConfig::Resnet(x)) if x.activation == Activation::Relu => {
                x.activation = Activation::LeakyRelu { slope: 0.2 }
            }
            (Remedy::LeakyRelu, _) => return Err("the hidden layers are not ReLU".into()),
            (Remedy::ZeroBias, ModelConfig::Mlp(x)) if x.bias != 0.0 => x.bias = 0.0,
            (Remedy::ZeroBias, _) => return Err("the biases already start at zero".into()),
            (Remedy::LowerLr, _) => c.lr /= 10.0,
            (Remedy::HigherLr, _) => c.lr *= 5.0,
            (Remedy::ClipGrad, _) if c.clip_grad_norm.is_none() => c.clip_grad_norm = Some(1.0),
            (Remedy::ClipGrad, _) => return Err("the gradient norm is already clipped".into()),
        }
        c.model = ModelChoice::Config(m);
        Ok(c)
    }
}

/// A candidate cure: the run's configuration with one remedy applied.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub remedy: Remedy,
    pub config: TrainConfig,
}

/// What `gradscope fix` will train.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rules that flagged the run (empty: nothing to fix).
    pub flagged: Vec<Rule>,
    /// The run's configuration for the candidates' budget: the control.
    pub control: TrainConfig,
    pub candidates: Vec<Candidate>,
    /// Remedies the flags call for that this configuration rules out, with why.
    pub not_applicable: Vec<(Remedy, String)>,
}

/// The candidates for a run flagged by `rules` (a diverged run: include
/// [`Rule::Diverged`]), each trained for `steps` optimiser steps.
pub fn plan(config: &TrainConfig, rules: &[Rule], steps: u64) -> Result<Plan, String> {
    let mut flagged: Vec<Rule> = Vec::new();
    for r in rules {
        if !flagged.contains(r) {
            flagged.push(*r);
        }
    }
    let model = config.model.resolve().map_err(|e| e.to_string())?;
    let mut control = config.clone();
    control.max_steps = Some(steps);
    let (mut candidates, mut not_applicable) = (Vec::new(), Vec::new());
    for remedy in Remedy::ALL {
        if !remedy.answers().iter().any(|r| flagged.contains(r)) {
            continue;
        }
        match remedy.apply(&control, &model) {
            Ok(config) => candidates.push(Candidate { remedy, config }),
            Err(why) => not_applicable.push((remedy, why)),
        }
    }
    Ok(Plan {
        flagged,
        control,
        candidates,
        not_applicable,
    })
}

impl Plan {
    /// The runs to train under `out`: the control (`unchanged`), then one per candidate.
    pub fn jobs(&self, out: &Path) -> Result<Vec<Job>, ConfigError> {
        let job = |role: &str, config: &TrainConfig| -> Result<Job, ConfigError> {
            Ok(Job {
                claim: "fix".into(),
                role: role.into(),
                seed: config.seed,
                config: RunConfig::split(config.clone())?,
                dir: out.join(role),
            })
        };
        std::iter::once(job("unchanged", &self.control))
            .chain(self.candidates.iter().map(|c| job(c.remedy.name(), &c.config)))
            .collect()
    }
}

/// Steps per candidate within `budget_s` seconds: the run's planned steps
/// (its `start` event, else those it took), capped so that `runs` runs fit the
/// budget at the run's own measured speed.
pub fn steps_within(run: &RunData, budget_s: f64, runs: usize) -> u64 {
    let planned = gradscope_train::run_dir::read_start(&run.dir)
        .map(|s| s.total_steps)
        .or(run.summary.as_ref().map(|s| s.steps))
        .unwrap_or(run.metrics.last().map_or(0, |m| m.step))
        .max(1);
    let per_step = run
        .summary
        .as_ref()
        .filter(|s| s.steps > 0 && s.wall_s > 0.0)
        .map(|s| s.wall_s / s.steps as f64);
    match per_step {
        Some(t) => planned.min(((budget_s / (runs.max(1) as f64 * t)) as u64).max(1)),
        None => planned,
    }
}

/// A trained candidate, judged against the control.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Judged {
    pub remedy: Option<Remedy>,
    pub description: String,
    pub dir: String,
    pub verdict: Option<Verdict>,
    /// The rules that flagged the original run and still fire.
    pub still_flagged: Vec<Rule>,
    pub final_test_acc: Option<f64>,
    pub cured: bool,
    /// Why it is or is not a cure, in words.
    pub because: String,
}

/// The rules that fired on a run (with `diverged` for a run that diverged).
pub fn flags(run: &RunData) -> Vec<Rule> {
    let Some(v) = &run.verdicts else { return Vec::new() };
    let mut rules: Vec<Rule> = v.alerts.iter().map(|a| a.rule).collect();
    if v.verdict == Verdict::Diverged && !rules.contains(&Rule::Diverged) {
        rules.push(Rule::Diverged);
    }
    rules
}

fn diverged(run: &RunData) -> bool {
    run.summary.as_ref().is_some_and(|s| s.diverged.is_some())
        || run.verdicts.as_ref().is_some_and(|v| v.verdict == Verdict::Diverged)
}

fn acc(run: &RunData) -> Option<f64> {
    run.summary
        .as_ref()
        .and_then(|s| s.final_test_acc)
        .or_else(|| run.metrics.iter().rev().find_map(|m| m.test_acc))
}

/// Judges one candidate (`remedy` None: the control itself) by the rule in
/// the module docs.
pub fn judge(flagged: &[Rule], control: &RunData, remedy: Option<Remedy>, run: &RunData) -> Judged {
    let fired = flags(run);
    let still: Vec<Rule> = flagged.iter().copied().filter(|r| fired.contains(r)).collect();
    let classes = run
        .config
        .as_ref()
        .and_then(|c| c.classes.as_ref())
        .map_or(10, Vec::len)
        .max(2);
    let a = acc(run);
    let bar = if diverged(control) {
        1.0 / classes as f64 + BETTER_BY
    } else {
        acc(control).unwrap_or(0.0) + BETTER_BY
    };
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1}%", v * 100.0));
    let (cured, because) = if remedy.is_none() {
        (
            false,
            "the unchanged configuration, trained for the same steps".to_owned(),
        )
    } else if diverged(run) {
        (false, "diverged".to_owned())
    } else if !still.is_empty() {
        let names: Vec<&str> = still.iter().map(|r| r.as_str()).collect();
        (false, format!("still flagged: {}", names.join(", ")))
    } else if a.is_none_or(|a| a < bar) {
        (
            false,
            format!(
                "no longer flagged, but trains no better: test accuracy {} (a cure needs {})",
                pct(a),
                pct(Some(bar))
            ),
        )
    } else {
        (
            true,
            format!(
                "no longer flagged, and trains: test accuracy {} (needed {})",
                pct(a),
                pct(Some(bar))
            ),
        )
    };
    Judged {
        remedy,
        description: remedy.map_or("unchanged (control)", Remedy::describe).to_owned(),
        dir: run.dir.display().to_string(),
        verdict: run.verdicts.as_ref().map(|v| v.verdict),
        still_flagged: still,
        final_test_acc: a,
        cured,
        because,
    }
}

/// Cures first, then by final test accuracy; the control last among equals.
pub fn rank(judged: &mut [Judged]) {
    judged.sort_by(|a, b| {
        b.cured
            .cmp(&a.cured)
            .then(a.still_flagged.len().cmp(&b.still_flagged.len()))
            .then(
                b.final_test_acc
                    .unwrap_or(-1.0)
                    .total_cmp(&a.final_test_acc.unwrap_or(-1.0)),
            )
            .then(a.remedy.is_none().cmp(&b.remedy.is_none()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model: &str) -> TrainConfig {
        TrainConfig {
            model: ModelChoice::Preset { preset: model.into() },
            ..Default::default()
        }
    }

    fn remedies(p: &Plan) -> Vec<Remedy> {
        p.candidates.iter().map(|c| c.remedy).collect()
    }

    #[test]
    fn a_vanishing_sigmoid_net_gets_relu_he_batchnorm_skips_and_a_higher_rate() {
        let p = plan(&config("mlp-sigmoid-10x128"), &[Rule::Vanishing], 50).unwrap();
        assert_eq!(
            remedies(&p),
            vec![Remedy::ReluHe, Remedy::BatchNorm, Remedy::Residual, Remedy::HigherLr]
        );
        assert_eq!(p.control.max_steps, Some(50));
        let relu = &p.candidates[0].config;
        let ModelChoice::Config(ModelConfig::Mlp(m)) = &relu.model else {
            panic!()
        };
        assert_eq!((m.activation, m.depth), (Activation::Relu, 10));
        assert!(matches!(m.init, Init::HeNormal { gain: None }));
        assert_eq!(relu.max_steps, Some(50));
        // He init is called for, but does not apply to a sigmoid net: said so.
        assert!(p.not_applicable.iter().any(|(r, _)| *r == Remedy::HeInit));
    }

    #[test]
    fn dead_relus_get_leaky_relu_and_a_lower_rate_and_no_saturation_cures() {
        let p = plan(&config("mlp-relu-10x128-he"), &[Rule::DeadRelu], 50).unwrap();
        assert_eq!(remedies(&p), vec![Remedy::LeakyRelu, Remedy::LowerLr]);
        let lower = &p.candidates[1].config;
        assert!((lower.lr - p.control.lr / 10.0).abs() < 1e-15);
    }

    #[test]
    fn a_diverged_run_gets_a_lower_rate_and_clipping() {
        let p = plan(&config("mlp-relu-10x128-he"), &[Rule::Diverged, Rule::Diverged], 50).unwrap();
        assert_eq!(p.flagged, vec![Rule::Diverged]);
        assert_eq!(remedies(&p), vec![Remedy::LowerLr, Remedy::ClipGrad]);
        assert_eq!(p.candidates[1].config.clip_grad_norm, Some(1.0));
    }

    #[test]
    fn a_healthy_run_gets_nothing() {
        let p = plan(&config("mlp-relu-10x128-he"), &[], 50).unwrap();
        assert!(p.candidates.is_empty() && p.not_applicable.is_empty());
    }

    fn run(acc: f64, rules: &[Rule], diverged: bool) -> RunData {
        let verdicts = gradscope_probe::Verdicts {
            verdict: if diverged { Verdict::Diverged } else { Verdict::Healthy },
            alerts: rules
                .iter()
                .map(|&rule| gradscope_probe::Alert {
                    rule,
                    layers: vec![],
                    steps: [0, 0],
                    measured: 0.0,
                    threshold: 0.0,
                    evidence: String::new(),
                    remedies: vec![],
                })
                .collect(),
            ..serde_json::from_value(serde_json::json!({
                "verdict": "healthy", "alerts": [], "notes": [], "audit": [], "uniform_loss": 2.3
            }))
            .unwrap()
        };
        RunData {
            dir: "r".into(),
            config: Some(TrainConfig::default()),
            metrics: vec![gradscope_train::MetricsRow {
                step: 10,
                epoch: 1.0,
                wall_s: 1.0,
                lr: 0.1,
                train_loss: Some(1.0),
                train_acc: None,
                test_loss: Some(1.0),
                test_acc: Some(acc),
                samples_per_s: None,
            }],
            summary: None,
            points: vec![],
            probe: vec![],
            verdicts: Some(verdicts),
            label: String::new(),
        }
    }

    #[test]
    fn a_cure_must_clear_the_flags_and_train_better_than_the_control() {
        let flagged = [Rule::Vanishing];
        let control = run(0.11, &[Rule::Vanishing], false);
        let j = |r: &RunData| judge(&flagged, &control, Some(Remedy::ReluHe), r);
        assert!(j(&run(0.80, &[], false)).cured);
        assert!(j(&run(0.16, &[], false)).cured, "exactly 5 points better");
        assert!(!j(&run(0.15, &[], false)).cured, "unflagged but no better");
        let still = j(&run(0.80, &[Rule::Vanishing], false));
        assert!(!still.cured && still.because.contains("vanishing"), "{}", still.because);
        assert!(!j(&run(0.80, &[], true)).cured, "diverged");
        // A flag the original did not have does not count against the cure.
        assert!(j(&run(0.80, &[Rule::Saturation], false)).cured);
        assert!(
            !judge(&flagged, &control, None, &control).cured,
            "the control never cures"
        );
        // Against a diverged control the bar is chance + 5 points.
        let diverged = run(0.0, &[], true);
        assert!(
            judge(
                &[Rule::Diverged],
                &diverged,
                Some(Remedy::LowerLr),
                &run(0.2, &[], false)
            )
            .cured
        );
        assert!(
            !judge(
                &[Rule::Diverged],
                &diverged,
                Some(Remedy::LowerLr),
                &run(0.12, &[], false)
            )
            .cured
        );
    }

    #[test]
    fn ranking_puts_cures_first_then_accuracy() {
        let control = run(0.11, &[Rule::Vanishing], false);
        let mut j = vec![
            judge(&[Rule::Vanishing], &control, None, &control),
            judge(
                &[Rule::Vanishing],
                &control,
                Some(Remedy::HigherLr),
                &run(0.9, &[Rule::Vanishing], false),
            ),
            judge(
                &[Rule::Vanishing],
                &control,
                Some(Remedy::BatchNorm),
                &run(0.7, &[], false),
            ),
            judge(
                &[Rule::Vanishing],
                &control,
                Some(Remedy::ReluHe),
                &run(0.8, &[], false),
            ),
        ];
        rank(&mut j);
        let order: Vec<Option<Remedy>> = j.iter().map(|j| j.remedy).collect();
        assert_eq!(
            order,
            vec![
                Some(Remedy::ReluHe),
                Some(Remedy::BatchNorm),
                Some(Remedy::HigherLr),
                None
            ]
        );
    }
}
