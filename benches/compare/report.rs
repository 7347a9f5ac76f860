//! The figures, as Markdown tables, and the verdict on each target.

use crate::runner::Stats;

/// What a scenario's ratio (idem's throughput / the baseline's) must be.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// At least this ratio.
    AtLeast(f64),
    /// idem faster than the baseline (c: the naive pattern).
    Above,
    /// At most this many statements per idem operation.
    Statements(f64),
    /// Reported only.
    Reported,
}

/// One comparison's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: &'static str,
    pub mode: &'static str,
    pub id: &'static str,
    pub title: &'static str,
    /// Rows per operation (e: the batch size), for rows/s.
    pub per_op: usize,
    pub goal: Goal,
    pub base: Stats,
    pub idem: Stats,
}

impl Row {
    /// idem's throughput over the baseline's, all rounds together.
    pub fn ratio(&self) -> f64 {
        self.idem.per_second() / self.base.per_second().max(1e-9)
    }

    /// The median over rounds of idem's throughput over the baseline's in
    /// the same round (the two ran back to back): robust to bursts of load
    /// from other processes that hit one round. Verdicts use it.
    pub fn median_ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self
            .idem
            .round_rates
            .iter()
            .zip(&self.base.round_rates)
            .map(|(idem, base)| idem / base.max(1e-9))
            .collect();
        if ratios.is_empty() {
            return self.ratio();
        }
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        if ratios.len() % 2 == 0 {
            (ratios[mid - 1] + ratios[mid]) / 2.0
        } else {
            ratios[mid]
        }
    }

    /// `Some(met)` for a goal that can be met or missed.
    pub fn verdict(&self) -> Option<bool> {
        match self.goal {
            Goal::AtLeast(min) => Some(self.median_ratio() >= min),
            Goal::Above => Some(self.median_ratio() > 1.0),
            Goal::Statements(max) => self.idem.statements.map(|s| s <= max),
            Goal::Reported => None,
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::AtLeast(min) => format!(">= {min}"),
            Goal::Above => "> 1".to_owned(),
            Goal::Statements(max) => format!("<= {max} stmt"),
            Goal::Reported => "reported".to_owned(),
        }
    }
}

fn side_line(row: &Row, side: &str, stats: &Stats, ratio: &str, verdict: &str) -> String {
    let per_second = stats.per_second() * row.per_op as f64;
    let statements = stats
        .statements
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
    format!(
        "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
        row.id,
        side,
        stats.ops,
        per_second,
        stats.mean_us(),
        stats.percentile_us(50.0),
        stats.percentile_us(99.0),
        statements,
        ratio,
        verdict,
    )
}

/// Prints one backend and mode's rows.
pub fn print_table(title: &str, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("| | side | ops | per s | mean µs | p50 µs | p99 µs | stmts/op | ratio (median / all) | target |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let unit = if row.per_op > 1 {
            format!(" (rows/s; op = {} rows)", row.per_op)
        } else {
            String::new()
        };
        println!("| **{}** | {}{} | | | | | | | | |", row.id, row.title, unit);
        println!("{}", side_line(row, "baseline", &row.base, "", ""));
        let verdict = match row.verdict() {
            Some(true) => format!("{} met", row.goal_text()),
            Some(false) => format!("{} **MISSED**", row.goal_text()),
            None => row.goal_text(),
        };
        println!(
            "{}",
            side_line(
                row,
                "idem",
                &row.idem,
                &format!("{:.3} / {:.3}", row.median_ratio(), row.ratio()),
                &verdict
            )
        );
    }
}

/// Prints the verdict on every target that can be missed.
pub fn print_summary(rows: &[Row]) {
    println!("\n## Targets\n");
    println!(
        "| backend | mode | scenario | ratio (median / all) | idem stmts/op | target | verdict |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let Some(met) = row.verdict() else { continue };
        let statements = row
            .idem
            .statements
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
        println!(
            "| {} | {} | {} {} | {:.3} / {:.3} | {} | {} | {} |",
            row.backend,
            row.mode,
            row.id,
            row.title,
            row.median_ratio(),
            row.ratio(),
            statements,
            row.goal_text(),
            if met { "met" } else { "**missed**" }
        );
    }
}
