//! The report: rows of figure, measured value, target and verdict, and the
//! small statistics the figures print.

#[allow(unused_imports)]
use super::*;

pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) measured: String,
    pub(crate) target: String,
    pub(crate) pass: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn row(&mut self, figure: &str, measured: String, target: &str, pass: Option<bool>) {
        println!(
            "  => {figure}: {measured}  [target {target}: {}]",
            verdict(pass)
        );
        self.rows.push(Row {
            figure: figure.into(),
            measured,
            target: target.into(),
            pass,
        });
    }

    /// Connection setup through fwd (`a`) against an alternative (`b`),
    /// measured in one run: both distributions as notes, the ratio of the
    /// medians as a row against ≤ 1.10×.
    pub(crate) fn setup_ratio(
        &mut self,
        figure: &str,
        a_name: &str,
        b_name: &str,
        a: &[f64],
        b: &[f64],
    ) {
        let ratio = pct(a, 50.0) / pct(b, 50.0);
        self.note(format!("{a_name}: {}", dist(a)));
        self.note(format!("{b_name}: {}", dist(b)));
        self.row(
            figure,
            format!(
                "{ratio:.2}× (median {:.2} vs {:.2} ms, n={})",
                pct(a, 50.0),
                pct(b, 50.0),
                a.len().min(b.len())
            ),
            "≤ 1.10×",
            Some(ratio <= 1.10),
        );
    }

    pub(crate) fn note(&mut self, s: String) {
        println!("  .. {s}");
        self.notes.push(s);
    }

    pub(crate) fn print(&self) {
        println!();
        println!("| figure | measured | target | result |");
        println!("| --- | --- | --- | --- |");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} |",
                r.figure,
                r.measured,
                r.target,
                verdict(r.pass)
            );
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

pub(crate) fn verdict(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "pass",
        Some(false) => "MISS",
        None => "-",
    }
}

/// Nearest-rank percentile of a sorted slice.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

pub(crate) fn dist(v: &[f64]) -> String {
    format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms (n={})",
        pct(v, 50.0),
        pct(v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

pub(crate) fn fmt_ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "never".into()
    }
}
