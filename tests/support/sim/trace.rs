//! What happened, for a failure's report and for comparing two runs of one seed: the last
//! steps in full, and a hash of every step.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::Hasher;
use std::time::Duration;

/// How many steps a failure report shows.
const KEEP: usize = 50;
/// How much of one step's text a failure report shows.
const LINE: usize = 600;

/// The last steps, and a hash of all of them.
#[derive(Debug)]
pub(super) struct Trace {
    last: VecDeque<String>,
    hash: DefaultHasher,
    line: String,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            last: VecDeque::with_capacity(KEEP + 1),
            hash: DefaultHasher::new(),
            line: String::new(),
        }
    }
}

impl Trace {
    /// Starts the record of step `step` at `now` with what went in.
    pub(super) fn input(&mut self, step: u64, now: Duration, input: &dyn std::fmt::Debug) {
        self.finish();
        self.line.clear();
        let _ = write!(
            self.line,
            "#{step} t={:.6}s in  {input:?}",
            now.as_secs_f64()
        );
    }

    /// Adds one effect of the current step.
    pub(super) fn effect(&mut self, effect: &dyn std::fmt::Debug) {
        let _ = write!(self.line, "\n      out {effect:?}");
    }

    /// Adds a note of the simulation's own to the current step.
    pub(super) fn note(&mut self, note: &str) {
        let _ = write!(self.line, "\n      sim {note}");
    }

    fn finish(&mut self) {
        if self.line.is_empty() {
            return;
        }
        self.hash.write(self.line.as_bytes());
        let mut kept = String::with_capacity(self.line.len().min(LINE * 4));
        for l in self.line.lines() {
            if l.len() > LINE {
                let mut end = LINE;
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                kept.push_str(&l[..end]);
                kept.push_str(" …");
            } else {
                kept.push_str(l);
            }
            kept.push('\n');
        }
        if self.last.len() == KEEP {
            self.last.pop_front();
        }
        self.last.push_back(kept);
        self.line.clear();
    }

    /// The hash of every step so far.
    pub(super) fn hash(&mut self) -> u64 {
        self.finish();
        self.hash.finish()
    }

    /// The last steps, oldest first.
    pub(super) fn tail(&mut self) -> String {
        self.finish();
        self.last.iter().map(String::as_str).collect()
    }
}
