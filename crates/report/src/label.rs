//! Naming runs by what differs between them, and grouping runs that differ
//! only in their seed.

use std::collections::BTreeMap;

use gradscope_models::{ModelConfig, Norm};

use crate::load::RunData;

/// Describes a run as `key -> value` facts a reader cares about.
fn facts(run: &RunData) -> BTreeMap<&'static str, String> {
    let mut f = BTreeMap::new();
    let Some(c) = &run.config else {
        f.insert("arch", "own model".into());
        return f;
    };
    if let Ok(model) = c.model.resolve() {
        match model {
            ModelConfig::Mlp(m) => {
                f.insert("arch", "mlp".into());
                f.insert("activation", m.activation.to_string());
                f.insert("depth", format!("{} layers", m.depth));
                f.insert(
                    "norm",
                    if m.norm == Norm::Batchnorm {
                        "BN".into()
                    } else {
                        "no BN".into()
                    },
                );
                f.insert("init", m.init.to_string());
                f.insert(
                    "skip",
                    if m.residual_every.is_some() {
                        "residual".into()
                    } else {
                        "plain".into()
                    },
                );
            }
            ModelConfig::Resnet(r) => {
                f.insert("arch", "resnet".into());
                f.insert("activation", r.activation.to_string());
                f.insert("depth", format!("{} layers", r.layer_count()));
                f.insert("norm", if r.batchnorm { "BN".into() } else { "no BN".into() });
                f.insert("init", r.init.to_string());
                f.insert("skip", if r.skip { "residual".into() } else { "plain".into() });
            }
        }
    }
    f.insert("lr", format!("lr {}", c.lr));
    f.insert(
        "optimizer",
        format!("{:?}", c.optimizer)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_lowercase(),
    );
    f.insert("batch", format!("batch {}", c.batch_size));
    f.insert("dataset", c.dataset.clone());
    f.insert("backend", c.backend.to_string());
    f
}

/// Sets each run's label to the facts that differ across `runs` (seed aside),
/// e.g. "sigmoid, no BN"; runs identical but for the seed share a label.
pub fn assign_labels(runs: &mut [RunData]) {
    let all: Vec<_> = runs.iter().map(facts).collect();
    let keys: std::collections::BTreeSet<&'static str> = all.iter().flat_map(|f| f.keys().copied()).collect();
    let differing: Vec<&'static str> = keys
        .into_iter()
        .filter(|k| all.iter().any(|f| f.get(k) != all[0].get(k)))
        .collect();
    for (run, f) in runs.iter_mut().zip(&all) {
        run.label = if differing.is_empty() {
            run.model_label()
        } else {
            differing
                .iter()
                .filter_map(|k| f.get(k).cloned())
                .collect::<Vec<_>>()
                .join(", ")
        };
    }
    // Runs that share a label and a seed are not seeds of one configuration
    // (e.g. the same run at two lengths): the directory tells them apart.
    let clash: Vec<bool> = (0..runs.len())
        .map(|i| (0..runs.len()).any(|j| j != i && runs[j].label == runs[i].label && runs[j].seed() == runs[i].seed()))
        .collect();
    for (run, clash) in runs.iter_mut().zip(clash) {
        if clash {
            let name = run
                .dir
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            run.label = format!("{} [{name}]", run.label);
        }
    }
}

/// Indices of runs grouped by label (runs that differ only in seed), in first-seen order.
pub fn groups(runs: &[RunData]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        match out.iter_mut().find(|(l, _)| *l == r.label) {
            Some((_, v)) => v.push(i),
            None => out.push((r.label.clone(), vec![i])),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(crate) fn run(dir: &str, seed: u64, lr: f64) -> RunData {
        RunData {
            dir: PathBuf::from(dir),
            config: Some(gradscope_train::TrainConfig {
                seed,
                lr,
                ..Default::default()
            }),
            metrics: Vec::new(),
            summary: None,
            points: Vec::new(),
            probe: Vec::new(),
            verdicts: None,
            label: String::new(),
        }
    }

    /// Seeds of one configuration share a label (and a band); two runs of the
    /// same configuration and seed do not pass for seeds.
    #[test]
    fn same_seed_runs_are_told_apart_by_directory() {
        let mut runs = vec![run("a/s0", 0, 0.1), run("a/s1", 1, 0.1), run("b", 0, 0.5)];
        assign_labels(&mut runs);
        assert_eq!(runs[0].label, runs[1].label);
        assert_eq!(groups(&runs).len(), 2);
        let mut runs = vec![run("x/original", 0, 0.1), run("x/control", 0, 0.1)];
        assign_labels(&mut runs);
        assert_ne!(runs[0].label, runs[1].label);
        assert!(runs[1].label.ends_with("[control]"), "{}", runs[1].label);
        assert_eq!(groups(&runs).len(), 2);
    }
}
