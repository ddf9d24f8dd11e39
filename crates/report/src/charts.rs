//! Charts as SVG strings (plotters' SVG backend: no system fonts needed), each
//! with the CSV of the data it draws.

use gradscope_probe::Metric;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::load::RunData;

/// Okabe-Ito: distinguishable with every common colour-vision deficiency.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(86, 180, 233),
    RGBColor(204, 121, 167),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// A drawn chart and the data behind it.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem (`loss_train`, `flow_signal`, ...).
    pub name: String,
    pub title: String,
    pub svg: String,
    pub csv: String,
}

/// What the x axis measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Epoch,
    Time,
}

impl XAxis {
    fn label(self) -> &'static str {
        match self {
            XAxis::Step => "optimiser step",
            XAxis::Epoch => "epoch",
            XAxis::Time => "wall time (s)",
        }
    }
}

/// A convergence curve from `metrics.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    TrainLoss,
    TestLoss,
    TestAcc,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::TrainLoss => "loss_train",
            Curve::TestLoss => "loss_test",
            Curve::TestAcc => "acc_test",
        }
    }
    fn axis(self) -> &'static str {
        match self {
            Curve::TrainLoss => "training loss (cross-entropy)",
            Curve::TestLoss => "test loss (cross-entropy)",
            Curve::TestAcc => "test accuracy (%)",
        }
    }
}

/// One line (or a seed group's mean) with an optional band.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    band: Option<Vec<(f64, f64, f64)>>,
}

fn moving_average(v: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    if k <= 1 {
        return v.to_vec();
    }
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let w = &v[lo..=i];
            (v[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect()
}

/// Whether any run logged `metric` (a training loop of the user's own logs
/// no test metrics: no empty chart is drawn for them).
pub fn logged(runs: &[RunData], metric: Curve) -> bool {
    runs.iter().any(|r| !series(r, metric, XAxis::Step).is_empty())
}

fn series(run: &RunData, metric: Curve, x: XAxis) -> Vec<(f64, f64)> {
    run.metrics
        .iter()
        .filter_map(|r| {
            let y = match metric {
                Curve::TrainLoss => r.train_loss,
                Curve::TestLoss => r.test_loss,
                Curve::TestAcc => r.test_acc.map(|a| a * 100.0),
            }?;
            let x = match x {
                XAxis::Step => r.step as f64,
                XAxis::Epoch => r.epoch,
                XAxis::Time => r.wall_s,
            };
            (y.is_finite()).then_some((x, y))
        })
        .collect()
}

/// Mean line and band of a seed group: min-max for two runs, mean +- 1 sd for
/// three or more. Runs are aligned by position (same schedule, same steps).
fn group_line(label: &str, members: &[Vec<(f64, f64)>]) -> Line {
    if members.len() == 1 {
        return Line {
            label: label.to_owned(),
            points: members[0].clone(),
            band: None,
        };
    }
    let n = members.iter().map(Vec::len).min().unwrap_or(0);
    let mut points = Vec::with_capacity(n);
    let mut band = Vec::with_capacity(n);
    for i in 0..n {
        let ys: Vec<f64> = members.iter().map(|m| m[i].1).collect();
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        let (lo, hi) = if ys.len() >= 3 {
            let sd = (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (ys.len() - 1) as f64).sqrt();
            (mean - sd, mean + sd)
        } else {
            (
                ys.iter().copied().fold(f64::INFINITY, f64::min),
                ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        let x = members[0][i].0;
        points.push((x, mean));
        band.push((x, lo, hi));
    }
    let what = if members.len() >= 3 {
        "mean +- 1 sd"
    } else {
        "mean, min-max"
    };
    Line {
        label: format!("{label} ({} seeds, {what})", members.len()),
        points,
        band: Some(band),
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing failed: {e:?}")
}

/// Draws lines on one chart; `log_y` for values spanning decades.
fn line_chart(title: &str, x_desc: &str, y_desc: &str, lines: &[Line], log_y: bool) -> Result<String, String> {
    line_chart_in(title, x_desc, y_desc, lines, log_y, None)
}

/// [`line_chart`] with a fixed y range (e.g. 0-100 for percentages, so that a
/// flat line does not look like wild swings).
fn line_chart_in(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
    y_range: Option<(f64, f64)>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        // The legend goes below the plot, never over the lines: one or two
        // columns, as many rows as it needs.
        let columns = if lines.iter().all(|l| l.label.chars().count() <= 52) {
            2
        } else {
            1
        };
        let legend_h = if lines.is_empty() {
            0
        } else {
            12 + 20 * lines.len().div_ceil(columns) as u32
        };
        let root = SVGBackend::with_string(&mut svg, (860, 480 + legend_h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (root, legend) = root.split_vertically(480);
        for (i, l) in lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let (col, row) = ((i % columns) as i32, (i / columns) as i32);
            let (x, y) = (84 + col * 390, 6 + row * 20);
            legend
                .draw(&PathElement::new(vec![(x, y + 8), (x + 26, y + 8)], c.stroke_width(3)))
                .map_err(draw_err)?;
            legend
                .draw(&Text::new(l.label.clone(), (x + 34, y), ("sans-serif", 14)))
                .map_err(draw_err)?;
        }
        let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.points.iter().copied()).collect();
        let x_max = all.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9);
        let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).min(x_max);
        // A diverged run's inf never sets the range (a log axis would never end).
        let pos: Vec<f64> = all
            .iter()
            .map(|p| p.1)
            .filter(|y| y.is_finite() && (!log_y || *y > 0.0))
            .collect();
        let y_min = pos.iter().copied().fold(f64::INFINITY, f64::min);
        let y_max = pos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (y_min, y_max) = match y_range {
            Some(range) => range,
            None if y_min.is_finite() => (y_min, y_max.max(y_min * 1.0001 + 1e-12)),
            None => (1e-3, 1.0),
        };
        draw_lines(
            &root,
            title,
            x_desc,
            y_desc,
            lines,
            (x_min, x_max),
            (y_min, y_max),
            log_y,
        )?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[allow(clippy::too_many_arguments)]
fn draw_lines(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    log_y: bool,
) -> Result<(), String> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_labels(8)
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| if log_y { format!("{v:.0e}") } else { tick(*v) })
                .draw()
                .map_err(draw_err)?;
            for (i, l) in lines.iter().enumerate() {
                let c = PALETTE[i % PALETTE.len()];
                if let Some(band) = &l.band {
                    let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                    poly.extend(band.iter().rev().map(|b| (b.0, if log_y { b.1.max(y0) } else { b.1 })));
                    chart
                        .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled())))
                        .map_err(draw_err)?;
                }
                let pts: Vec<(f64, f64)> = l.points.iter().copied().filter(|p| !log_y || p.1 > 0.0).collect();
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(draw_err)?;
            }
        }};
    }
    if log_y {
        body!(b.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(draw_err)?);
    } else {
        body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(draw_err)?);
    }
    Ok(())
}

/// A tick label with no more digits than it needs (`20`, `2.35`, `0.004`).
fn tick(v: f64) -> String {
    let digits = if v == 0.0 || v.abs() >= 100.0 {
        0
    } else {
        (2.0 - v.abs().log10().floor()).clamp(0.0, 6.0) as usize
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn csv_of(lines: &[Line], x: &str, y: &str) -> String {
    let mut out = format!("run,{x},{y},band_lo,band_hi\n");
    for l in lines {
        for (i, p) in l.points.iter().enumerate() {
            let band = l
                .band
                .as_ref()
                .map(|b| format!("{},{}", b[i].1, b[i].2))
                .unwrap_or_else(|| ",".into());
            out.push_str(&format!("\"{}\",{},{},{band}\n", l.label.replace('"', "'"), p.0, p.1));
        }
    }
    out
}

/// One line per group of runs (mean over its seeds, their spread as a band),
/// from each run's series; runs without one are left out, empty groups too.
fn group_lines(
    runs: &[RunData],
    groups: &[(String, Vec<usize>)],
    series: impl Fn(&RunData) -> Option<Vec<(f64, f64)>>,
) -> Vec<Line> {
    groups
        .iter()
        .map(|(label, idx)| {
            let members: Vec<Vec<(f64, f64)>> = idx
                .iter()
                .filter_map(|&i| series(&runs[i]))
                .filter(|m| !m.is_empty())
                .collect();
            group_line(label, &members)
        })
        .filter(|l| !l.points.is_empty())
        .collect()
}

/// Convergence overlay of one metric for every run, seed groups as mean + band.
pub fn convergence(
    runs: &[RunData],
    groups: &[(String, Vec<usize>)],
    metric: Curve,
    x: XAxis,
    smooth: usize,
) -> Result<Chart, String> {
    let lines = group_lines(runs, groups, |r| Some(moving_average(&series(r, metric, x), smooth)));
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .collect();
    let span = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max) / ys.iter().copied().fold(f64::INFINITY, f64::min);
    let log_y = metric != Curve::TestAcc && span > 20.0;
    let compared = groups.iter().map(|g| g.0.as_str()).collect::<Vec<_>>().join(" vs ");
    // A title that fits the chart's width; the legend below names every line.
    let title = match format!("{}: {compared}", metric.axis()) {
        t if t.chars().count() <= 72 => t,
        _ => metric.axis().to_owned(),
    };
    Ok(Chart {
        name: format!(
            "{}_{}",
            metric.name(),
            match x {
                XAxis::Step => "step",
                XAxis::Epoch => "epoch",
                XAxis::Time => "time",
            }
        ),
        svg: line_chart(&title, x.label(), metric.axis(), &lines, log_y)?,
        csv: csv_of(&lines, x.label(), metric.axis()),
        title,
    })
}

/// Main-path probe points (not the head), as `(relative depth, index)`.
fn profile(run: &RunData) -> Vec<(f64, usize)> {
    let idx = gradscope_probe::verdict::profile_points(&run.points);
    let n = idx.len().max(2) - 1;
    idx.iter().enumerate().map(|(k, &i)| (k as f64 / n as f64, i)).collect()
}

/// Per-layer profile of `metric` (signal or weight-gradient norm) against
/// relative depth at the first, an early, and the last probe step of each run.
pub fn flow_profile(runs: &[RunData], metric: Metric, axis: &str) -> Result<Chart, String> {
    let mut lines = Vec::new();
    for run in runs.iter().filter(|r| !r.probe.is_empty()) {
        let n = run.probe.len();
        let mut picks = vec![0, (n / 10).min(n - 1), n - 1];
        picks.dedup();
        for p in picks {
            let rec = &run.probe[p];
            let points: Vec<(f64, f64)> = profile(run)
                .into_iter()
                .filter_map(|(x, i)| rec.get(i, metric).filter(|v| v.is_finite() && *v > 0.0).map(|v| (x, v)))
                .collect();
            lines.push(Line {
                label: format!("{} @ step {}", run.label, rec.step),
                points,
                band: None,
            });
        }
    }
    let title = format!("gradient flow: {axis} by depth (0 = input side, 1 = output side)");
    Ok(Chart {
        name: format!("flow_{metric}"),
        svg: line_chart(&title, "relative depth", axis, &lines, true)?,
        csv: csv_of(&lines, "relative_depth", metric.name()),
        title,
    })
}

/// What [`layer_lines`] draws per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSeries {
    /// The weight gradient's L2 norm.
    GradL2,
    /// The back-propagated signal's RMS, dL/dh at the layer's output.
    SignalRms,
}

impl LayerSeries {
    fn metric(self) -> Metric {
        match self {
            LayerSeries::GradL2 => Metric::GradL2,
            LayerSeries::SignalRms => Metric::SignalRms,
        }
    }
    fn what(self) -> (&'static str, &'static str) {
        match self {
            LayerSeries::GradL2 => ("weight-gradient norm", "||dL/dW||"),
            LayerSeries::SignalRms => ("back-propagated signal RMS", "RMS dL/dh"),
        }
    }
}

/// One run's `series` per layer over steps (log axis): the per-layer view the
/// heatmap gives in colour, as lines one can read values off. Nets deeper
/// than [`LAYER_LINES`] layers show evenly spaced layers, the first and last
/// always among them. `None` when no layer has the series.
pub fn layer_lines(run: &RunData, series: LayerSeries, index: usize) -> Result<Option<Chart>, String> {
    let metric = series.metric();
    let layers: Vec<usize> = (0..run.points.len())
        .filter(|&i| run.probe.iter().any(|r| r.get(i, metric).is_some()))
        .collect();
    if layers.is_empty() {
        return Ok(None);
    }
    let shown: Vec<usize> = if layers.len() <= LAYER_LINES {
        layers.clone()
    } else {
        let mut picked: Vec<usize> = (0..LAYER_LINES)
            .map(|k| layers[k * (layers.len() - 1) / (LAYER_LINES - 1)])
            .collect();
        picked.dedup();
        picked
    };
    let lines: Vec<Line> = shown
        .iter()
        .map(|&i| Line {
            label: run.points[i].name.clone(),
            points: run
                .probe
                .iter()
                .filter_map(|r| {
                    r.get(i, metric)
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .map(|v| (r.step as f64, v))
                })
                .collect(),
            band: None,
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    let (what, axis) = series.what();
    let title = format!("{}: {what} per layer", run.label);
    Ok(Some(Chart {
        name: format!("layer_{metric}_{index}"),
        svg: line_chart(&title, "optimiser step", axis, &lines, true)?,
        csv: std::iter::once(format!("run,dir,layer,step,{metric}\n"))
            .chain(lines.iter().flat_map(|l| {
                l.points.iter().map(|p| {
                    format!(
                        "\"{}\",\"{}\",{},{},{}\n",
                        run.label.replace('"', "'"),
                        run.dir.display(),
                        l.label,
                        p.0,
                        p.1
                    )
                })
            }))
            .collect(),
        title,
    }))
}

/// Most layers [`grad_histograms`] draws for a run.
pub const HISTOGRAM_LAYERS: usize = 4;

/// TensorBoard's distribution view of a run's |g| histograms (`probe_hist.csv`):
/// for up to [`HISTOGRAM_LAYERS`] layers spread over the depth (first and last
/// included), a heatmap of the share of the layer's weight-gradient entries
/// per half-decade of |g| (rows) at each histogram step (columns), with the
/// share that is exactly 0 in a row of its own. `None` when the run has no
/// histograms.
pub fn grad_histograms(
    run: &RunData,
    hists: &[gradscope_probe::GradHistogram],
    index: usize,
) -> Result<Option<Chart>, String> {
    let layers: Vec<&str> = run
        .points
        .iter()
        .map(|p| p.name.as_str())
        .filter(|name| hists.iter().any(|h| h.layer == *name))
        .collect();
    if layers.is_empty() {
        return Ok(None);
    }
    let shown: Vec<&str> = if layers.len() <= HISTOGRAM_LAYERS {
        layers.clone()
    } else {
        (0..HISTOGRAM_LAYERS)
            .map(|k| layers[k * (layers.len() - 1) / (HISTOGRAM_LAYERS - 1)])
            .collect()
    };
    let steps: Vec<u64> = {
        let set: std::collections::BTreeSet<u64> = hists.iter().map(|h| h.step).collect();
        set.into_iter().collect()
    };
    // Rows: the run's range of occupied bins, whole decades.
    let edges = hists
        .iter()
        .flat_map(|h| h.bins.iter().filter(|b| b.1 > 0.0).map(|b| b.0));
    let (lo, hi) = edges.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(e), hi.max(e)));
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), (hi + gradscope_probe::step::HIST_WIDTH).ceil())
    } else {
        (-8.0, 0.0)
    };
    // Colour: log10 of the share of entries, from 1e-4 (and below) to all of them.
    let (share_lo, share_hi) = (-4.0, 0.0);
    let zero_row = lo - 1.0;
    let cols = if shown.len() == 1 { 1 } else { 2 };
    let rows = shown.len().div_ceil(cols);
    let (title_h, bar_h, panel_h) = (40u32, 70u32, 250u32);
    let height = title_h + bar_h + panel_h * rows as u32;
    let title = format!("{}: |dL/dW| histograms per layer over training", run.label);
    let mut svg = String::new();
    let mut csv = "run,dir,layer,step,bin_lo_log10,share\n".to_owned();
    {
        let root = SVGBackend::with_string(&mut svg, (860, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, rest) = root.split_vertically(title_h);
        top.titled(&title, ("sans-serif", 15)).map_err(draw_err)?;
        let (legend, body) = rest.split_vertically(bar_h);
        let key = CellKey {
            grey: None,
            white: "no entries; colour: share of the layer's entries in the bin",
        };
        colour_bar(&legend, share_lo, share_hi, &key)?;
        let panels = body.split_evenly((rows, cols));
        for (layer, area) in shown.iter().zip(panels.iter()) {
            let mut chart = ChartBuilder::on(area)
                .caption(*layer, ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..steps.len().max(1) as f64, zero_row..hi)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("step")
                .y_desc("|g|")
                .x_labels(steps.len().clamp(2, 6))
                .x_label_formatter(&|x| steps.get(x.floor() as usize).map_or(String::new(), |s| s.to_string()))
                .y_labels(((hi - zero_row) as usize + 1).min(12))
                .y_label_formatter(&|y| {
                    if *y < lo { "= 0".into() } else { format!("1e{y:.0}") }
                })
                .draw()
                .map_err(draw_err)?;
            let mut cells = Vec::new();
            for h in hists.iter().filter(|h| h.layer == *layer) {
                let total = h.zeros + h.bins.iter().map(|b| b.1).sum::<f64>();
                let Some(col) = steps.iter().position(|&s| s == h.step).filter(|_| total > 0.0) else {
                    continue;
                };
                let x = col as f64;
                let zero = (h.zeros > 0.0).then_some((zero_row, 1.0, h.zeros));
                let bins = h
                    .bins
                    .iter()
                    .map(|&(edge, count)| (edge, gradscope_probe::step::HIST_WIDTH, count));
                for (y, height, count) in zero.into_iter().chain(bins).filter(|b| b.2 > 0.0) {
                    let share = count / total;
                    csv.push_str(&format!(
                        "\"{}\",\"{}\",{layer},{},{},{share}\n",
                        run.label.replace('"', "'"),
                        run.dir.display(),
                        h.step,
                        if y < lo { "zero".to_owned() } else { y.to_string() }
                    ));
                    let t = ((share.log10() - share_lo) / (share_hi - share_lo)).clamp(0.0, 1.0);
                    cells.push(Rectangle::new([(x, y), (x + 1.0, y + height)], ramp(t).filled()));
                }
            }
            chart.draw_series(cells).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Some(Chart {
        name: format!("grad_hist_{index}"),
        title: format!(
            "{title}: share of each layer's weight-gradient entries per half-decade of |g| (rows) at each histogram step (columns); the bottom row is the share exactly 0"
        ),
        svg,
        csv,
    }))
}

/// Most layers [`layer_lines`] draws in one chart: one colour each.
pub const LAYER_LINES: usize = PALETTE.len();

/// Mean fraction of saturated or dead units over main-path layers, per run, over steps.
pub fn regimes(runs: &[RunData]) -> Result<Chart, String> {
    let mut lines = Vec::new();
    for run in runs.iter().filter(|r| !r.probe.is_empty()) {
        for metric in [Metric::SaturatedFrac, Metric::DeadFrac] {
            let layers = profile(run);
            let points: Vec<(f64, f64)> = run
                .probe
                .iter()
                .filter_map(|rec| {
                    let v: Vec<f64> = layers.iter().filter_map(|(_, i)| rec.get(*i, metric)).collect();
                    (!v.is_empty()).then(|| (rec.step as f64, 100.0 * v.iter().sum::<f64>() / v.len() as f64))
                })
                .collect();
            if !points.is_empty() {
                let what = if metric == Metric::SaturatedFrac {
                    "saturated"
                } else {
                    "dead"
                };
                lines.push(Line {
                    label: format!("{}: {what}", run.label),
                    points,
                    band: None,
                });
            }
        }
    }
    let title = "activation regimes: % of units saturated (sigmoid/tanh) or dead (ReLU), mean over layers".to_owned();
    Ok(Chart {
        name: "regimes".into(),
        svg: line_chart(&title, "optimiser step", "% of units", &lines, false)?,
        csv: csv_of(&lines, "step", "percent"),
        title,
    })
}

/// A colour for `t` in [0, 1] on a viridis-like ramp (perceptually ordered, colour-blind safe).
fn ramp(t: f64) -> RGBColor {
    const STOPS: [(f64, (u8, u8, u8)); 5] = [
        (0.0, (68, 1, 84)),
        (0.25, (59, 82, 139)),
        (0.5, (33, 145, 140)),
        (0.75, (94, 201, 98)),
        (1.0, (253, 231, 37)),
    ];
    let t = t.clamp(0.0, 1.0);
    let k = STOPS.iter().position(|s| s.0 >= t).unwrap_or(4).max(1);
    let (a, b) = (STOPS[k - 1], STOPS[k]);
    let f = (t - a.0) / (b.0 - a.0);
    let mix = |x: u8, y: u8| (x as f64 + f * (y as f64 - x as f64)).round() as u8;
    RGBColor(mix(a.1.0, b.1.0), mix(a.1.1, b.1.1), mix(a.1.2, b.1.2))
}

/// Cells whose value is exactly zero (no gradient at all): log10 has no value
/// for them, and white is kept for "not measured".
const ZERO_CELL: RGBColor = RGBColor(190, 190, 190);

/// The heatmaps' key: the colour ramp with its decades labelled, and what the
/// grey and white cells mean.
/// What a heatmap's grey and white cells mean, for its key.
struct CellKey {
    grey: Option<&'static str>,
    white: &'static str,
}

/// The spectrograms' key.
const SPECTROGRAM_KEY: CellKey = CellKey {
    grey: Some("exactly 0 (no gradient reached the layer)"),
    white: "not measured, or undefined (a ratio to zero weights)",
};

fn colour_bar(area: &DrawingArea<SVGBackend, Shift>, lo: f64, hi: f64, cells: &CellKey) -> Result<(), String> {
    let (bar, key) = area.split_vertically(46);
    let mut chart = ChartBuilder::on(&bar)
        .margin_left(128)
        .margin_right(40)
        .margin_top(4)
        .x_label_area_size(22)
        .build_cartesian_2d(lo..hi, 0.0..1.0)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_y_axis()
        .x_labels(((hi - lo) as usize + 1).min(12))
        .x_label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("1e{v:.0}"))
        .draw()
        .map_err(draw_err)?;
    let n = 100;
    chart
        .draw_series((0..n).map(|k| {
            let a = lo + (hi - lo) * k as f64 / n as f64;
            let b = lo + (hi - lo) * (k + 1) as f64 / n as f64;
            Rectangle::new([(a, 0.0), (b, 1.0)], ramp(k as f64 / n as f64).filled())
        }))
        .map_err(draw_err)?;
    key.fill(&WHITE).map_err(draw_err)?;
    let style = ("sans-serif", 13).into_font().color(&BLACK);
    let mut x = 128;
    if let Some(grey) = cells.grey {
        key.draw(&Rectangle::new([(x, 6), (x + 14, 18)], ZERO_CELL.filled()))
            .map_err(draw_err)?;
        key.draw(&Text::new(grey, (x + 20, 6), style.clone()))
            .map_err(draw_err)?;
        x = 450;
    }
    key.draw(&Rectangle::new([(x, 6), (x + 14, 18)], BLACK.stroke_width(1)))
        .map_err(draw_err)?;
    key.draw(&Text::new(cells.white, (x + 20, 6), style))
        .map_err(draw_err)?;
    Ok(())
}

/// Layer x step heatmap of log10 `metric` for each run, on one colour scale
/// shared by all runs so that they can be compared.
pub fn spectrogram(runs: &[RunData], metric: Metric, what: &str) -> Result<Chart, String> {
    let runs: Vec<&RunData> = runs.iter().filter(|r| !r.probe.is_empty()).collect();
    let logs: Vec<f64> = runs
        .iter()
        .flat_map(|r| {
            r.probe
                .iter()
                .flat_map(move |rec| r.points.iter().enumerate().filter_map(move |(i, _)| rec.get(i, metric)))
        })
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(f64::log10)
        .collect();
    let (lo, hi) = (
        logs.iter().copied().fold(f64::INFINITY, f64::min),
        logs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-8.0, 0.0)
    };
    let panel_h = 260u32;
    // Title, colour bar with its key, then one panel per run.
    let (title_h, bar_h) = (40u32, 70u32);
    let height = title_h + bar_h + panel_h * runs.len().max(1) as u32;
    let mut svg = String::new();
    // `dir` tells apart runs that share a label (seeds of one configuration).
    let mut csv = format!("run,dir,layer,step,log10_{metric}\n");
    let title = format!("{what}: log10 per layer (rows, input at the bottom) and probed step (columns)");
    {
        let root = SVGBackend::with_string(&mut svg, (860, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, rest) = root.split_vertically(title_h);
        top.titled(&title, ("sans-serif", 15)).map_err(draw_err)?;
        let (legend, body) = rest.split_vertically(bar_h);
        colour_bar(&legend, lo, hi, &SPECTROGRAM_KEY)?;
        let panels = body.split_evenly((runs.len().max(1), 1));
        for (run, area) in runs.iter().zip(panels.iter()) {
            let layers: Vec<usize> = (0..run.points.len())
                .filter(|&i| run.probe.iter().any(|r| r.get(i, metric).is_some()))
                .collect();
            // Columns: the probed steps that measured the metric (update sizes
            // are measured on every 10th probed step only).
            let recs: Vec<_> = run
                .probe
                .iter()
                .filter(|r| layers.iter().any(|&i| r.get(i, metric).is_some()))
                .collect();
            let steps = recs.len();
            let mut chart = ChartBuilder::on(area)
                .caption(&run.label, ("sans-serif", 14))
                .margin(6)
                .x_label_area_size(28)
                .y_label_area_size(120)
                .build_cartesian_2d(0f64..steps.max(1) as f64, 0f64..layers.len().max(1) as f64)
                .map_err(draw_err)?;
            let names: Vec<String> = layers.iter().map(|&i| run.points[i].name.clone()).collect();
            let step_of: Vec<u64> = recs.iter().map(|r| r.step).collect();
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("probed step")
                .x_labels(steps.clamp(2, 10))
                .x_label_formatter(&|x| step_of.get(x.floor() as usize).map_or(String::new(), |s| s.to_string()))
                .y_labels(layers.len().clamp(2, 12))
                .y_label_formatter(&|y| names.get(y.floor() as usize).cloned().unwrap_or_default())
                .draw()
                .map_err(draw_err)?;
            let mut cells = Vec::new();
            for (col, rec) in recs.iter().enumerate() {
                for (row, &i) in layers.iter().enumerate() {
                    let Some(v) = rec.get(i, metric).filter(|v| *v >= 0.0 && v.is_finite()) else {
                        continue;
                    };
                    let (x, y) = (col as f64, row as f64);
                    // log10(0) = -inf: written so, drawn grey.
                    let l = v.log10();
                    csv.push_str(&format!(
                        "\"{}\",\"{}\",{},{},{l}\n",
                        run.label,
                        run.dir.display(),
                        run.points[i].name,
                        rec.step
                    ));
                    let colour = if v == 0.0 {
                        ZERO_CELL
                    } else {
                        ramp((l - lo) / (hi - lo))
                    };
                    cells.push(Rectangle::new([(x, y), (x + 1.0, y + 1.0)], colour.filled()));
                }
            }
            chart.draw_series(cells).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Chart {
        name: format!("spectrogram_{metric}"),
        title,
        svg,
        csv,
    })
}

/// Per-layer profile of `metric` at the first probe step, one line per group
/// (mean over its seeds, with their spread as a band): how the signal
/// changes with depth before training moves anything.
pub fn start_profile(
    runs: &[RunData],
    groups: &[(String, Vec<usize>)],
    metric: Metric,
    axis: &str,
) -> Result<Chart, String> {
    let lines = group_lines(runs, groups, |run| {
        let rec = run.probe.first()?;
        Some(
            profile(run)
                .into_iter()
                .filter_map(|(x, p)| rec.get(p, metric).filter(|v| v.is_finite() && *v > 0.0).map(|v| (x, v)))
                .collect(),
        )
    });
    let title = format!("{axis} by depth at the first probe step (0 = input side)");
    Ok(Chart {
        name: format!("start_{metric}"),
        svg: line_chart(&title, "relative depth", axis, &lines, true)?,
        csv: csv_of(&lines, "relative_depth", metric.name()),
        title: format!(
            "{title}; a layer whose signal is exactly 0 (every unit dead) has no point on the log axis, so a net dead near its output shows only its last layers"
        ),
    })
}

/// Mean share of dead (ReLU) or saturated (sigmoid/tanh) units over the
/// main-path layers against steps, one line per group (mean over its seeds).
pub fn regimes_by_group(runs: &[RunData], groups: &[(String, Vec<usize>)]) -> Result<Chart, String> {
    let share = |run: &RunData, metric: Metric| -> Vec<(f64, f64)> {
        let layers = profile(run);
        run.probe
            .iter()
            .filter_map(|rec| {
                let v: Vec<f64> = layers.iter().filter_map(|(_, i)| rec.get(*i, metric)).collect();
                (!v.is_empty()).then(|| (rec.step as f64, 100.0 * v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect()
    };
    let mut lines = Vec::new();
    for (metric, what) in [
        (Metric::DeadFrac, "dead"),
        (Metric::SaturatedFrac, "saturated"),
        (Metric::NegativeFrac, "on the negative slope"),
    ] {
        let named: Vec<(String, Vec<usize>)> = groups
            .iter()
            .map(|(l, idx)| (format!("{l}: {what}"), idx.clone()))
            .collect();
        lines.extend(group_lines(runs, &named, |r| Some(share(r, metric))));
    }
    // LeakyReLU units are never dead: their negative slope scales the gradient
    // instead of cutting it, so the chart shows how many values sit there.
    let title = "% of units dead (ReLU) or saturated; of LeakyReLU values below zero".to_owned();
    Ok(Chart {
        name: "regimes".into(),
        svg: line_chart_in(
            &title,
            "optimiser step",
            "% of units",
            &lines,
            false,
            Some((0.0, 100.0)),
        )?,
        csv: csv_of(&lines, "step", "percent"),
        title,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_min_max_for_two_and_sd_for_three() {
        let a = vec![(0.0, 1.0), (1.0, 2.0)];
        let b = vec![(0.0, 3.0), (1.0, 4.0)];
        let two = group_line("x", &[a.clone(), b.clone()]);
        assert_eq!(two.points, vec![(0.0, 2.0), (1.0, 3.0)]);
        assert_eq!(two.band.unwrap()[0], (0.0, 1.0, 3.0));
        let c = vec![(0.0, 2.0), (1.0, 3.0)];
        let three = group_line("x", &[a, b, c]);
        let band = three.band.unwrap();
        assert!(
            (band[0].1 - 1.0).abs() < 1e-12 && (band[0].2 - 3.0).abs() < 1e-12,
            "{band:?}"
        );
    }

    #[test]
    fn moving_average_is_causal() {
        let v = vec![(0.0, 0.0), (1.0, 2.0), (2.0, 4.0)];
        assert_eq!(moving_average(&v, 2), vec![(0.0, 0.0), (1.0, 1.0), (2.0, 3.0)]);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(20.0), "20");
        assert_eq!(tick(2.35), "2.35");
        assert_eq!(tick(0.004), "0.004");
        assert_eq!(tick(120.0), "120");
    }

    /// `n` dense main-path points named `l0`, `l1`, ...
    fn points(n: usize) -> Vec<gradscope_models::ProbePoint> {
        (0..n)
            .map(|i| gradscope_models::ProbePoint {
                name: format!("l{i}"),
                kind: gradscope_models::PointKind::Dense,
                depth: i,
                activation: None,
                params: vec![],
                weight: None,
                shape: vec![1],
                has_norm: false,
                block: None,
                main_path: true,
            })
            .collect()
    }

    #[test]
    fn layer_lines_pick_evenly_spaced_layers_first_and_last_included() {
        let mut run = crate::label::tests::run("r", 0, 0.1);
        run.points = points(20);
        let mut rec = gradscope_probe::ProbeRecord::new(0, 20);
        for (i, l) in rec.layers.iter_mut().enumerate() {
            l.insert(Metric::GradL2, 1.0 + i as f64);
        }
        run.probe = vec![rec];
        assert!(
            layer_lines(&run, LayerSeries::SignalRms, 0).unwrap().is_none(),
            "no dL/dh measured"
        );
        let chart = layer_lines(&run, LayerSeries::GradL2, 0).unwrap().unwrap();
        assert_eq!(chart.name, "layer_grad_l2_0");
        let layers: Vec<&str> = chart
            .csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap())
            .collect();
        assert_eq!(layers.len(), LAYER_LINES);
        assert_eq!((layers[0], layers[LAYER_LINES - 1]), ("l0", "l19"));
        assert!(
            chart.csv.starts_with("run,dir,layer,step,grad_l2\n\"\",\"r\",l0,0,1\n"),
            "{}",
            chart.csv
        );
    }

    /// Histogram charts: at most four layers, first and last among them; each
    /// (layer, step) column's shares sum to 1, exact zeros in a row of their own.
    #[test]
    fn histogram_chart_shares_per_column() {
        let mut run = crate::label::tests::run("r", 0, 0.1);
        run.points = points(6);
        let hist = |step, layer: usize, zeros| gradscope_probe::GradHistogram {
            step,
            layer: format!("l{layer}"),
            bins: vec![(-6.0, 3.0), (-5.5, 0.0), (-2.0, 1.0)],
            zeros,
        };
        let hists: Vec<_> = [0, 10]
            .into_iter()
            .flat_map(|step| (0..6).map(move |l| hist(step, l, if l == 5 { 4.0 } else { 0.0 })))
            .collect();
        assert!(grad_histograms(&run, &[], 0).unwrap().is_none());
        let chart = grad_histograms(&run, &hists, 3).unwrap().unwrap();
        assert_eq!(chart.name, "grad_hist_3");
        let rows: Vec<Vec<&str>> = chart.csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
        let layers: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[2]).collect();
        assert_eq!(layers.len(), HISTOGRAM_LAYERS);
        assert!(layers.contains("l0") && layers.contains("l5"));
        for layer in &layers {
            for step in ["0", "10"] {
                let shares: Vec<f64> = rows
                    .iter()
                    .filter(|r| r[2] == *layer && r[3] == step)
                    .map(|r| r[5].parse().unwrap())
                    .collect();
                assert!(
                    (shares.iter().sum::<f64>() - 1.0).abs() < 1e-12,
                    "{layer}@{step}: {shares:?}"
                );
            }
        }
        let zero: Vec<_> = rows.iter().filter(|r| r[4] == "zero").collect();
        assert_eq!(zero.len(), 2, "l5's zeros at both steps");
        assert_eq!(zero[0][5], "0.5");
        assert!(!chart.csv.contains(",-5.5,"), "empty bins are not drawn");
    }

    #[test]
    fn a_line_through_infinity_draws_on_a_finite_axis() {
        let line = Line {
            label: "diverged".into(),
            points: vec![(0.0, 1.0), (1.0, f64::INFINITY), (2.0, f64::NAN), (3.0, 1e3)],
            band: None,
        };
        for log_y in [true, false] {
            let svg = line_chart("t", "x", "y", std::slice::from_ref(&line), log_y).unwrap();
            assert!(svg.contains("<svg"));
        }
    }

    #[test]
    fn ramp_ends() {
        assert_eq!(ramp(0.0), RGBColor(68, 1, 84));
        assert_eq!(ramp(1.0), RGBColor(253, 231, 37));
    }
}
