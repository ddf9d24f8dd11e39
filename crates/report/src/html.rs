//! `report.html`: one self-contained file (inline SVG and CSS, no scripts, no
//! network) with every chart, the summary, the verdicts and each run's configuration.

use crate::Report;
use crate::summary::SummaryRow;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
}

fn summary_table(rows: &[SummaryRow], target: f64) -> String {
    let mut t = format!(
        "<table><thead><tr><th>run</th><th>final test acc</th><th>best test acc</th><th>steps to {:.0}%</th><th>time to {:.0}%</th><th>status</th><th>verdict</th></tr></thead><tbody>",
        target * 100.0,
        target * 100.0
    );
    for r in rows {
        t.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"v-{}\">{}</td></tr>",
            escape(&r.run),
            pct(r.final_test_acc),
            pct(r.best_test_acc),
            r.steps_to_target.map_or("not reached".into(), |s| s.to_string()),
            r.seconds_to_target.map_or("-".into(), |s| format!("{s:.1} s")),
            escape(&r.status),
            escape(&r.verdict),
            escape(&r.verdict)
        ));
    }
    t.push_str("</tbody></table>");
    t
}

/// Strips an XML declaration so the SVG can sit inline in HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

fn figure(c: &crate::Chart) -> String {
    format!(
        "<figure id=\"{}\">{}<figcaption>{} &mdash; data: <code>{}.csv</code></figcaption></figure>",
        escape(&c.name),
        inline_svg(&c.svg),
        escape(&c.title),
        escape(&c.name)
    )
}

/// The lab's page: what every claim says and whether it held, on one screen,
/// then one section per claim with its evidence, its runs and its charts.
fn lab_body(report: &Report) -> String {
    let mut body = String::from(
        "<h1>gradscope lab</h1><p class=\"sub\">Each claim of the vanishing-gradient story, measured on its own runs and judged by a rule written before the runs (<code>crates/lab/src/claims.rs</code>).</p>",
    );
    body.push_str("<table class=\"claims\"><thead><tr><th>#</th><th>claim</th><th>verdict</th><th>key number</th></tr></thead><tbody>");
    for (k, s) in report.sections.iter().enumerate() {
        let c = &s.heading;
        body.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td class=\"{}\">{}</td><td>{}</td></tr>",
            k + 1,
            escape(&c.id),
            escape(&c.title),
            outcome_class(c.confirmed),
            outcome_word(c.confirmed),
            escape(&c.key)
        ));
    }
    body.push_str("</tbody></table>");
    for (k, s) in report.sections.iter().enumerate() {
        let c = &s.heading;
        body.push_str(&format!(
            "<section id=\"{}\"><h2>{}. {}</h2><p class=\"verdict {}\">{}</p><p class=\"look\"><b>What to look at:</b> {}.</p><ul>{}</ul>",
            escape(&c.id),
            k + 1,
            escape(&c.title),
            outcome_class(c.confirmed),
            outcome_word(c.confirmed),
            escape(&c.look_at),
            c.evidence
                .iter()
                .map(|e| format!("<li>{}</li>", escape(e)))
                .collect::<String>()
        ));
        body.push_str("<details><summary>its runs</summary><table><thead><tr><th>role</th><th>seed</th><th>model</th><th>final test acc</th><th>probe verdict</th><th>run directory</th></tr></thead><tbody>");
        for r in &s.runs {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"v-{}\">{}</td><td><code>{}</code></td></tr>",
                escape(&r.role),
                r.seed.map_or("-".into(), |s| s.to_string()),
                escape(&r.model),
                pct(r.final_test_acc),
                escape(&r.verdict),
                escape(&r.verdict),
                escape(&r.dir.display().to_string())
            ));
        }
        body.push_str("</tbody></table></details>");
        for chart in &s.charts {
            body.push_str(&figure(chart));
        }
        body.push_str("</section>");
    }
    body
}

fn outcome_class(confirmed: bool) -> &'static str {
    if confirmed { "v-healthy" } else { "v-vanishing" }
}

fn outcome_word(confirmed: bool) -> &'static str {
    if confirmed { "CONFIRMED" } else { "NOT CONFIRMED" }
}

/// Renders the whole report as one HTML document.
pub fn render(report: &Report) -> String {
    if !report.sections.is_empty() {
        let mut body = lab_body(report);
        body.push_str("<h2>Configurations</h2>");
        body.push_str(&configurations(report));
        return page(&body);
    }
    let names: Vec<String> = report.runs.iter().map(|r| escape(&r.label)).collect();
    let mut body = format!(
        "<h1>gradscope report</h1><p class=\"sub\">{} run(s): {}</p>",
        report.runs.len(),
        names.join(" &middot; ")
    );
    if !report.warnings.is_empty() {
        body.push_str("<div class=\"warn\"><b>Warnings</b><ul>");
        for w in &report.warnings {
            body.push_str(&format!("<li>{}</li>", escape(w)));
        }
        body.push_str("</ul></div>");
    }
    if let Some(lead) = &report.lead {
        body.push_str(&format!(
            "<h2>{}</h2><p>{}</p><table><thead><tr>",
            escape(&lead.title),
            escape(&lead.text)
        ));
        for c in &lead.columns {
            body.push_str(&format!("<th>{}</th>", escape(c)));
        }
        body.push_str("</tr></thead><tbody>");
        for row in &lead.rows {
            body.push_str("<tr>");
            for cell in row {
                body.push_str(&format!("<td>{}</td>", escape(cell)));
            }
            body.push_str("</tr>");
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<h2>Summary</h2>");
    body.push_str(&summary_table(&report.summary, report.options.target_acc));
    body.push_str("<h2>Charts</h2>");
    for c in &report.charts {
        body.push_str(&figure(c));
    }
    body.push_str("<h2>Verdicts</h2>");
    for r in &report.runs {
        body.push_str(&format!("<h3>{}</h3>", escape(&r.label)));
        match &r.verdicts {
            None => body.push_str("<p>no probe verdicts for this run</p>"),
            Some(v) => {
                body.push_str(&format!(
                    "<p>verdict: <b class=\"v-{0}\">{0}</b></p><ul>",
                    escape(v.verdict.as_str())
                ));
                for a in &v.alerts {
                    body.push_str(&format!(
                        "<li><b>{}</b> (steps {}&ndash;{}): {}<ol>{}</ol></li>",
                        escape(a.rule.as_str()),
                        a.steps[0],
                        a.steps[1],
                        escape(&a.evidence),
                        a.remedies
                            .iter()
                            .map(|m| format!("<li>{}</li>", escape(m)))
                            .collect::<String>()
                    ));
                }
                for n in &v.notes {
                    body.push_str(&format!("<li>note: {}</li>", escape(n)));
                }
                body.push_str("</ul>");
            }
        }
    }
    body.push_str("<h2>Configurations</h2>");
    body.push_str(&configurations(report));
    page(&body)
}

/// Each run's configuration, folded.
fn configurations(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.runs {
        let cfg = r.config.as_ref().map_or_else(
            || "no config.toml: probed (ModelProbe) in a training loop of the user's own".to_owned(),
            |c| toml::to_string_pretty(c).unwrap_or_default(),
        );
        out.push_str(&format!(
            "<details><summary>{} <code>{}</code></summary><pre>{}</pre></details>",
            escape(&r.label),
            escape(&r.dir.display().to_string()),
            escape(&cfg)
        ));
    }
    out
}

fn page(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradscope report</title><style>{}</style></head><body>{}</body></html>\n",
        STYLE, body
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:920px;margin:2em auto;color:#222;padding:0 1em}\
h1{margin-bottom:0}.sub{color:#555;margin-top:.3em}figure{margin:1.5em 0}figcaption{font-size:.9em;color:#444}\
table{border-collapse:collapse;width:100%;font-size:.92em}th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left}\
th{background:#f4f4f4}.v-vanishing,.v-exploding{color:#b00020;font-weight:bold}.v-healthy{color:#006d3c;font-weight:bold}\
.warn{background:#fff4e5;border:1px solid #f0b060;padding:.5em 1em;margin:1em 0}pre{background:#f7f7f7;padding:.8em;overflow:auto}\
svg{max-width:100%;height:auto}section{border-top:2px solid #ccc;margin-top:2.5em}.verdict{font-size:1.2em}\
.look{background:#eef5fb;padding:.5em .8em}table.claims td:nth-child(3){white-space:nowrap}";
