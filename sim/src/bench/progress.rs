//! Progress output on stderr while the benchmark loads and waits: a bar redrawn in place on a
//! terminal, or a plain line every few seconds when stderr is a file or a pipe (CI logs).
//! Quiet mode prints nothing (tests).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a non-terminal gets a line.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How often a terminal bar is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

/// Where benchmark messages go.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    quiet: bool,
    terminal: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        Reporter {
            quiet,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// A step of the run (one line).
    pub fn step(&self, message: &str) {
        if !self.quiet {
            eprintln!("== {message}");
        }
        tracing::info!(message, "bench step");
    }

    /// A detail line.
    pub fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("   {message}");
        }
        tracing::debug!(message, "bench note");
    }

    pub fn bar(&self, label: &str, total: u64, unit: &str) -> Bar {
        Bar {
            label: label.to_string(),
            unit: unit.to_string(),
            total,
            start: Instant::now(),
            last_draw: None,
            quiet: self.quiet,
            terminal: self.terminal,
            drawn: false,
        }
    }
}

/// One progress bar (see the module doc).
#[derive(Debug)]
pub struct Bar {
    label: String,
    unit: String,
    total: u64,
    start: Instant,
    last_draw: Option<Instant>,
    quiet: bool,
    terminal: bool,
    drawn: bool,
}

/// The text of a bar (pure, for tests and both output styles).
pub fn render_bar(label: &str, done: u64, total: u64, unit: &str, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let secs = elapsed.as_secs_f64();
    // A rate over a few milliseconds means nothing.
    let rate = if secs >= 0.1 {
        format!("{:.0}", done as f64 / secs)
    } else {
        "-".into()
    };
    format!(
        "   {label:<28} [{}{}] {:>5.1}% {done}/{total} {unit} {secs:>6.1}s {rate} {unit}/s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
    )
}

impl Bar {
    pub fn set(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let every = if self.terminal {
            REDRAW_EVERY
        } else {
            LINE_EVERY
        };
        if self.last_draw.is_some_and(|t| now - t < every) {
            return;
        }
        self.last_draw = Some(now);
        let text = render_bar(
            &self.label,
            done,
            self.total,
            &self.unit,
            self.start.elapsed(),
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{text}\x1b[K");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
        self.drawn = true;
    }

    /// Draws the final state and ends the line.
    pub fn finish(mut self, done: u64) {
        if self.quiet {
            return;
        }
        self.last_draw = None;
        self.set(done);
        if self.terminal {
            eprintln!();
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_text_shows_fraction_counts_and_rate() {
        let text = render_bar("loading", 500, 1000, "rows", Duration::from_secs(2));
        assert!(text.contains("[###############...............]"), "{text}");
        assert!(text.contains(" 50.0% 500/1000 rows"), "{text}");
        assert!(text.contains("250 rows/s"), "{text}");
        let full = render_bar("x", 5, 0, "rows", Duration::ZERO);
        assert!(
            full.contains("100.0%") && full.contains(" - rows/s"),
            "{full}"
        );
        let over = render_bar("x", 20, 10, "rows", Duration::from_secs(1));
        assert!(over.contains("100.0%"), "{over}");
    }
}
