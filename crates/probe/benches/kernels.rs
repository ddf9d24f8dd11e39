//! Throughput of the probe's one-pass host kernels ([`gradscope_probe::host::kernels`])
//! at the sizes of an `8x256` MLP step, beside a `memcpy` of the same bytes.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench kernels
//! ```
//!
//! (`--profile dev` reuses the dev build of Burn, which is compiled at
//! opt-level 3; the bench profile would rebuild it.) Each row is the median of
//! many repetitions over a buffer that stays in cache between them, as the
//! probe's inputs do: they were written by the backward pass just before.

use std::hint::black_box;
use std::time::Instant;

use gradscope_models::Activation;
use gradscope_probe::host::kernels::{Moments, diff_l2, log_histogram, point_pass, unit_max_abs};

/// Deterministic values spread over many decades, a few exact zeros among them.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            if i % 97 == 0 {
                0.0
            } else {
                (u - 0.5) * 10f32.powf(-6.0 * u)
            }
        })
        .collect()
}

/// Median seconds of `f` over `reps` calls.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn row(name: &str, n: usize, bytes: usize, secs: f64) {
    println!(
        "| {name} | {n} | {:.1} | {:.2} | {:.1} |",
        secs * 1e6,
        secs * 1e9 / n as f64,
        bytes as f64 / secs / 1e9
    );
}

fn main() {
    println!("| kernel | values | µs (median) | ns/value | GB/s read |");
    println!("|---|---:|---:|---:|---:|");
    // A first-layer gradient (784x256), a hidden gradient (256x256), an
    // activation or tap of a batch of 128 (128x256).
    for n in [784 * 256, 256 * 256, 128 * 256] {
        let a = values(n, 1);
        let b = values(n, 2);
        let reps = 2_000_000 / n * 10;
        let mut copy = vec![0f32; n];
        row(
            "memcpy (what a copy out of Burn costs)",
            n,
            4 * n,
            median_secs(reps, || copy.copy_from_slice(black_box(&a))),
        );
        row(
            "Moments::of",
            n,
            4 * n,
            median_secs(reps, || {
                black_box(Moments::of(black_box(&a)));
            }),
        );
        row(
            "diff_l2",
            n,
            8 * n,
            median_secs(reps, || {
                black_box(diff_l2(black_box(&a), black_box(&b)));
            }),
        );
        // A point's pass: its output (sigmoid values in (0, 1), so no
        // subnormal f' as outputs near 0 would give), `dL/dh`, and `f'` from
        // the output or, for the sigmoid, from its input too.
        let y: Vec<f32> = a.iter().map(|v| 1.0 / (1.0 + (-5.0 * v).exp())).collect();
        for (act, pre) in [
            (Activation::Sigmoid, None),
            (Activation::Sigmoid, Some(&a)),
            (Activation::Relu, None),
        ] {
            let read = if pre.is_some() { "input" } else { "output" };
            row(
                &format!("point_pass ({act:?}, f' from the {read})"),
                n,
                4 * n * (2 + pre.is_some() as usize),
                median_secs(reps, || {
                    black_box(point_pass(
                        black_box(&y),
                        pre.map(|p| &p[..]),
                        Some(&b),
                        Some(act),
                        0.0025,
                    ));
                }),
            );
        }
        row(
            "log_histogram",
            n,
            4 * n,
            median_secs(reps, || {
                black_box(log_histogram(black_box(&a)));
            }),
        );
        row(
            "unit_max_abs (256 units)",
            n,
            4 * n,
            median_secs(reps, || {
                black_box(unit_max_abs(black_box(&a), 256));
            }),
        );
    }
}
