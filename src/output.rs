//! Output shared by every command: aligned tables for people, JSON for machines.

use std::io::Write;

use serde::Serialize;

use crate::error::{Error, Result};

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
