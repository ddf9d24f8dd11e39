//! Tests that cut across the zoo: parameter counts, probe-point paths, taps,
//! determinism, BatchNorm modes, and a forward pass of every preset.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::*;

trait Count {
    fn num_params_trainable(&self) -> usize;
}

impl<M: Module> Count for M {
    fn num_params_trainable(&self) -> usize {
        trainable_params(self)
    }
}

fn cpu() -> Device {
    Device::flex()
}

fn images(batch: usize, device: &Device) -> Tensor<4> {
    let n = batch * 784;
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.3).collect();
    Tensor::from_data(TensorData::new(v, [batch, 1, 28, 28]), device)
}

fn mlp_params(input: usize, widths: &[usize], outputs: usize, bn: bool) -> usize {
    let mut n = 0;
    let mut d = input;
    for &w in widths {
        n += d * w + w + if bn { 2 * w } else { 0 };
        d = w;
    }
    n + d * outputs + outputs
}

/// CIFAR ResNet with BatchNorm, projection shortcuts: closed form.
fn resnet_params(channels: &[usize], blocks: &[usize], skip: bool) -> usize {
    let conv = |i: usize, o: usize, k: usize| i * o * k * k + 2 * o; // weight + BN gamma/beta
    let mut n = conv(1, channels[0], 3);
    let mut c_in = channels[0];
    for (s, (&c, &b)) in channels.iter().zip(blocks).enumerate() {
        for i in 0..b {
            n += conv(c_in, c, 3) + conv(c, c, 3);
            if skip && s > 0 && i == 0 {
                n += conv(c_in, c, 1);
            }
            c_in = c;
        }
    }
    n + c_in * 10 + 10
}

#[test]
fn parameter_counts_match_closed_forms() {
    let d = cpu();
    let m = preset("mlp-sigmoid-10x128").unwrap().init(&d).unwrap();
    assert_eq!(m.num_params_trainable(), mlp_params(784, &[128; 10], 10, false));
    assert_eq!(m.num_params_trainable(), 250_378);
    let m = preset("mlp-relu-bn-10x128").unwrap().init(&d).unwrap();
    assert_eq!(m.num_params_trainable(), mlp_params(784, &[128; 10], 10, true));
    let m = MlpConfig::new()
        .with_depth(3)
        .with_width(Width::PerLayer(vec![64, 32, 16]))
        .with_head(Head::Binary)
        .init(&d)
        .unwrap();
    assert_eq!(m.num_params_trainable(), mlp_params(784, &[64, 32, 16], 1, false));
    for (name, n) in [("resnet8", 1), ("resnet20", 3)] {
        for skip in [false, true] {
            let kind = if skip { "residual" } else { "plain" };
            let m = preset(&format!("{name}-{kind}")).unwrap().init(&d).unwrap();
            assert_eq!(
                m.num_params_trainable(),
                resnet_params(&[16, 32, 64], &[n; 3], skip),
                "{name}-{kind}"
            );
        }
    }
    // ResNet-20 is the paper's 0.27M-parameter network.
    let r20 = preset("resnet20-residual")
        .unwrap()
        .init(&d)
        .unwrap()
        .num_params_trainable();
    assert!((265_000..280_000).contains(&r20), "{r20}");
}

#[test]
fn probe_point_params_are_the_modules_paths() {
    let d = cpu();
    for name in [
        "mlp-relu-bn-10x128",
        "mlp-residual-20x128",
        "resnet8-residual",
        "resnet8-plain",
    ] {
        let m = preset(name).unwrap().init(&d).unwrap();
        let paths: Vec<String> = named_params(&m).into_iter().map(|p| p.path).collect();
        let claimed: Vec<&String> = m.probe_points().iter().flat_map(|p| &p.params).collect();
        for c in &claimed {
            assert!(
                paths.contains(c),
                "{name}: probe point claims `{c}`, module has {paths:?}"
            );
        }
        // Every parameter belongs to exactly one probe point.
        for p in &paths {
            assert_eq!(claimed.iter().filter(|c| **c == p).count(), 1, "{name}: `{p}`");
        }
    }
}

#[test]
fn probe_point_names_and_depths() {
    let d = cpu();
    let m = preset("resnet8-residual").unwrap().init(&d).unwrap();
    let names: Vec<&str> = m.probe_points().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stem",
            "stage1.block1.conv1",
            "stage1.block1.conv2",
            "stage1.block1",
            "stage2.block1.conv1",
            "stage2.block1.conv2",
            "stage2.block1",
            "stage3.block1.conv1",
            "stage3.block1.conv2",
            "stage3.block1",
            "head"
        ]
    );
    let b = m.probe_points()[3].block.clone().unwrap();
    assert_eq!((b.input, b.branch, b.identity_skip), (0, 2, true));
    assert!(!m.probe_points()[6].block.clone().unwrap().identity_skip);
    assert!(m.probe_points().iter().enumerate().all(|(i, p)| p.depth == i));
    let mlp = preset("mlp-residual-20x128").unwrap().init(&d).unwrap();
    let block1 = mlp.probe_points().iter().find(|p| p.name == "block.1").unwrap();
    let links = block1.block.clone().unwrap();
    assert_eq!(mlp.probe_points()[links.input].name, "hidden.1");
    assert_eq!(mlp.probe_points()[links.branch].name, "hidden.3");
}

#[test]
fn traces_have_the_declared_shapes() {
    let d = cpu();
    for name in ["mlp-tanh-bn-4x32", "mlp-gelu-4x32", "resnet8-residual", "resnet8-plain"] {
        let m = preset(name).unwrap().init(&d).unwrap();
        let p = m.forward_probed(images(3, &d), None);
        assert_eq!(p.traces.len(), m.probe_points().len(), "{name}");
        for (t, pt) in p.traces.iter().zip(m.probe_points()) {
            assert_eq!(t.post.dims(), [3, pt.features()], "{name} {}", pt.name);
            // The activation's input is kept exactly where its output does not tell f'.
            let needed = pt.activation.is_some_and(|a| !a.reads_from_output());
            assert_eq!(t.pre.is_some(), needed, "{name} {}", pt.name);
            if let Some(pre) = &t.pre {
                assert_eq!(pre.dims(), [3, pt.features()], "{name} {}", pt.name);
            }
        }
    }
}

fn loss_and_grads(model: &Model, x: Tensor<4>, y: Tensor<1, Int>, taps: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let taps = taps.then(|| Taps::new(model.probe_points()));
    let logits = match &taps {
        Some(t) => model.forward_probed(x, Some(t)).logits,
        None => model.forward(x),
    };
    let loss = model.head().loss(logits, y);
    let grads = loss.backward();
    let mut out = Vec::new();
    struct G<'a> {
        grads: &'a burn::tensor::Gradients,
        out: &'a mut Vec<Vec<f32>>,
    }
    impl burn::module::ModuleVisitor for G<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = p.val().grad(self.grads) {
                self.out.push(g.to_data().try_to_vec().unwrap());
            }
        }
    }
    model.visit(&mut G {
        grads: &grads,
        out: &mut out,
    });
    (loss.into_data().try_to_vec().unwrap(), out)
}

#[test]
fn taps_change_neither_loss_nor_gradients_bit_for_bit() {
    let d = cpu().autodiff();
    for name in ["mlp-sigmoid-bn-4x32", "mlp-residual-6x32", "resnet8-residual"] {
        let m = preset(name).unwrap().init(&d).unwrap();
        let x = images(4, &d);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 7, 3, 0], [4]), &d);
        let (l0, g0) = loss_and_grads(&m, x.clone(), y.clone(), false);
        let (l1, g1) = loss_and_grads(&m, x, y, true);
        assert!(!g0.is_empty());
        assert_eq!(l0, l1, "{name}: loss changed");
        assert_eq!(g0, g1, "{name}: parameter gradients changed");
    }
}

#[test]
fn tap_on_the_head_reads_softmax_minus_onehot_over_batch() {
    let d = cpu().autodiff();
    let m = preset("mlp-tanh-2x16").unwrap().init(&d).unwrap();
    let x = images(2, &d);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 9], [2]), &d);
    let taps = Taps::new(m.probe_points());
    let probed = m.forward_probed(x, Some(&taps));
    let loss = m.head().loss(probed.logits.clone(), y);
    let _grads = loss.backward();
    let head = taps.out.last().unwrap().take().unwrap();
    let p: Vec<f32> = burn::tensor::activation::softmax(probed.logits.inner(), 1)
        .to_data()
        .try_to_vec()
        .unwrap();
    let g: Vec<f32> = head.to_data().try_to_vec().unwrap();
    for i in 0..2 {
        for c in 0..10 {
            let onehot = if c == [4, 9][i] { 1.0 } else { 0.0 };
            let want = (p[i * 10 + c] - onehot) / 2.0;
            assert!(
                (g[i * 10 + c] - want).abs() < 1e-6,
                "[{i},{c}] {} vs {want}",
                g[i * 10 + c]
            );
        }
    }
}

#[test]
fn same_seed_same_weights_whatever_happens_after_init() {
    let d = cpu();
    let a = preset("resnet8-residual").unwrap().with_seed(5).init(&d).unwrap();
    // Touch the second model differently before reading its weights.
    let b = preset("resnet8-residual").unwrap().with_seed(5).init(&d).unwrap();
    let _ = b.forward(images(1, &d));
    let _ = Tensor::<2>::random([64, 64], Distribution::Default, &d);
    let c = preset("resnet8-residual").unwrap().with_seed(6).init(&d).unwrap();
    let values = |m: &Model| -> Vec<Vec<f32>> {
        struct V(Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for V {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.push(p.val().to_data().try_to_vec().unwrap());
            }
        }
        let mut v = V(Vec::new());
        m.visit(&mut v);
        v.0
    };
    assert_eq!(values(&a), values(&b));
    assert_ne!(values(&a), values(&c));
    // And on another backend.
    #[allow(deprecated)]
    let nd = Device::ndarray();
    let e = preset("resnet8-residual").unwrap().with_seed(5).init(&nd).unwrap();
    assert_eq!(values(&a), values(&e));
}

#[test]
fn residual_mlp_with_zero_branch_weights_is_the_identity_map() {
    let d = cpu();
    let cfg = MlpConfig::new()
        .with_depth(5)
        .with_width(Width::Uniform(16))
        .with_activation(Activation::Relu)
        .with_residual_every(Some(2));
    let mut m = cfg.init(&d).unwrap();
    for layer in m.hidden.iter_mut().skip(1) {
        let [i, o] = layer.linear.weight.val().dims();
        layer.linear.weight = Param::from_tensor(Tensor::zeros([i, o], &d));
    }
    let probed = m.forward_probed(images(3, &d), None);
    let h1: Vec<f32> = probed.traces[0].post.to_data().try_to_vec().unwrap();
    let last_block = m
        .probe_points()
        .iter()
        .rposition(|p| p.kind == PointKind::Block)
        .unwrap();
    let out: Vec<f32> = probed.traces[last_block].post.to_data().try_to_vec().unwrap();
    assert_eq!(h1, out);
}

#[test]
fn batchnorm_uses_batch_stats_in_training_and_running_stats_in_eval() {
    let d = cpu().autodiff();
    // GELU: the trace keeps the activation's input, here BatchNorm's output.
    let m = preset("mlp-gelu-bn-2x8").unwrap().init(&d).unwrap();
    let x = images(16, &d) * 3.0 + 2.0;
    // Training mode: BN output over the batch has zero mean per unit.
    let probed = m.forward_probed(x.clone(), None);
    let pre: Vec<f32> = probed.traces[0]
        .pre
        .clone()
        .expect("kept for GELU")
        .mean_dim(0)
        .inner()
        .to_data()
        .try_to_vec()
        .unwrap();
    assert!(pre.iter().all(|v| v.abs() < 1e-4), "{pre:?}");
    // Eval mode with fresh running stats (mean 0, var 1): BN is the identity, so
    // the pre-activation equals the linear output and its mean is not zero.
    let eval = m.valid();
    let probed = eval.forward_probed(x.inner(), None);
    let pre: Vec<f32> = probed.traces[0]
        .pre
        .clone()
        .expect("kept for GELU")
        .mean_dim(0)
        .to_data()
        .try_to_vec()
        .unwrap();
    assert!(pre.iter().any(|v| v.abs() > 1e-2), "{pre:?}");
}

#[test]
fn every_preset_runs_batches_of_1_and_128() {
    let d = cpu();
    for (name, _) in PRESETS {
        let m = preset(name).unwrap().init(&d).unwrap();
        for b in [1, 128] {
            let logits = m.forward(images(b, &d));
            assert_eq!(logits.dims(), [b, 10], "{name}");
            let v: Vec<f32> = logits.to_data().try_to_vec().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
        }
    }
}

#[test]
fn invalid_configs_are_explained() {
    let d = cpu();
    let err = MlpConfig::new()
        .with_depth(3)
        .with_width(Width::PerLayer(vec![8, 8]))
        .init(&d)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "width lists 2 sizes but depth is 3; expected one size per hidden layer"
    );
    let err = MlpConfig::new()
        .with_depth(4)
        .with_width(Width::PerLayer(vec![8, 8, 4, 4]))
        .with_residual_every(Some(2))
        .init(&d)
        .unwrap_err();
    assert!(err.to_string().contains("residual skips need equal widths"), "{err}");
    assert!(preset("resnet9-plain").is_err());
    assert!(preset("mlp-relu-0x8").is_err());
}

#[test]
fn mlp_supports_depth_100() {
    let d = cpu();
    let m = MlpConfig::new()
        .with_depth(100)
        .with_width(Width::Uniform(8))
        .init(&d)
        .unwrap();
    assert_eq!(m.probe_points().len(), 101);
    assert_eq!(m.forward(images(2, &d)).dims(), [2, 10]);
}

/// The flex kernels (convolution, BatchNorm, Linear, sigmoid) against Burn's
/// own ops on ndarray, from the same weights and batch: the loss, every
/// parameter gradient and every captured dL/dh (outputs and BatchNorm inputs).
#[test]
fn flex_kernels_give_burns_loss_gradients_and_captures() {
    for name in ["mlp-sigmoid-bn-4x32", "mlp-relu-4x512", "resnet8-residual"] {
        let run = |device: Device| {
            let m = preset(name).unwrap().init(&device).unwrap();
            let x = images(8, &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 7, 3, 0, 9, 2, 5, 5], [8]), &device);
            let taps = Taps::new(m.probe_points());
            let logits = m.forward_probed(x, Some(&taps)).logits;
            let loss = m.head().loss(logits, y);
            let grads = loss.backward();
            let mut values = vec![loss.into_data().try_to_vec::<f32>().unwrap()];
            let slots = taps.out.iter().chain(taps.norm_in.iter().flatten());
            values.extend(slots.map(|s| s.take().unwrap().into_data().try_to_vec::<f32>().unwrap()));
            struct G<'a>(&'a burn::tensor::Gradients, &'a mut Vec<Vec<f32>>);
            impl burn::module::ModuleVisitor for G<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                    if let Some(g) = p.val().grad(self.0) {
                        self.1.push(g.to_data().try_to_vec().unwrap());
                    }
                }
            }
            m.visit(&mut G(&grads, &mut values));
            values
        };
        #[allow(deprecated)] // ndarray: Burn's own ops, the reference here.
        let reference = Device::ndarray().autodiff();
        let (ours, theirs) = (run(Device::flex().autodiff()), run(reference));
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            // The floor is for the biases followed by BatchNorm, whose exact
            // gradient is zero: each build gets its own rounding noise there.
            crate::test_support::assert_close_slices(a, b, 1e-4, 1e-6, &format!("{name}, value set {i}"));
        }
    }
}
