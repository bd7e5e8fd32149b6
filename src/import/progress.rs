//! Progress of an import for a person (an indicatif bar on stderr: keys, bytes, keys/s, ETA,
//! lag) or for a script (`--json`: one JSON object per line on stdout, at most once a second,
//! and one when a phase ends).
//!
//! A line that cannot be written (stdout closed: the script reading `--json` went away, EPIPE)
//! is an error the import stops with, named as such, not a panic.

use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

const JSON_EVERY: Duration = Duration::from_secs(1);

/// What a phase's bar fills up to (and its ETA is computed from).
#[derive(Clone, Copy)]
pub enum Total {
    /// Bytes of input (RDB files).
    Bytes(u64),
    /// Keys (a live source's DBSIZE when the pass began).
    Keys(u64),
}

pub struct Progress {
    phase: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_json: Option<Instant>,
    total: Option<Total>,
}

impl Progress {
    /// A phase measured against `total` when known (bar and ETA), else a spinner.
    pub fn new(phase: &'static str, total: Option<Total>, json: bool) -> Progress {
        let bar = (!json).then(|| {
            let (len, template) = match total {
                Some(Total::Bytes(n)) => (Some(n), "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}"),
                Some(Total::Keys(n)) => (Some(n), "{prefix} [{bar:30}] {pos}/{len} keys {msg} ETA {eta}"),
                None => (None, "{prefix} {spinner} {msg} {elapsed}"),
            };
            let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
            bar.set_prefix(phase);
            bar
        });
        Progress { phase, bar, started: Instant::now(), last_json: None, total }
    }

    /// Reports `keys` done and `bytes` of the input consumed; `extra` names further counters
    /// (`expired_skipped`, `lag_keys`, …).
    pub fn update(&mut self, keys: u64, bytes: u64, extra: &[(&str, u64)]) -> anyhow::Result<()> {
        let rate = keys as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        if let Some(bar) = &self.bar {
            bar.set_position(if matches!(self.total, Some(Total::Keys(_))) { keys } else { bytes });
            let extra: String = extra.iter().map(|(k, v)| format!(" {k} {v}")).collect();
            let mib = bytes as f64 / 1048576.0;
            bar.set_message(format!("{keys} keys {mib:.1} MiB {rate:.0} keys/s{extra}"));
        } else if self.last_json.is_none_or(|at| at.elapsed() >= JSON_EVERY) {
            self.last_json = Some(Instant::now());
            print_line(self.line(keys, bytes, rate, extra, false))?;
        }
        Ok(())
    }

    /// Ends the phase, with its final counts.
    pub fn finish(&mut self, keys: u64, bytes: u64, extra: &[(&str, u64)]) -> anyhow::Result<()> {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = keys as f64 / elapsed;
        match self.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                let extra: String = extra.iter().map(|(k, v)| format!(", {k} {v}")).collect();
                // For a person on a terminal: a closed stderr loses the summary, not the import.
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: {keys} keys, {:.1} MiB in {elapsed:.1} s ({rate:.0} keys/s, {:.1} MiB/s){extra}",
                    self.phase,
                    bytes as f64 / 1048576.0,
                    bytes as f64 / 1048576.0 / elapsed
                );
                Ok(())
            }
            None => print_line(self.line(keys, bytes, rate, extra, true)),
        }
    }

    fn line(&self, keys: u64, bytes: u64, rate: f64, extra: &[(&str, u64)], done: bool) -> Value {
        let mut line = json!({
            "phase": self.phase,
            "done": done,
            "keys": keys,
            "bytes": bytes,
            "total_bytes": match self.total { Some(Total::Bytes(n)) => Some(n), _ => None },
            "total_keys": match self.total { Some(Total::Keys(n)) => Some(n), _ => None },
            "keys_per_s": rate.round(),
            "elapsed_s": self.started.elapsed().as_secs_f64(),
        });
        for (k, v) in extra {
            line[*k] = json!(v);
        }
        line
    }
}

/// Writes `line` and a newline to stdout. Unlike `println!`, which panics when stdout is gone
/// (EPIPE once the reading process exited; Rust ignores SIGPIPE), this returns an error that
/// says so, for the command to stop with.
pub fn print_line(line: impl Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::anyhow!("stdout was closed (the process reading this command's output exited): stopping")
        } else {
            anyhow::anyhow!("cannot write to stdout: {e}")
        }
    })
}
