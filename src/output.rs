//! Output shared by every command: aligned tables for people, JSON for machines.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};

/// Version of every JSON document the commands print; bumped only on incompatible changes
/// (docs/status-json.md, docs/extension-servers-json.md).
pub const JSON_API_VERSION: &str = "certrotate.lokomotive.io/v1";

/// A table with left-aligned columns separated by three spaces, like kubectl's.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = String::new();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            line.clear();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON followed by a newline.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(|e| Error::Output(std::io::Error::from(e)))?;
    writeln!(out).map_err(Error::Output)
}

/// Asks before changing the cluster: `--yes` answers for the operator; a terminal asks; any
/// other stdin (a script, CI) refuses, so nothing changes by accident.
pub fn confirm(yes: bool, question: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::NotConfirmed);
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    stdin.read_line(&mut answer).map_err(Error::Output)?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Error::NotConfirmed),
    }
}

/// Live progress of concurrent tasks on stderr: one spinner line per task on a terminal,
/// plain timestamped lines otherwise (logs, CI).
pub struct Progress {
    names: Vec<String>,
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    plain: Mutex<()>,
}

impl Progress {
    pub fn new(names: Vec<String>) -> Self {
        let live = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bars = live.then(|| {
            let multi = MultiProgress::new();
            let style = ProgressStyle::with_template("{spinner} {prefix}: {wide_msg} {elapsed}")
                .expect("valid progress template");
            let bars = names
                .iter()
                .map(|name| {
                    let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                    bar.set_prefix(name.clone());
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar
                })
                .collect();
            (multi, bars)
        });
        Self { names, bars, plain: Mutex::new(()) }
    }

    pub fn update(&self, task: usize, message: &str) {
        match &self.bars {
            Some((_, bars)) => bars[task].set_message(message.to_string()),
            None => self.line(task, message),
        }
    }

    pub fn finish(&self, task: usize, ok: bool, message: &str) {
        let mark = if ok { "done" } else { "FAILED" };
        match &self.bars {
            Some((_, bars)) => bars[task].finish_with_message(format!("{mark}: {message}")),
            None => self.line(task, &format!("{mark}: {message}")),
        }
    }

    fn line(&self, task: usize, message: &str) {
        let _serialised = self.plain.lock();
        let now = jiff::Timestamp::now().strftime("%H:%M:%S");
        eprintln!("{now} {}: {message}", self.names[task]);
    }
}

/// A reader that closed the pipe (`| head`) chose to stop reading: not a failure, and the
/// command's own exit code still stands.
pub fn ignore_broken_pipe(written: Result<()>) -> Result<()> {
    match written {
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["kube-ca".into(), "OK".into()]);
        t.row(vec!["aggregation-client".into(), "EXPIRED".into()]);
        let mut buf = Vec::new();
        t.write(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "NAME                 STATUS\nkube-ca              OK\naggregation-client   EXPIRED\n"
        );
    }
}
