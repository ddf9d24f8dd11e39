//! The probe inside burn-train's `Learner`, on a model of the user's own: the
//! probe crate's `burn_learner` example trains its CNN through burn-train, and
//! the run directory its `ModelProbe` writes is read by `gradscope inspect`,
//! `compare` and `tensorboard` as a run of gradscope's own would be.

mod common;
#[allow(dead_code)] // the example's `main`
#[path = "../crates/probe/examples/burn_learner.rs"]
mod example;

use std::collections::{BTreeMap, BTreeSet};

use common::run_ok;
use gradscope_probe::{Metric, ModelProbe, ProbeConfig};

/// The probe points' names in a run's `points.json`.
fn point_names(run: &std::path::Path) -> Vec<String> {
    let points = common::json(&run.join("points.json"));
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `probe.csv` as (step, layer, metric) -> value.
fn probe_rows(text: &str) -> BTreeMap<(u64, String, String), f64> {
    text.lines()
        .skip(1)
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            (
                (c[0].parse().unwrap(), c[1].to_owned(), c[3].to_owned()),
                c[4].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_burn_train_learner_run_is_probed_and_read_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 steps of batch 64.
    let verdicts = example::train(tmp.path(), 1, Some(1280)).expect("the example trains");
    let run = tmp.path().join("gradscope");
    let run_s = run.to_str().unwrap();

    assert_eq!(
        point_names(&run),
        ["conv1", "conv2", "conv3", "fc"],
        "marked convolutions in module order, then the head"
    );
    let points = common::json(&run.join("points.json"));
    assert_eq!(points[3]["kind"], "head");
    assert_eq!(points[0]["shape"], serde_json::json!([8, 28, 28]));

    let rows = probe_rows(&std::fs::read_to_string(run.join("probe.csv")).unwrap());
    let steps: BTreeSet<u64> = rows.keys().map(|k| k.0).collect();
    assert!(
        steps.contains(&0) && steps.contains(&19),
        "first and last steps probed: {steps:?}"
    );
    let at = |step: u64, layer: &str, metric: &str| rows.get(&(step, layer.to_owned(), metric.to_owned())).copied();
    for &step in &steps {
        let loss = at(step, "model", "loss").expect("the loss given in TrainStep::step");
        assert!(loss.is_finite() && loss > 0.0);
        for layer in ["conv1", "conv2", "conv3", "fc"] {
            let g = at(step, layer, "grad_l2").unwrap_or_else(|| panic!("{layer} grad_l2 at {step}"));
            assert!(g.is_finite() && g > 0.0, "{layer} at {step}: {g}");
            assert!(at(step, layer, "bias_grad_l2").is_some());
        }
        for layer in ["conv1", "conv2", "conv3"] {
            let s = at(step, layer, "signal_rms").unwrap_or_else(|| panic!("{layer} dL/dh at {step}"));
            assert!(s.is_finite() && s > 0.0, "{layer} dL/dh at {step}: {s}");
            let dead = at(step, layer, "dead_frac").expect("ReLU marks count dead units");
            assert!((0.0..=1.0).contains(&dead));
        }
        assert_eq!(at(step, "fc", "signal_rms"), None, "fc is not marked");
    }
    assert!(at(0, "conv1", "update_weight_ratio").is_some_and(|r| r > 0.0));
    // The initial loss of 10 classes sits near ln 10.
    assert!((at(0, "model", "loss").unwrap() - 10f64.ln()).abs() < 0.5);

    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), steps.len() + 1, "one row per probed step");
    let saved = common::json(&run.join("verdicts.json"));
    assert_eq!(saved["verdict"], serde_json::to_value(verdicts.verdict).unwrap());

    let table = run_ok(&["inspect", run_s]);
    for layer in ["conv1", "conv2", "conv3", "fc"] {
        assert!(table.contains(layer), "{table}");
    }
    assert!(table.contains("verdict:"), "{table}");
    assert!(
        !table.contains("gradscope fix"),
        "fix retrains gradscope's own configs only: {table}"
    );

    let out = tmp.path().join("report");
    run_ok(&["compare", run_s, "--out", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("layer_grad_l2_0.csv") && html.contains("flow_signal_rms.csv"),
        "gradient charts"
    );
    assert!(
        !html.contains("acc_test_step.csv"),
        "no empty test-accuracy chart for a loop that logs none"
    );
    assert!(html.contains("own loop"), "status of a run gradscope did not drive");

    run_ok(&["tensorboard", run_s]);
    let events = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
        .count();
    assert_eq!(events, 1);

    // The run directory is the user's now: a second probe is refused, nothing changed.
    let before = std::fs::read_to_string(run.join("probe.csv")).unwrap();
    let err = ModelProbe::create(&run, ProbeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("probe.csv")).unwrap(), before);
}

/// An off probe passes everything through: the model trains as without it.
#[test]
fn an_off_probe_only_steps_the_optimiser() {
    use burn::module::Module;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Device, Tensor};
    let device = Device::flex().autodiff();
    let model = burn::nn::LinearConfig::new(3, 2).init(&device);
    let probe = ModelProbe::default();
    let x = Tensor::<2>::ones([4, 3], &device);
    let loss = probe.mark("h", model.forward(x)).sum().reshape([1]);
    probe.loss(&loss);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let before = model.weight.val().into_data();
    let mut optim = SgdConfig::new().init();
    let after = probe.optimize(model, &mut optim, 0.1.into(), grads);
    assert_ne!(after.weight.val().into_data(), before, "stepped");
    assert!(probe.records().is_empty());
    assert!(probe.finish().is_err(), "an off probe has no run to judge");
    let _ = after.devices();
}

/// Marks in a pass without autodiff (validation) are not measured; a probe
/// dropped without `finish` still writes its verdicts; a probe's file errors
/// name the directory.
#[test]
fn validation_marks_are_ignored_and_a_dropped_probe_writes_its_verdicts() {
    use burn::module::Module;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Device, Tensor};
    use gradscope_probe::Activation;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let device = Device::flex().autodiff();
    let layers = vec![
        burn::nn::LinearConfig::new(4, 3).init(&device),
        burn::nn::LinearConfig::new(3, 2).init(&device),
    ];
    let probe = ModelProbe::create(&run, ProbeConfig::default()).unwrap();
    let forward = |layers: &Vec<burn::nn::Linear>, x: Tensor<2>| {
        let h = probe.activate("0", Activation::Sigmoid, layers[0].forward(x));
        layers[1].forward(h)
    };
    let mut layers = layers;
    let mut optim = SgdConfig::new().init();
    for _ in 0..3 {
        // A validation pass first: no autodiff, nothing recorded.
        let valid = layers.valid();
        let _ = probe.mark(
            "validation only",
            forward(&valid, Tensor::ones([2, 4], &valid[0].devices()[0])),
        );
        let loss = forward(&layers, Tensor::ones([2, 4], &device)).sum().reshape([1]);
        probe.loss(&loss);
        let grads = GradientsParams::from_grads(loss.backward(), &layers);
        layers = probe.optimize(layers, &mut optim, 0.1.into(), grads);
    }
    assert_eq!(probe.records().len(), 3);
    let rec = &probe.records()[2];
    assert!(
        rec.get(0, Metric::SignalRms).is_some_and(|s| s > 0.0),
        "dL/dh at the marked layer"
    );
    assert!(rec.get(0, Metric::SaturatedFrac).is_some(), "the activation is known");
    assert!(rec.get(1, Metric::GradL2).is_some() && rec.get(1, Metric::SignalRms).is_none());
    drop(probe);
    assert_eq!(point_names(&run), ["0", "1"], "the validation mark is not a point");
    let verdicts = common::json(&run.join("verdicts.json"));
    assert!(verdicts["verdict"].is_string(), "written on drop");

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "mine").unwrap();
    let err = ModelProbe::create(&file, ProbeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("a-file"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}
