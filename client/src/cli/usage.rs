//! `ember usage`: the head's usage ledger as a table or one JSON object. `--since` reads a
//! duration ago, a date and time, or seconds since the Unix epoch; the head keeps ages, which
//! this turns into dates with this machine's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_core::proto::{NodeSplit, UsageAmounts, UsageGroups};

use crate::{UsageBy, UsageReport};

/// Where a window starts, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Since {
    /// This long before now.
    Ago(Duration),
    /// At this time.
    At(SystemTime),
}

impl Since {
    /// How long before `now` the window starts (nothing for a time still to come).
    pub(crate) fn ago(self, now: SystemTime) -> Duration {
        match self {
            Since::Ago(d) => d,
            Since::At(t) => now.duration_since(t).unwrap_or_default(),
        }
    }
}

/// Reads `--since`: a duration ago (`90s`, `30m`, `1h`, `2d`, `1h 30m`), a date and time in
/// UTC (`2025-01-31T12:00:00Z`, `2025-01-31 12:00:00`, `2025-01-31`), or whole seconds since
/// the Unix epoch (`1738324800`).
pub(crate) fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| format!("`{s}` is too large"))?;
        return Ok(Since::At(UNIX_EPOCH + Duration::from_secs(secs)));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Since::Ago(d));
    }
    let date_time = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(&date_time)
        .map(Since::At)
        .map_err(|_| {
            format!(
                "`{s}` is not a time: write a duration ago (30m, 1h, 2d), a UTC date and time \
                 (2025-01-31T12:00:00Z) or seconds since the Unix epoch"
            )
        })
}

/// What `ember usage` prints, with `answered` the time the head's answer came.
pub(crate) fn print(report: &UsageReport, by: Option<UsageBy>, json: bool, answered: SystemTime) {
    let answered_unix_ms = answered
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if json {
        let mut value = match by {
            Some(by) => serde_json::to_value(report.groups(by)),
            None => serde_json::to_value(report),
        }
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        value["answered_unix_ms"] = answered_unix_ms.into();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_else(|e| e.to_string())
        );
        return;
    }
    let at = |ms_ago: u64| date(answered, ms_ago);
    println!(
        "USAGE from {} to {} ({}); this head life began {}",
        at(report.window_ms),
        at(0),
        seconds(report.window_ms as f64 / 1e3),
        at(report.head_started_ms_ago)
    );
    match by {
        Some(by) => print_groups(&report.groups(by)),
        None => print_records(report, at),
    }
    for why in &report.partial {
        println!("note: {why}");
    }
}

/// The records one by one, the summaries, the nodes, and the total.
fn print_records(report: &UsageReport, at: impl Fn(u64) -> String) {
    println!("RECORDS ({})", report.records.len());
    if !report.records.is_empty() {
        println!(
            "  {:<6} {:<14} {:<20} {:<14} {:<9} {:<14} {:<6} {:>5} {:<20} {:<20} {}",
            "KIND",
            "ID",
            "NAME",
            "JOB",
            "NODE",
            "TYPE",
            "GPU",
            "GPUS",
            "STARTED",
            "ENDED",
            AMOUNTS_HEADER
        );
    }
    for r in &report.records {
        let id = match r.incarnation {
            Some(i) => format!("{}#{i}", r.id),
            None => r.id.clone(),
        };
        println!(
            "  {:<6} {:<14} {:<20} {:<14} {:<9} {:<14} {:<6} {:>5} {:<20} {:<20} {}",
            r.kind,
            id,
            clip(&r.name, 20),
            clip(&r.job, 14),
            r.node,
            clip(&r.node_type, 14),
            r.gpu_model.as_deref().unwrap_or("-"),
            r.gpus,
            at(r.started_ms_ago),
            r.ended_ms_ago.map_or_else(|| "running".to_string(), &at),
            amounts(&r.usage)
        );
    }
    if !report.earlier.is_empty() {
        println!("EARLIER RECORDS, SUMMED ({})", report.earlier.len());
        for e in &report.earlier {
            println!(
                "  {} records of {} on {} ({})  {}",
                e.records,
                e.job,
                e.node,
                e.node_type,
                amounts(&e.usage)
            );
        }
    }
    println!("NODES ({})", report.nodes.len());
    if !report.nodes.is_empty() {
        println!(
            "  {:<9} {:<14} {:<6} {:<5} {}",
            "NODE", "TYPE", "GPU", "SPOT", SPLIT_HEADER
        );
    }
    for n in &report.nodes {
        println!(
            "  {:<9} {:<14} {:<6} {:<5} {}",
            n.node,
            clip(&n.node_type, 14),
            n.gpu_model.as_deref().unwrap_or("-"),
            if n.spot { "yes" } else { "no" },
            split(&n.split)
        );
    }
    for e in &report.earlier_nodes {
        println!(
            "  {} earlier nodes of {}, summed: {}",
            e.nodes,
            e.node_type,
            split(&e.split)
        );
    }
    println!("TOTAL {}", amounts(&report.total()));
}

/// The totals by job, type or node.
fn print_groups(groups: &UsageGroups) {
    let by = match groups.by {
        UsageBy::Job => "JOB",
        UsageBy::Type => "TYPE",
        UsageBy::Node => "NODE",
    };
    let with_time = groups.by != UsageBy::Job;
    println!(
        "  {:<20} {:>7} {}{}",
        by,
        "RECORDS",
        AMOUNTS_HEADER,
        if with_time {
            format!("  {SPLIT_HEADER}")
        } else {
            String::new()
        }
    );
    for g in &groups.groups {
        let time = g
            .node_time
            .map(|t| format!("  {}", split(&t)))
            .unwrap_or_default();
        println!(
            "  {:<20} {:>7} {}{time}",
            clip(&g.key, 20),
            g.records,
            amounts(&g.usage)
        );
    }
}

const AMOUNTS_HEADER: &str = "  GPU-SHARE-S  GPU-MEM-GIB-S        CPU-S        COST";

fn amounts(a: &UsageAmounts) -> String {
    format!(
        "{:>13.2}  {:>13.2} {:>12.2} {:>11.6}",
        a.gpu_share_seconds, a.gpu_memory_gib_seconds, a.cpu_seconds, a.cost
    )
}

const SPLIT_HEADER: &str =
    "     LIFE   ALLOCATED        IDLE        WARM  ALLOC-COST   IDLE-COST   WARM-COST";

fn split(s: &NodeSplit) -> String {
    let secs = |ns: u64| seconds(ns as f64 / 1e9);
    format!(
        "{:>9} {:>11} {:>11} {:>11} {:>11.6} {:>11.6} {:>11.6}",
        secs(s.life_ns),
        secs(s.allocated_ns),
        secs(s.idle_ns),
        secs(s.warm_ns),
        s.allocated_cost,
        s.idle_cost,
        s.warm_cost
    )
}

/// Seconds for humans: `12.3s`, `4m05s`, `2h03m`.
fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, s as u64 % 60)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, s as u64 % 3600 / 60)
    }
}

/// The UTC date and time `ms_ago` before `answered`.
fn date(answered: SystemTime, ms_ago: u64) -> String {
    let t = answered
        .checked_sub(Duration::from_millis(ms_ago))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `s` cut to `width` characters, marked with `…` when cut.
fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_dates_and_epoch_seconds() {
        assert_eq!(parse_since("1h"), Ok(Since::Ago(Duration::from_secs(3600))));
        assert_eq!(parse_since("90s"), Ok(Since::Ago(Duration::from_secs(90))));
        assert_eq!(
            parse_since("1h 30m"),
            Ok(Since::Ago(Duration::from_secs(5400)))
        );
        let jan31 = UNIX_EPOCH + Duration::from_secs(1_738_324_800);
        assert_eq!(parse_since("1738324800"), Ok(Since::At(jan31)));
        assert_eq!(parse_since("2025-01-31T12:00:00Z"), Ok(Since::At(jan31)));
        assert_eq!(parse_since("2025-01-31 12:00:00"), Ok(Since::At(jan31)));
        assert_eq!(
            parse_since("2025-01-31"),
            Ok(Since::At(jan31 - Duration::from_secs(12 * 3600)))
        );
        assert!(parse_since("yesterday").is_err());
        let now = jan31 + Duration::from_secs(60);
        assert_eq!(Since::At(jan31).ago(now), Duration::from_secs(60));
        assert_eq!(
            Since::At(now + Duration::from_secs(5)).ago(now),
            Duration::ZERO
        );
    }

    #[test]
    fn dates_and_lengths_read_for_humans() {
        let jan31 = UNIX_EPOCH + Duration::from_secs(1_738_324_800);
        assert_eq!(date(jan31, 60_000), "2025-01-31T11:59:00Z");
        assert_eq!(seconds(12.34), "12.3s");
        assert_eq!(seconds(245.0), "4m05s");
        assert_eq!(seconds(7380.0), "2h03m");
        assert_eq!(clip("python train.py --epochs 3", 10), "python tr…");
    }
}
