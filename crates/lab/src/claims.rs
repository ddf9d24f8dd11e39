//! The evaluation of each claim from the runs it produced.
//!
//! Each claim kind has a documented rule that turns measurements into
//! `confirmed` or `not confirmed`, always with the numbers behind it.

use std::collections::BTreeMap;

use gradscope_report::RunData;

use crate::suite::{ClaimKind, ClaimSpec};
use gradscope_probe::Metric;

/// Whether the measurements support a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Confirmed,
    NotConfirmed,
}

/// A judged claim with its evidence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClaimResult {
    pub id: String,
    pub kind: ClaimKind,
    pub title: String,
    pub outcome: Outcome,
    /// The claim's one number a reader should remember.
    pub key: String,
    pub evidence: Vec<String>,
    pub runs: Vec<String>,
}

impl ClaimResult {
    /// How the lab report heads the claim's section.
    pub fn heading(&self) -> gradscope_report::ClaimHeading {
        gradscope_report::ClaimHeading {
            id: self.id.clone(),
            title: self.title.clone(),
            confirmed: self.outcome == Outcome::Confirmed,
            key: self.key.clone(),
            look_at: self.kind.look_at().to_owned(),
            evidence: self.evidence.clone(),
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Whether a deep residual net escapes the degradation of the plain net of
/// its depth: its training loss `residual` lies at most 10% of the
/// degradation gap (`deep_plain - shallow_plain`) above the shallow plain
/// net's, or below it. Parity within a margin rather than strictly below: a
/// residual net that starts near the identity begins shallower than the
/// shallow net and must grow its branches, so on a short budget it can trail
/// the shallow net by a little while the plain net of its depth does not train.
fn no_degradation(shallow_plain: f64, deep_plain: f64, residual: f64) -> bool {
    let gap = deep_plain - shallow_plain;
    residual < deep_plain && residual - shallow_plain <= 0.1 * gap.max(0.0)
}

/// A run's final training loss: the mean of its logged losses over the last
/// epoch (the last half of a run shorter than two epochs). One logged window
/// is a few hundred examples, too noisy to rank nets whose losses are close.
fn train_loss(r: &RunData) -> Option<f64> {
    let end = r.metrics.last()?.epoch;
    let from = end - (end / 2.0).min(1.0);
    let tail: Vec<f64> = r
        .metrics
        .iter()
        .filter(|m| m.epoch > from || m.epoch == end)
        .filter_map(|m| m.train_loss)
        .collect();
    (!tail.is_empty()).then(|| mean(&tail))
}

/// Final test accuracy of a run (last evaluated row).
fn final_acc(r: &RunData) -> Option<f64> {
    r.metrics.iter().rev().find_map(|m| m.test_acc)
}

fn accs(runs: &[&RunData]) -> f64 {
    mean(&runs.iter().filter_map(|r| final_acc(r)).collect::<Vec<_>>())
}

fn flagged(runs: &[&RunData], rule: &str) -> usize {
    runs.iter()
        .filter(|r| {
            r.verdicts
                .as_ref()
                .is_some_and(|v| v.alerts.iter().any(|a| a.rule.as_str() == rule))
        })
        .count()
}

/// Mean over the last probe record's main-path hidden layers of `metric`.
fn last_layer_mean(r: &RunData, metric: Metric) -> Option<f64> {
    let rec = r.probe.last()?;
    let idx = gradscope_probe::verdict::profile_points(&r.points);
    let v: Vec<f64> = idx.iter().filter_map(|&i| rec.get(i, metric)).collect();
    (!v.is_empty()).then(|| mean(&v))
}

/// Ratio of the first to the last main-path layer's signal RMS at the first probe.
fn signal_ratio(r: &RunData) -> Option<f64> {
    let rec = r.probe.first()?;
    let idx = gradscope_probe::verdict::profile_points(&r.points);
    Some(rec.get(*idx.first()?, Metric::SignalRms)? / rec.get(*idx.last()?, Metric::SignalRms)?)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Judges one claim from its runs, grouped by role.
///
/// Rules (accuracies are final test accuracies, averaged over seeds):
/// - `deep_vs_shallow`: the deep net is flagged `vanishing` in at least half
///   of its seeds and its accuracy is at least 5 points below the shallow one's.
/// - `cure`: the cured net is never flagged `vanishing`, the sick one is, and
///   the cured accuracy is at least 5 points higher.
/// - `dead_units`: ReLU layers end with more than 10% dead units on average and a
///   larger share of exactly-zero weight gradients than the LeakyReLU net, and
///   LeakyReLU also trains: its final accuracy is at least 10 points above the
///   ReLU net's of the same seed, in every seed (a gain on average only is
///   reported as such, and not confirmed).
/// - `batchnorm`: with BatchNorm the mean accuracy over both inits is at least 10
///   points higher, and BatchNorm makes the small init train: with it, the small
///   init beats the small init without it by 10 points and keeps at least half of
///   the Xavier run's accuracy above chance.
/// - `skip`: training loss (degradation is a training-error effect, and BatchNorm's
///   running statistics are still young in short runs) ends higher for the deep
///   plain net than for the shallow plain one, the deep residual net ends at or
///   below both (it does not degrade), and more than half of the gradient
///   reaching the residual blocks' inputs arrives through the skip path. With an
///   optional role `deep_plain_same_init` (the residual net's initialisation
///   without its skips), that net must degrade too: the skips, not the init, cure.
/// - `init`: the small initialisation ends with the lowest accuracy, and the
///   signal at step 0 (first/last layer) is ordered as He et al. (2015) predict
///   for ReLU: small attenuates it most, Xavier (gain 1/sqrt 2 per layer) more
///   than He (gain 1). How He and Xavier rank in accuracy is evidence, not a
///   test: at this size the gap between them is within one seed's noise.
///
/// With several seeds, the rule must also hold in each seed on its own: a claim
/// that holds over the pooled seeds but not in every one is not confirmed,
/// and its evidence says "on average only".
pub fn evaluate(spec: &ClaimSpec, by_role: &BTreeMap<String, Vec<RunData>>) -> ClaimResult {
    let mut result = evaluate_pooled(spec, by_role);
    let seeds: std::collections::BTreeSet<u64> = by_role.values().flatten().filter_map(RunData::seed).collect();
    if seeds.len() < 2 {
        return result;
    }
    let failing: Vec<u64> = seeds
        .iter()
        .copied()
        .filter(|&seed| {
            let one: BTreeMap<String, Vec<RunData>> = by_role
                .iter()
                .map(|(role, runs)| {
                    (
                        role.clone(),
                        runs.iter().filter(|r| r.seed() == Some(seed)).cloned().collect(),
                    )
                })
                .collect();
            evaluate_pooled(spec, &one).outcome != Outcome::Confirmed
        })
        .collect();
    let n = seeds.len();
    let seed_list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    result.evidence.push(match (result.outcome, failing.is_empty()) {
        (Outcome::Confirmed, true) => format!("holds in each of the {n} seeds on its own"),
        (Outcome::Confirmed, false) => {
            result.outcome = Outcome::NotConfirmed;
            format!(
                "confirmed on average only: holds over the pooled seeds but not in seed(s) {} on its own ({} of {n} hold)",
                seed_list(&failing),
                n - failing.len()
            )
        }
        (Outcome::NotConfirmed, _) => format!("holds in {} of the {n} seeds on its own", n - failing.len()),
    });
    result
}

/// The claim's rule over every given run, seeds pooled.
fn evaluate_pooled(spec: &ClaimSpec, by_role: &BTreeMap<String, Vec<RunData>>) -> ClaimResult {
    let role = |name: &str| -> Vec<&RunData> { by_role.get(name).map(|v| v.iter().collect()).unwrap_or_default() };
    let mut ev = Vec::new();
    let mut key = String::new();
    // Each arm lists its sub-tests: (what must hold, whether it did).
    let checks: Vec<(&str, bool)> = match spec.kind {
        ClaimKind::DeepVsShallow => {
            let (deep, shallow) = (role("deep"), role("shallow"));
            let (a_deep, a_shallow) = (accs(&deep), accs(&shallow));
            let f = flagged(&deep, "vanishing");
            ev.push(format!(
                "deep net flagged vanishing in {f} of {} seed(s); shallow in {}",
                deep.len(),
                flagged(&shallow, "vanishing")
            ));
            if let Some(r) = deep.first().and_then(|r| signal_ratio(r)) {
                ev.push(format!(
                    "deep net: signal at the first layer is {r:.1e} of the last at step 0"
                ));
            }
            if let Some(a) = deep
                .first()
                .and_then(|r| r.verdicts.as_ref())
                .and_then(|v| v.attenuation.as_ref())
            {
                ev.push(format!("deep net: {}", a.describe()));
                key = format!(
                    "signal x{:.2} per layer{}",
                    a.per_layer,
                    a.derivative_bound
                        .map_or(String::new(), |b| format!(" (sigmoid' <= {b})"))
                );
            }
            if key.is_empty() {
                key = format!("accuracy: deep {}, shallow {}", pct(a_deep), pct(a_shallow));
            }
            ev.push(format!(
                "final test accuracy: deep {}, shallow {}",
                pct(a_deep),
                pct(a_shallow)
            ));
            vec![
                (
                    "the deep net is flagged vanishing in at least half of its seeds",
                    2 * f >= deep.len().max(1),
                ),
                (
                    "the deep net ends at least 5 points below the shallow one",
                    a_deep <= a_shallow - 0.05,
                ),
            ]
        }
        ClaimKind::Cure => {
            let (sick, cured) = (role("sick"), role("cured"));
            let (a_sick, a_cured) = (accs(&sick), accs(&cured));
            let (f_sick, f_cured) = (flagged(&sick, "vanishing"), flagged(&cured, "vanishing"));
            ev.push(format!(
                "flagged vanishing: the sigmoid net in {f_sick} of {} seed(s), the ReLU + He net in {f_cured} of {}",
                sick.len(),
                cured.len()
            ));
            ev.push(format!(
                "final test accuracy: sigmoid {}, ReLU + He {}",
                pct(a_sick),
                pct(a_cured)
            ));
            key = format!("accuracy: sigmoid {}, ReLU + He {}", pct(a_sick), pct(a_cured));
            vec![
                ("the sigmoid net is flagged vanishing", f_sick > 0),
                ("the ReLU + He net is never flagged vanishing", f_cured == 0),
                (
                    "the ReLU + He net ends at least 5 points higher",
                    a_cured >= a_sick + 0.05,
                ),
            ]
        }
        ClaimKind::DeadUnits => {
            let (relu, leaky) = (role("relu"), role("leaky"));
            let dead = mean(
                &relu
                    .iter()
                    .filter_map(|r| last_layer_mean(r, Metric::DeadFrac))
                    .collect::<Vec<_>>(),
            );
            let z_relu = mean(
                &relu
                    .iter()
                    .filter_map(|r| last_layer_mean(r, Metric::GradZeroFrac))
                    .collect::<Vec<_>>(),
            );
            let z_leaky = mean(
                &leaky
                    .iter()
                    .filter_map(|r| last_layer_mean(r, Metric::GradZeroFrac))
                    .collect::<Vec<_>>(),
            );
            ev.push(format!(
                "ReLU layers end with {} dead units on average (zero output for every example of a batch)",
                pct(dead)
            ));
            ev.push(format!(
                "exactly-zero weight gradients: ReLU {}, LeakyReLU {}",
                pct(z_relu),
                pct(z_leaky)
            ));
            ev.push(format!(
                "final test accuracy: ReLU {}, LeakyReLU {}",
                pct(accs(&relu)),
                pct(accs(&leaky))
            ));
            // LeakyReLU must train, not only keep units alive: seed by seed.
            let gains: Vec<f64> = relu
                .iter()
                .filter_map(|r| {
                    let twin = leaky.iter().find(|l| l.seed() == r.seed())?;
                    Some(final_acc(twin)? - final_acc(r)?)
                })
                .collect();
            // Accuracies are counts over the test split: allow for their rounding.
            let clear = |g: f64| g >= 0.1 - 1e-9;
            let every = !gains.is_empty() && gains.iter().all(|g| clear(*g));
            let on_average = clear(mean(&gains));
            ev.push(if every {
                format!(
                    "LeakyReLU trains better in every seed ({} of {}, at least 10 points)",
                    gains.len(),
                    gains.len()
                )
            } else if on_average {
                format!(
                    "LeakyReLU trains better on average only (+{:.1} points; at least 10 points in {} of {} seeds): not confirmed",
                    mean(&gains) * 100.0,
                    gains.iter().filter(|g| clear(**g)).count(),
                    gains.len()
                )
            } else {
                format!(
                    "LeakyReLU keeps its units alive but does not train better (accuracy gain {:+.1} points on average): with the bias this negative, the signal through the leaky slope vanishes too",
                    mean(&gains) * 100.0
                )
            });
            key = format!(
                "{} of ReLU units dead; accuracy ReLU {}, LeakyReLU {}",
                pct(dead),
                pct(accs(&relu)),
                pct(accs(&leaky))
            );
            vec![
                ("more than 10% of the ReLU units are dead", dead > 0.1),
                (
                    "ReLU has more exactly-zero weight gradients than LeakyReLU",
                    z_relu > z_leaky,
                ),
                ("LeakyReLU ends at least 10 points higher in every seed", every),
            ]
        }
        ClaimKind::Batchnorm => {
            let a = |n: &str| accs(&role(n));
            let (px, ps, bx, bs) = (a("plain_xavier"), a("plain_small"), a("bn_xavier"), a("bn_small"));
            ev.push(format!("without BatchNorm: Xavier {}, small init {}", pct(px), pct(ps)));
            ev.push(format!("with BatchNorm: Xavier {}, small init {}", pct(bx), pct(bs)));
            let chance = 0.1;
            let trainable = (bx + bs) / 2.0 >= (px + ps) / 2.0 + 0.1;
            let robust = bs >= ps + 0.1 && (bs - chance) >= 0.5 * (bx - chance);
            ev.push(format!(
                "trainable with BatchNorm: {trainable}; small init still trains with BatchNorm: {robust}"
            ));
            key = format!(
                "accuracy with BatchNorm {} / {}, without {} / {}",
                pct(bx),
                pct(bs),
                pct(px),
                pct(ps)
            );
            vec![
                (
                    "BatchNorm raises the mean accuracy over both inits by 10 points",
                    trainable,
                ),
                ("the small init still trains with BatchNorm", robust),
            ]
        }
        ClaimKind::Skip => {
            let loss = |n: &str| mean(&role(n).iter().filter_map(|r| train_loss(r)).collect::<Vec<_>>());
            let (sp, dp, dr) = (loss("shallow_plain"), loss("deep_plain"), loss("deep_residual"));
            let ratio = |n: &str| mean(&role(n).iter().filter_map(|r| signal_ratio(r)).collect::<Vec<_>>());
            let (rp, rr) = (ratio("deep_plain"), ratio("deep_residual"));
            let share = mean(
                &role("deep_residual")
                    .iter()
                    .flat_map(|r| {
                        r.probe
                            .iter()
                            .flat_map(|rec| rec.layers.iter().filter_map(|l| l.get(&Metric::SkipShare).copied()))
                    })
                    .collect::<Vec<_>>(),
            );
            ev.push(format!(
                "training loss over the last epoch: shallow plain {sp:.3}, deep plain {dp:.3}, deep residual {dr:.3}"
            ));
            ev.push(format!(
                "final test accuracy: shallow plain {}, deep plain {}, deep residual {}",
                pct(accs(&role("shallow_plain"))),
                pct(accs(&role("deep_plain"))),
                pct(accs(&role("deep_residual")))
            ));
            ev.push(format!(
                "first/last signal at step 0: deep plain {rp:.1e}, deep residual {rr:.1e}"
            ));
            ev.push(format!(
                "share of the gradient reaching residual blocks through the skip path: {}",
                pct(share)
            ));
            let control = role("deep_plain_same_init");
            let control_degrades = control.is_empty()
                || {
                    let dc = loss("deep_plain_same_init");
                    ev.push(format!(
                    "control, the residual net's initialisation without skips: training loss over the last epoch {dc:.3}, test accuracy {}",
                    pct(accs(&control))
                ));
                    dc > sp
                };
            key = format!(
                "accuracy: shallow plain {}, deep plain {}, deep residual {}",
                pct(accs(&role("shallow_plain"))),
                pct(accs(&role("deep_plain"))),
                pct(accs(&role("deep_residual")))
            );
            vec![
                (
                    "the deep plain net ends with a higher training loss than the shallow one",
                    dp > sp,
                ),
                (
                    "the deep residual net does not degrade: it closes at least 90% of the gap between the deep and the shallow plain net's training loss",
                    no_degradation(sp, dp, dr),
                ),
                (
                    "more than half of the gradient reaches the blocks through the skips",
                    share > 0.5,
                ),
                ("the residual net's init without skips degrades too", control_degrades),
            ]
        }
        ClaimKind::Init => {
            let (s, x, h) = (accs(&role("small")), accs(&role("xavier")), accs(&role("he")));
            let ratio = |n: &str| mean(&role(n).iter().filter_map(|r| signal_ratio(r)).collect::<Vec<_>>());
            let (rs, rx, rh) = (ratio("small"), ratio("xavier"), ratio("he"));
            ev.push(format!(
                "final test accuracy: small normal {}, Xavier {}, He {}",
                pct(s),
                pct(x),
                pct(h)
            ));
            ev.push(format!(
                "first/last layer signal at step 0: small {rs:.1e}, Xavier {rx:.1e}, He {rh:.1e}"
            ));
            key = format!("accuracy: small {}, Xavier {}, He {}", pct(s), pct(x), pct(h));
            vec![
                ("the small init ends with the lowest accuracy", s < x.min(h)),
                ("the small init attenuates the signal most at step 0", rs < rx.min(rh)),
                ("Xavier attenuates the signal more than He at step 0", rx < rh),
            ]
        }
    };
    let failed: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let ok = failed.is_empty();
    if !ok {
        ev.push(format!(
            "not confirmed because not all sub-tests held: {} failed ({}); a longer run (more epochs) or more seeds would settle whether the effect is there at this size",
            failed.len(),
            failed.join("; ")
        ));
    }
    ClaimResult {
        id: spec.id.clone(),
        kind: spec.kind,
        title: spec.title.clone(),
        outcome: if ok { Outcome::Confirmed } else { Outcome::NotConfirmed },
        key,
        evidence: ev,
        runs: by_role
            .values()
            .flatten()
            .map(|r| r.dir.display().to_string())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use gradscope_train::TrainConfig;

    use super::*;

    /// A finished ReLU-family run of `seed` ending at `acc`, whose hidden layers
    /// end with `dead` dead units and `zero` exactly-zero weight gradients.
    fn run(seed: u64, acc: f64, dead: f64, zero: f64) -> RunData {
        use gradscope_models::{Activation, PointKind, ProbePoint};
        let point = |i: usize| ProbePoint {
            name: format!("hidden.{i}"),
            kind: PointKind::Dense,
            depth: i,
            activation: Some(Activation::Relu),
            params: Vec::new(),
            weight: None,
            shape: vec![8],
            has_norm: false,
            block: None,
            main_path: true,
        };
        let mut rec = gradscope_probe::ProbeRecord::new(100, 2);
        for layer in &mut rec.layers {
            layer.insert(Metric::DeadFrac, dead);
            layer.insert(Metric::GradZeroFrac, zero);
        }
        RunData {
            dir: PathBuf::from(format!("run-{seed}-{acc}")),
            config: Some(TrainConfig {
                seed,
                ..Default::default()
            }),
            metrics: vec![gradscope_train::MetricsRow {
                step: 100,
                epoch: 1.0,
                wall_s: 1.0,
                lr: 0.1,
                train_loss: Some(1.0),
                train_acc: Some(acc),
                test_loss: Some(1.0),
                test_acc: Some(acc),
                samples_per_s: None,
            }],
            summary: None,
            points: vec![point(0), point(1)],
            probe: vec![rec],
            verdicts: None,
            label: String::new(),
        }
    }

    #[test]
    fn dead_units_need_leaky_relu_to_train_in_every_seed() {
        let spec = ClaimSpec {
            id: "dead".into(),
            kind: ClaimKind::DeadUnits,
            title: "t".into(),
            base: toml::Table::new(),
            roles: BTreeMap::new(),
        };
        let judge = |relu: Vec<RunData>, leaky: Vec<RunData>| {
            let by_role = BTreeMap::from([("relu".to_owned(), relu), ("leaky".to_owned(), leaky)]);
            evaluate(&spec, &by_role)
        };
        // Dead ReLUs, and LeakyReLU 60+ points better in both seeds: confirmed.
        let r = judge(
            vec![run(0, 0.11, 0.5, 0.5), run(1, 0.11, 0.5, 0.5)],
            vec![run(0, 0.85, 0.0, 0.0), run(1, 0.75, 0.0, 0.0)],
        );
        assert_eq!(r.outcome, Outcome::Confirmed, "{:?}", r.evidence);
        // Not confirmed, with the evidence saying why.
        let not_confirmed_because = |leaky: Vec<RunData>, why: &str| {
            let r = judge(vec![run(0, 0.11, 0.5, 0.5), run(1, 0.11, 0.5, 0.5)], leaky);
            assert_eq!(r.outcome, Outcome::NotConfirmed);
            assert!(r.evidence.iter().any(|e| e.contains(why)), "{why}: {:?}", r.evidence);
        };
        // Units kept alive, but no better training.
        not_confirmed_because(
            vec![run(0, 0.11, 0.0, 0.0), run(1, 0.12, 0.0, 0.0)],
            "does not train better",
        );
        // Better on average only (one seed +70, the other +5).
        not_confirmed_because(vec![run(0, 0.81, 0.0, 0.0), run(1, 0.16, 0.0, 0.0)], "on average only");
        // The boundary: exactly 10 points in each seed is enough; dead units are still required.
        let r = judge(vec![run(0, 0.25, 0.5, 0.5)], vec![run(0, 0.35, 0.0, 0.0)]);
        assert_eq!(r.outcome, Outcome::Confirmed, "{:?}", r.evidence);
        let r = judge(vec![run(0, 0.25, 0.05, 0.5)], vec![run(0, 0.85, 0.0, 0.0)]);
        assert_eq!(r.outcome, Outcome::NotConfirmed, "no dead units, no claim");
        // A claim not confirmed names the sub-test that failed, and only that one.
        let last = r.evidence.last().unwrap();
        assert!(
            last.contains("1 failed (more than 10% of the ReLU units are dead)") && last.contains("more seeds"),
            "{last}"
        );
    }

    #[test]
    fn a_claim_that_holds_on_average_only_is_not_confirmed() {
        let spec = ClaimSpec {
            id: "dead".into(),
            kind: ClaimKind::DeadUnits,
            title: "t".into(),
            base: toml::Table::new(),
            roles: BTreeMap::new(),
        };
        // Seed 1's ReLU net has no dead units: pooled, 25% are dead (> 10%).
        let by_role = |dead_1: f64| {
            BTreeMap::from([
                (
                    "relu".to_owned(),
                    vec![run(0, 0.11, 0.5, 0.5), run(1, 0.11, dead_1, 0.5)],
                ),
                ("leaky".to_owned(), vec![run(0, 0.85, 0.0, 0.0), run(1, 0.75, 0.0, 0.0)]),
            ])
        };
        let r = evaluate(&spec, &by_role(0.0));
        assert_eq!(r.outcome, Outcome::NotConfirmed, "{:?}", r.evidence);
        let last = r.evidence.last().unwrap();
        assert!(last.contains("on average only") && last.contains("seed(s) 1"), "{last}");
        let r = evaluate(&spec, &by_role(0.5));
        assert_eq!(r.outcome, Outcome::Confirmed, "{:?}", r.evidence);
        assert!(r.evidence.last().unwrap().contains("each of the 2 seeds"));
    }

    /// The final training loss averages the last epoch, not the last window:
    /// one noisy window does not decide a comparison.
    #[test]
    fn final_training_loss_is_the_last_epochs_mean() {
        let mut r = run(0, 0.5, 0.0, 0.0);
        let template = r.metrics[0].clone();
        let row = |epoch: f64, loss: f64| gradscope_train::MetricsRow {
            step: (epoch * 100.0) as u64,
            epoch,
            train_loss: Some(loss),
            ..template.clone()
        };
        r.metrics = vec![
            row(1.0, 9.0),
            row(1.5, 2.0),
            row(2.0, 1.0),
            row(2.5, 1.0),
            row(3.0, 4.0),
        ];
        assert_eq!(train_loss(&r), Some(2.5), "epoch 2 to 3: the row at 2.0 closes epoch 2");
        // Shorter than two epochs: the last half.
        r.metrics = vec![row(0.25, 9.0), row(0.5, 3.0), row(0.75, 1.0), row(1.0, 2.0)];
        assert_eq!(train_loss(&r), Some(1.5));
        r.metrics = vec![row(0.0, 7.0)];
        assert_eq!(train_loss(&r), Some(7.0), "a lone row counts");
    }

    #[test]
    fn degradation_rule_and_its_boundary() {
        // Deep plain stuck at 2.25, shallow at 0.25: the residual may trail by 0.2
        // (binary fractions, so that the boundary is exact).
        assert!(no_degradation(0.25, 2.25, 0.125), "below the shallow net");
        assert!(no_degradation(0.25, 2.25, 0.45), "10% of the gap");
        assert!(!no_degradation(0.25, 2.25, 0.46));
        // No degradation to recover: the residual net must match the shallow one.
        assert!(no_degradation(0.5, 0.4, 0.3));
        assert!(!no_degradation(0.3, 0.3, 0.31));
        assert!(!no_degradation(0.3, 2.3, f64::NAN), "a missing loss never confirms");
    }
}
