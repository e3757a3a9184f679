//! The kit's small runner: each check runs alone (a panic or an error fails that check only,
//! with its message), says pass, fail or skip with a reason, its time and its figures, and the
//! whole run is written as `results.json` and `results.md`.

use serde_json::{json, Value};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One measured figure, with what it is compared against when anything.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// `(what, its value)`: the figure this one is a fraction of.
    pub(crate) against: Option<(String, f64)>,
    /// The fraction of `against` aimed for, e.g. 0.85.
    pub(crate) target: Option<f64>,
}

impl Metric {
    pub(crate) fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Metric {
        Metric {
            name: name.into(),
            value,
            unit,
            against: None,
            target: None,
        }
    }

    pub(crate) fn against(mut self, what: impl Into<String>, value: f64, target: f64) -> Metric {
        self.against = Some((what.into(), value));
        self.target = Some(target);
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.against
            .as_ref()
            .filter(|(_, v)| *v > 0.0)
            .map(|(_, v)| self.value / v)
    }
}

/// What a check that ran to its end says.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub(crate) skipped: bool,
    pub(crate) detail: String,
    pub(crate) metrics: Vec<Metric>,
}

impl Done {
    pub(crate) fn pass(detail: impl Into<String>) -> Done {
        Done {
            detail: detail.into(),
            ..Done::default()
        }
    }

    pub(crate) fn skip(reason: impl Into<String>) -> Done {
        Done {
            skipped: true,
            detail: reason.into(),
            ..Done::default()
        }
    }

    pub(crate) fn with(mut self, metrics: Vec<Metric>) -> Done {
        self.metrics = metrics;
        self
    }
}

/// A check's result: `Err` is a failure, with why.
pub(crate) type Outcome = Result<Done, String>;

struct Record {
    item: &'static str,
    name: String,
    status: Status,
    detail: String,
    seconds: f64,
    metrics: Vec<Metric>,
}

/// The last panic's message and place, taken by the hook so that a failed check can say it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Routes panic messages to the check that hit them instead of standard error's noise.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text = format!("panicked: {message}{place}");
        eprintln!("    {text}");
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }));
}

fn panic_text() -> String {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| "panicked".to_owned())
}

/// The run: its checks in order.
pub(crate) struct Kit {
    pub(crate) dry_run: bool,
    pub(crate) device: String,
    records: Vec<Record>,
    started: Instant,
}

impl Kit {
    pub(crate) fn new(dry_run: bool) -> Kit {
        Kit {
            dry_run,
            device: if dry_run {
                "cpu (dry run: the CPU backend, logical GPUs)".to_owned()
            } else {
                "unknown".to_owned()
            },
            records: Vec::new(),
            started: Instant::now(),
        }
    }

    fn record(&mut self, item: &'static str, name: &str, outcome: Outcome, seconds: f64) {
        let (status, detail, metrics) = match outcome {
            Ok(done) if done.skipped => (Status::Skip, done.detail, done.metrics),
            Ok(done) => (Status::Pass, done.detail, done.metrics),
            Err(why) => (Status::Fail, why, Vec::new()),
        };
        println!(
            "[{:>5.1} s] {item} {name}: {} ({seconds:.2} s) {}",
            self.started.elapsed().as_secs_f64(),
            status.word().to_uppercase(),
            detail.lines().next().unwrap_or("")
        );
        for metric in &metrics {
            println!("           {}", metric_line(metric));
        }
        self.records.push(Record {
            item,
            name: name.to_owned(),
            status,
            detail,
            seconds,
            metrics,
        });
    }

    /// Runs a check on this thread; a panic fails it.
    pub(crate) fn check(&mut self, item: &'static str, name: &str, f: impl FnOnce() -> Outcome) {
        println!("... {item} {name}");
        let start = Instant::now();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(panic_text()));
        self.record(item, name, outcome, start.elapsed().as_secs_f64());
    }

    /// Runs an async check within `limit`; a panic or the limit fails it.
    pub(crate) async fn check_async(
        &mut self,
        item: &'static str,
        name: &str,
        limit: Duration,
        f: impl Future<Output = Outcome>,
    ) {
        use futures::FutureExt;
        println!("... {item} {name}");
        let start = Instant::now();
        let outcome = match tokio::time::timeout(limit, AssertUnwindSafe(f).catch_unwind()).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(panic_text()),
            Err(_) => Err(format!("did not finish within {} s", limit.as_secs())),
        };
        self.record(item, name, outcome, start.elapsed().as_secs_f64());
    }

    /// Whether any check failed.
    pub(crate) fn failed(&self) -> bool {
        self.records.iter().any(|r| r.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.records.iter().filter(|r| r.status == status).count()
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let checks: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                json!({
                    "item": r.item,
                    "name": r.name,
                    "status": r.status.word(),
                    "detail": r.detail,
                    "seconds": r.seconds,
                    "metrics": r.metrics.iter().map(|m| json!({
                        "name": m.name,
                        "value": m.value,
                        "unit": m.unit,
                        "against": m.against.as_ref().map(|(what, v)| json!({"what": what, "value": v})),
                        "ratio": m.ratio(),
                        "target": m.target,
                        "target_met": m.ratio().zip(m.target).map(|(r, t)| r >= t),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let json = json!({
            "device": self.device,
            "dry_run": self.dry_run,
            "seconds": self.started.elapsed().as_secs_f64(),
            "summary": {
                "pass": self.count(Status::Pass),
                "fail": self.count(Status::Fail),
                "skip": self.count(Status::Skip),
            },
            "checks": checks,
        });
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )?;
        std::fs::write(dir.join("results.md"), self.markdown())
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "# Ember GPU kit\n\nDevice: {}{}. {} passed, {} failed, {} skipped in {:.1} s.\n\n",
            self.device,
            if self.dry_run {
                " (the figures below are CPU-backend figures, not a GPU's)"
            } else {
                ""
            },
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.started.elapsed().as_secs_f64()
        );
        md += "| item | check | result | time | detail |\n|---|---|---|---|---|\n";
        for r in &self.records {
            md += &format!(
                "| {} | {} | {} | {:.2} s | {} |\n",
                r.item,
                r.name,
                r.status.word(),
                r.seconds,
                cell(r.detail.lines().next().unwrap_or(""))
            );
        }
        let metrics: Vec<(&Record, &Metric)> = self
            .records
            .iter()
            .flat_map(|r| r.metrics.iter().map(move |m| (r, m)))
            .collect();
        if !metrics.is_empty() {
            md += "\n| check | figure | value | against | ratio | target |\n|---|---|---|---|---|---|\n";
            for (r, m) in metrics {
                let (against, ratio, target) = match (&m.against, m.ratio(), m.target) {
                    (Some((what, v)), Some(ratio), Some(target)) => (
                        format!("{what}: {} {}", fmt_value(*v), m.unit),
                        format!("{:.1}%", ratio * 100.0),
                        format!(
                            "{:.0}% {}",
                            target * 100.0,
                            if ratio >= target { "met" } else { "not met" }
                        ),
                    ),
                    _ => Default::default(),
                };
                md += &format!(
                    "| {} | {} | {} {} | {} | {} | {} |\n",
                    r.name,
                    cell(&m.name),
                    fmt_value(m.value),
                    m.unit,
                    cell(&against),
                    ratio,
                    target
                );
            }
        }
        let failures: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.status == Status::Fail && r.detail.lines().count() > 1)
            .collect();
        for r in failures {
            md += &format!("\n## {} failed\n\n```\n{}\n```\n", r.name, r.detail);
        }
        md
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn metric_line(m: &Metric) -> String {
    let mut line = format!("{}: {} {}", m.name, fmt_value(m.value), m.unit);
    if let (Some((what, _)), Some(ratio), Some(target)) = (&m.against, m.ratio(), m.target) {
        line += &format!(
            " = {:.1}% of {what} (target {:.0}%)",
            ratio * 100.0,
            target * 100.0
        );
    }
    line
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_or_panic_fails_only_its_check_and_both_files_are_written() {
        install_panic_hook();
        let mut kit = Kit::new(true);
        kit.check("x", "passes", || {
            Ok(Done::pass("fine").with(vec![
                Metric::new("speed", 90.0, "GB/s").against("copy", 100.0, 0.85)
            ]))
        });
        kit.check("x", "fails", || Err("wrong bits".to_owned()));
        kit.check("x", "panics", || panic!("boom"));
        kit.check("x", "skips", || Ok(Done::skip("no GPU")));
        assert!(kit.failed());
        let dir = tempfile::tempdir().unwrap();
        kit.write(dir.path()).unwrap();
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["summary"], json!({"pass": 1, "fail": 2, "skip": 1}));
        assert_eq!(json["checks"][0]["metrics"][0]["target_met"], json!(true));
        assert!(json["checks"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("panicked: boom"));
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.contains("| x | fails | fail |"), "{md}");
        assert!(md.contains("90.0% | 85% met"), "{md}");
    }
}
