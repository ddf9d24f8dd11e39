//! The summary table: final and best accuracy, time to a target accuracy, verdicts.

use crate::load::RunData;

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    pub run: String,
    pub dir: String,
    pub status: String,
    pub final_test_acc: Option<f64>,
    pub best_test_acc: Option<f64>,
    pub steps_to_target: Option<u64>,
    pub seconds_to_target: Option<f64>,
    pub verdict: String,
}

/// Summary rows, one per run; `target` is the test accuracy (0..1) to reach.
pub fn summary_rows(runs: &[RunData], target: f64) -> Vec<SummaryRow> {
    runs.iter()
        .map(|r| {
            let evals: Vec<_> = r.metrics.iter().filter(|m| m.test_acc.is_some()).collect();
            let hit = evals.iter().find(|m| m.test_acc.unwrap_or(0.0) >= target);
            SummaryRow {
                run: r.label.clone(),
                dir: r.dir.display().to_string(),
                status: match (&r.summary, &r.config) {
                    (Some(s), _) => format!("{:?}", s.status).to_lowercase(),
                    // A `ModelProbe` run: its loop, not gradscope, knows how it ended.
                    (None, None) => "own loop".into(),
                    (None, Some(_)) => "unknown".into(),
                },
                final_test_acc: evals.last().and_then(|m| m.test_acc),
                best_test_acc: evals
                    .iter()
                    .filter_map(|m| m.test_acc)
                    .fold(None, |b: Option<f64>, a| Some(b.map_or(a, |b| b.max(a)))),
                steps_to_target: hit.map(|m| m.step),
                seconds_to_target: hit.map(|m| m.wall_s),
                verdict: r.verdicts.as_ref().map_or("-".into(), |v| v.verdict.to_string()),
            }
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
}

/// The table as aligned text for the terminal.
pub fn render_text(rows: &[SummaryRow], target: f64) -> String {
    let w = rows.iter().map(|r| r.run.len()).max().unwrap_or(3).max(3);
    let mut out = format!(
        "{:<w$}  {:>10} {:>10} {:>14} {:>12}  {:<11} verdict\n",
        "run",
        "final acc",
        "best acc",
        format!("steps to {:.0}%", target * 100.0),
        "time to it",
        "status"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<w$}  {:>10} {:>10} {:>14} {:>12}  {:<11} {}\n",
            r.run,
            pct(r.final_test_acc),
            pct(r.best_test_acc),
            r.steps_to_target.map_or("not reached".into(), |s| s.to_string()),
            r.seconds_to_target.map_or("-".into(), |s| format!("{s:.1} s")),
            r.status,
            r.verdict
        ));
    }
    out
}

/// The table as CSV.
pub fn render_csv(rows: &[SummaryRow]) -> String {
    let mut out = "run,dir,status,final_test_acc,best_test_acc,steps_to_target,seconds_to_target,verdict\n".to_owned();
    let o = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for r in rows {
        out.push_str(&format!(
            "\"{}\",\"{}\",{},{},{},{},{},{}\n",
            r.run,
            r.dir,
            r.status,
            o(r.final_test_acc),
            o(r.best_test_acc),
            r.steps_to_target.map_or(String::new(), |s| s.to_string()),
            o(r.seconds_to_target),
            r.verdict
        ));
    }
    out
}

/// A small text plot of training-loss curves (one letter per run) for the terminal.
pub fn text_plot(runs: &[RunData], width: usize, height: usize) -> String {
    let curves: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.metrics
                .iter()
                .filter_map(|m| m.train_loss.filter(|l| l.is_finite()).map(|l| (m.step as f64, l)))
                .collect()
        })
        .collect();
    let all: Vec<&(f64, f64)> = curves.iter().flatten().collect();
    if all.is_empty() {
        return String::new();
    }
    let x_max = all.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let (y_lo, y_hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let span = (y_hi - y_lo).max(1e-9);
    let mut grid = vec![vec![' '; width]; height];
    for (k, c) in curves.iter().enumerate() {
        let mark = (b'a' + (k % 26) as u8) as char;
        for &(x, y) in c {
            let col = ((x / x_max) * (width - 1) as f64).round() as usize;
            let row = (((y_hi - y) / span) * (height - 1) as f64).round() as usize;
            grid[row.min(height - 1)][col.min(width - 1)] = mark;
        }
    }
    let mut out = format!("training loss (top {y_hi:.3}, bottom {y_lo:.3}) against step (0..{x_max:.0})\n");
    for row in grid {
        out.push('|');
        out.extend(row);
        out.push('\n');
    }
    out.push('+');
    out.push_str(&"-".repeat(width));
    out.push('\n');
    for (k, r) in runs.iter().enumerate() {
        out.push_str(&format!("  {} = {}\n", (b'a' + (k % 26) as u8) as char, r.label));
    }
    out
}
