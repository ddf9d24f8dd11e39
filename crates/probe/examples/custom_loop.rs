//! The gradient probe in a hand-written Burn training loop: the probe is a
//! `gradscope_train::Observer`, and any loop can call its two hooks.
//!
//! Run: `cargo run --example custom_loop` (prints the verdict for a deep sigmoid MLP).

use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::Device;
use gradscope_data::{MnistLike, Normalization, epoch_batches, epoch_order};
use gradscope_models::{Model, Network, Taps, preset};
use gradscope_probe::ProbeSchedule;
use gradscope_probe::{GradientProbe, ProbeConfig, judge};
use gradscope_train::{BackwardView, Observer, RunInfo, StepInfo, TapGrads};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    let mut model = preset("mlp-sigmoid-8x64")?.with_seed(1).init(&device)?;
    let mut optim = SgdConfig::new().init();

    let data = MnistLike::bundled()?;
    let batcher = gradscope_data::MnistBatcher::fitted(&data.train, Normalization::Standard);
    let order = epoch_order(data.train.len(), 1, 0, true);
    let steps = 30;

    // The probe writes probe.csv, probe_hist.csv and points.json into this directory.
    let dir = std::env::temp_dir().join("gradscope-custom-loop");
    std::fs::create_dir_all(&dir)?;
    let mut probe = GradientProbe::new(ProbeConfig {
        schedule: ProbeSchedule::Every { n: 1 },
        ..Default::default()
    });
    let run = RunInfo {
        dir,
        points: model.probe_points().to_vec(),
        steps_per_epoch: steps,
        total_steps: steps,
        resumed_at: None,
    };
    Observer::<Model>::on_start(&mut probe, &run)?;

    for (step, batch) in epoch_batches(&data.train, &batcher, &order, 64, 0, &device)
        .take(steps as usize)
        .enumerate()
    {
        let info = StepInfo {
            step: step as u64,
            epoch: 0,
            lr: 0.1,
            batch_size: 64,
        };
        // A gradient slot on every probe point: after backward each holds dL/dh.
        let taps = Taps::new(model.probe_points());
        let probed = model.forward_probed(batch.images, Some(&taps));
        let loss = model.head().loss(probed.logits.clone(), batch.targets);
        let raw = loss.backward();
        let tap_grads = TapGrads::take(&taps);
        let grads = GradientsParams::from_grads(raw, &model);
        let view = BackwardView {
            info: &info,
            model: &model,
            loss: &loss,
            grads: &grads,
            taps: Some(&tap_grads),
            traces: Some(&probed.traces),
        };
        probe.after_backward(&view);
        model = optim.step(info.lr, model, grads);
        probe.after_step(&info, &model);
    }

    // The last step's statistics are still being taken on the probe's thread.
    probe.drain();
    let verdicts = judge(model.probe_points(), probe.records(), 10, None);
    println!("verdict after {steps} steps: {}", verdicts.verdict);
    for alert in &verdicts.alerts {
        println!("- {}: {}", alert.rule, alert.evidence);
    }
    Ok(())
}
