//! Known-answer tests of the probe on the bundled data with plain SGD.

use std::path::Path;

use gradscope_probe::Metric;
use gradscope_probe::verdict::{Rule, Verdict};
use gradscope_probe::{GradientProbe, ProbeConfig, ProbeRecord, ProbeSchedule, Reductions, Verdicts, judge};
use gradscope_train::{ModelChoice, Optimizer, TrainConfig};

/// Trains `preset` for `steps` SGD steps, probing every step; returns the verdicts.
fn verdicts(preset: &str, seed: u64, steps: u64, batch_size: usize, dir: &Path) -> (Verdicts, Vec<String>) {
    let config = TrainConfig {
        model: ModelChoice::Preset { preset: preset.into() },
        optimizer: Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        lr: 0.1,
        batch_size,
        max_steps: Some(steps),
        log_every: steps,
        seed,
        ..TrainConfig::default()
    };
    let run = dir.join(format!("{preset}-{seed}"));
    let mut trainer = gradscope_train::start(config, &run).unwrap();
    trainer.observe(Box::new(GradientProbe::new(ProbeConfig {
        schedule: ProbeSchedule::Every { n: 1 },
        reductions: Reductions::Host,
        ..Default::default()
    })));
    trainer.run().unwrap();
    let v: Verdicts = serde_json::from_str(&std::fs::read_to_string(run.join("verdicts.json")).unwrap()).unwrap();
    let rules = v.alerts.iter().map(|a| a.rule.to_string()).collect();
    (v, rules)
}

#[test]
fn deep_sigmoid_mlp_is_flagged_vanishing_on_every_seed() {
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..5 {
        let (v, rules) = verdicts("mlp-sigmoid-10x128", seed, 50, 128, tmp.path());
        assert_eq!(v.verdict, Verdict::Vanishing, "seed {seed}: {rules:?}");
        let a = v.alerts.iter().find(|a| a.rule == Rule::Vanishing).unwrap();
        assert!(a.steps[1] < 50);
        assert!(a.remedies[0].contains("ReLU"), "{:?}", a.remedies);
    }
}

#[test]
fn cured_networks_are_not_flagged_on_any_seed() {
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..5 {
        for (preset, steps, batch) in [
            ("mlp-relu-10x128-he", 50, 128),
            ("mlp-relu-bn-10x128", 50, 128),
            ("resnet20-residual", 12, 32),
        ] {
            let (v, rules) = verdicts(preset, seed, steps, batch, tmp.path());
            assert!(
                !rules.contains(&"vanishing".to_string()) && !rules.contains(&"exploding".to_string()),
                "{preset} seed {seed}: {rules:?} {:?}",
                v.alerts
            );
        }
    }
}

#[test]
fn verdicts_can_be_recomputed_from_probe_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, _) = verdicts("mlp-sigmoid-4x32", 1, 12, 64, tmp.path());
    let run = tmp.path().join("mlp-sigmoid-4x32-1");
    let ins = gradscope_probe::inspect(&run).unwrap();
    let records: &[ProbeRecord] = &ins.records;
    assert_eq!(records.len(), 12);
    assert_eq!(judge(&ins.points, records, 10, None).verdict, v.verdict);
    let table = gradscope_probe::render(&ins);
    assert!(
        table.contains("hidden.1") && table.contains("head") && table.contains("verdict:"),
        "{table}"
    );
}

/// A flat list of every parameter value of a module.
fn all_values<M: burn::module::Module>(m: &M) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.push(p.val().to_data().try_to_vec().unwrap());
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

#[test]
fn probing_does_not_perturb_training() {
    let tmp = tempfile::tempdir().unwrap();
    let mut finals = Vec::new();
    for probe in [false, true] {
        let config = TrainConfig {
            model: ModelChoice::Preset {
                preset: "mlp-sigmoid-bn-4x32".into(),
            },
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            max_steps: Some(10),
            batch_size: 64,
            ..TrainConfig::default()
        };
        let mut t = gradscope_train::start(config, &tmp.path().join(format!("p{probe}"))).unwrap();
        if probe {
            t.observe(Box::new(GradientProbe::new(ProbeConfig {
                schedule: ProbeSchedule::Every { n: 1 },
                ..Default::default()
            })));
        }
        let (_, model) = t.run().unwrap();
        finals.push(all_values(&model));
    }
    assert_eq!(
        finals[0], finals[1],
        "parameters after 10 steps differ with the probe on"
    );
}

#[test]
fn hidden_signal_matches_the_hand_computed_gradient() {
    use burn::tensor::activation::softmax;
    use gradscope_models::Network;
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        model: ModelChoice::Preset {
            preset: "mlp-tanh-1x16".into(),
        },
        max_steps: Some(1),
        batch_size: 8,
        shuffle: false,
        seed: 3,
        ..TrainConfig::default()
    };
    let run = tmp.path().join("analytic");
    let mut t = gradscope_train::start(config.clone(), &run).unwrap();
    t.observe(Box::new(GradientProbe::new(ProbeConfig {
        schedule: ProbeSchedule::Every { n: 1 },
        ..Default::default()
    })));
    t.run().unwrap();
    let ins = gradscope_probe::inspect(&run).unwrap();
    let measured_hidden = ins.records[0].get(0, Metric::SignalL2).unwrap();
    let measured_head = ins.records[0].get(1, Metric::SignalL2).unwrap();

    // By hand: z = h W2 + b2; dL/dz = (softmax(z) - onehot(y)) / B; dL/dh = dL/dz W2^T.
    let device = burn::tensor::Device::flex();
    let model = gradscope_train::model_config(&config).unwrap().init(&device).unwrap();
    let data = gradscope_train::prepare_data(&config).unwrap();
    let order: Vec<usize> = (0..8).collect();
    let batch = gradscope_data::epoch_batches(&data.train, &data.batcher, &order, 8, 0, &device)
        .next()
        .unwrap();
    let probed = model.forward_probed(batch.images, None);
    let gradscope_models::Model::Mlp(mlp) = &model else {
        panic!("an MLP")
    };
    let onehot = batch.targets.one_hot(10).float();
    let dz = (softmax(probed.logits, 1) - onehot) / 8.0;
    let dh = dz.clone().matmul(mlp.head.weight.val().transpose());
    let norm = |t: burn::tensor::Tensor<2>| t.powf_scalar(2.0).sum().into_scalar::<f32>().sqrt() as f64;
    let (want_head, want_hidden) = (norm(dz), norm(dh));
    assert!(
        (measured_head / want_head - 1.0).abs() < 1e-4,
        "{measured_head} vs {want_head}"
    );
    assert!(
        (measured_hidden / want_hidden - 1.0).abs() < 1e-4,
        "{measured_hidden} vs {want_hidden}"
    );
}

/// Trains `preset` for `steps` steps with the probe reducing on `reductions`;
/// returns its records.
fn records(preset: &str, reductions: Reductions, dir: &Path) -> Vec<ProbeRecord> {
    let run = dir.join(format!("{preset}-{reductions:?}"));
    let config = TrainConfig {
        model: ModelChoice::Preset { preset: preset.into() },
        batch_size: 32,
        max_steps: Some(12),
        log_every: 12,
        ..TrainConfig::default()
    };
    let mut trainer = gradscope_train::start(config, &run).unwrap();
    trainer.observe(Box::new(GradientProbe::new(ProbeConfig {
        schedule: ProbeSchedule::Every { n: 1 },
        update_every: 3,
        reductions,
        ..Default::default()
    })));
    trainer.run().unwrap();
    let hist = std::fs::read_to_string(run.join("probe_hist.csv")).unwrap();
    assert!(hist.lines().count() > 1, "{preset}: no histograms");
    gradscope_probe::inspect(&run).unwrap().records
}

#[test]
fn host_and_device_reductions_agree() {
    let tmp = tempfile::tempdir().unwrap();
    // Saturation, dead units (and a dead-unit window), negative fractions,
    // BatchNorm taps, residual skip shares, convolutions.
    for preset in [
        "mlp-sigmoid-4x32",
        "mlp-relu-4x32",
        "mlp-leaky_relu-bn-4x32",
        "mlp-tanh-residual-6x32",
        "resnet8-residual",
    ] {
        let host = records(preset, Reductions::Host, tmp.path());
        let device = records(preset, Reductions::Device, tmp.path());
        assert_eq!(host.len(), 12, "{preset}");
        for (n, r) in host.iter().chain(&device).enumerate() {
            // Update steps (every 3rd probed step here) read the weights; every
            // step has a grad:weight ratio, against the latest weight norm.
            assert_eq!(
                r.get(0, Metric::WeightL2).is_some(),
                n % 12 % 3 == 0,
                "{preset} record {n}"
            );
            assert!(r.get(0, Metric::GradWeightRatio).is_some(), "{preset} record {n}");
        }
        let mut compared = 0;
        for (h, d) in host.iter().zip(&device) {
            assert_eq!(h.step, d.step);
            assert_eq!(h.model.keys().collect::<Vec<_>>(), d.model.keys().collect::<Vec<_>>());
            for (i, (hl, dl)) in h.layers.iter().zip(&d.layers).enumerate() {
                assert_eq!(
                    hl.keys().collect::<Vec<_>>(),
                    dl.keys().collect::<Vec<_>>(),
                    "{preset} step {} layer {i}",
                    h.step
                );
                for (k, hv) in hl {
                    let dv = dl[k];
                    let mut tol = 1e-4 * hv.abs().max(dv.abs()) + 1e-7;
                    if *k == Metric::ActMean {
                        // A mean near 0 of values of size `act_std` (a BatchNorm's
                        // output) carries f32 rounding of that size, not of its own.
                        tol += 1e-5 * hl.get(&Metric::ActStd).copied().unwrap_or(0.0);
                    }
                    assert!(
                        (hv - dv).abs() <= tol,
                        "{preset} step {} layer {i} {k}: host {hv} vs device {dv}",
                        h.step
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 12 * 20, "{preset}: only {compared} values compared");
    }
}
