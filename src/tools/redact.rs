//! Redaction of what child programs print, before it is shown, logged or journaled.
//!
//! Terraform 0.13 (what Lokomotive pins) prints a `local_file`'s old content in its plan diff,
//! so `apply -target local_file.aggregation-ca-key[0]` shows a CA private key; `terraform show
//! -json` and `TF_LOG` traces print keys as PEM inside JSON strings, several to a line;
//! `helm --debug` and `helm get values` print them base64-encoded, glued to a name, wrapped
//! at 64 or 76 columns, or twice encoded (a kubeconfig whose `client-key-data` is base64,
//! itself in base64). Two rules cover all of them:
//!
//! - a PEM private-key block is hidden from its BEGIN marker to its END marker, over lines or
//!   within one (a JSON string's `\n` escapes count as line breaks);
//! - a base64 run, on one line or wrapped over several, is hidden when it decodes (standard or
//!   URL-safe alphabet, whatever is glued in front of it, up to three layers deep) to text that
//!   holds such a block, or to the DER of a private key.
//!
//! So what is hidden is decided by decoding, not by names: certificates, public keys and
//! ordinary text pass. Output arrives in reads of any size; a line is looked at once it is
//! complete, and the lines of a base64 run that may go on on the next line are held back
//! until it ends.

use std::collections::VecDeque;
use std::ops::Range;

pub const REDACTED: &str = "[REDACTED PRIVATE KEY]";
/// Shorter base64 runs are not decoded: they cannot hold a PEM header, let alone a key.
const MIN_RUN: usize = 40;
/// Layers of base64 looked through (a kubeconfig's key data inside base64 is two).
const DECODINGS: u8 = 3;
const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";
/// The longest PEM label looked at (`ENCRYPTED PRIVATE KEY` and the like are far shorter).
const MAX_LABEL: usize = 80;

/// Redacts one output stream (a child's stdout, or its stderr).
#[derive(Debug)]
pub struct Redactor {
    /// Layers of base64 still to look through.
    depth: u8,
    /// The bytes of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    /// Complete lines not shown yet: an open base64 run's lines and the current one.
    held: VecDeque<Line>,
    /// The number of the line at the front of `held`.
    first_held: u64,
    in_pem: bool,
    run: Option<WrappedRun>,
    /// Whether anything was hidden.
    found: bool,
}

#[derive(Debug)]
struct Line {
    text: String,
    hide: Vec<Range<usize>>,
}

/// A base64 run that ended a line and may go on on the next ones.
#[derive(Debug)]
struct WrappedRun {
    /// Each piece: the line's number and where in it.
    pieces: Vec<(u64, Range<usize>)>,
    joined: String,
    /// The length of the pieces after the first (all but the last are as long).
    width: Option<usize>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::looking_through(DECODINGS)
    }
}

impl Redactor {
    fn looking_through(depth: u8) -> Self {
        Self {
            depth,
            partial: Vec::new(),
            held: VecDeque::new(),
            first_held: 0,
            in_pem: false,
            run: None,
            found: false,
        }
    }

    /// Takes the next bytes the child wrote; returns the lines that may now be shown,
    /// redacted, without their newlines.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut shown = Vec::new();
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..newline]);
            bytes = &bytes[newline + 1..];
            let line = std::mem::take(&mut self.partial);
            self.line(line, &mut shown);
        }
        self.partial.extend_from_slice(bytes);
        shown
    }

    /// The end of the stream: every line still held, redacted.
    pub fn finish(&mut self) -> Vec<String> {
        let mut shown = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(line, &mut shown);
        }
        self.close_run();
        self.release(&mut shown);
        shown
    }

    fn line(&mut self, bytes: Vec<u8>, shown: &mut Vec<String>) {
        let mut text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if text.ends_with('\r') {
            text.pop();
        }
        let number = self.first_held + self.held.len() as u64;
        // Held with an empty text while it is read, so `hide` can reach it like held lines.
        self.held.push_back(Line { text: String::new(), hide: Vec::new() });
        for piece in pieces(&text) {
            self.piece(number, &text, piece);
        }
        self.held.back_mut().expect("the line just pushed").text = text;
        self.release(shown);
    }

    /// Shows every held line that no open run still needs.
    fn release(&mut self, shown: &mut Vec<String>) {
        let needed_from = self.run.as_ref().map_or(u64::MAX, |run| run.pieces[0].0);
        while self.first_held < needed_from {
            let Some(line) = self.held.pop_front() else { break };
            self.first_held += 1;
            shown.push(line.shown());
        }
    }

    fn hide(&mut self, number: u64, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.found = true;
        let index = usize::try_from(number - self.first_held).expect("a held line");
        self.held[index].hide.push(range);
    }

    /// One piece of a line (the whole line, or a part between `\n` escapes).
    fn piece(&mut self, number: u64, text: &str, piece: Range<usize>) {
        let mut at = piece.start;
        if self.in_pem {
            let rest = &text[at..piece.end];
            let indent = rest.len() - rest.trim_start().len();
            match pem_end(rest.as_bytes()) {
                Some(end) => {
                    self.hide(number, at + indent..at + end);
                    self.in_pem = false;
                    at += end;
                }
                None => return self.hide(number, at + indent..piece.end),
            }
        }
        if let Some(run) = &mut self.run {
            match continuation(text, at..piece.end, run.width) {
                Some((range, more)) => {
                    run.joined.push_str(&text[range.clone()]);
                    run.pieces.push((number, range.clone()));
                    if more {
                        run.width.get_or_insert(range.len());
                        return;
                    }
                    self.close_run();
                    at = range.end;
                }
                None => self.close_run(),
            }
        }
        self.scan(number, text, at..piece.end);
    }

    /// PEM private-key blocks and base64 runs in `span` of a piece that continues nothing.
    fn scan(&mut self, number: u64, text: &str, span: Range<usize>) {
        let mut at = span.start;
        while at < span.end {
            let begin = private_begin(&text.as_bytes()[at..span.end]).map(|i| at + i);
            self.runs(number, text, at..begin.unwrap_or(span.end), begin.is_none());
            let Some(begin) = begin else { return };
            match pem_end(&text.as_bytes()[begin..span.end]) {
                Some(end) => {
                    self.hide(number, begin..begin + end);
                    at = begin + end;
                }
                None => {
                    self.hide(number, begin..span.end);
                    self.in_pem = true;
                    return;
                }
            }
        }
    }

    /// Hides the base64 runs of `span` that hold a key; a long run that ends the piece opens a
    /// wrapped run, which the next lines may continue.
    fn runs(&mut self, number: u64, text: &str, span: Range<usize>, ends_piece: bool) {
        let mut last = None;
        for run in base64_runs(text.as_bytes(), span.clone()) {
            if holds_key(&text.as_bytes()[run.clone()], self.depth) {
                self.hide(number, run.clone());
            }
            last = Some(run);
        }
        if let Some(run) = last
            && ends_piece
            && run.len() >= MIN_RUN
            && text[run.end..span.end].trim().is_empty()
            && !text[..run.end].ends_with('=')
        {
            let joined = text[run.clone()].to_string();
            self.run = Some(WrappedRun { pieces: vec![(number, run)], joined, width: None });
        }
    }

    /// Decides an open wrapped run: its pieces together may hold a key that no piece alone
    /// shows (only the first line of base64 wrapped at 76 columns holds the PEM header).
    fn close_run(&mut self) {
        let Some(run) = self.run.take() else { return };
        if run.pieces.len() > 1 && holds_key(run.joined.as_bytes(), self.depth) {
            for (number, range) in run.pieces {
                self.hide(number, range);
            }
        }
    }
}

impl Line {
    fn shown(self) -> String {
        if self.hide.is_empty() {
            return self.text;
        }
        let mut hide = self.hide;
        hide.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        let mut spans = hide.into_iter().peekable();
        while let Some(mut span) = spans.next() {
            // One marker for what only line breaks separate (a PEM block in a JSON string).
            while let Some(next) =
                spans.next_if(|n| n.start <= span.end || only_breaks(&self.text[span.end..n.start]))
            {
                span.end = span.end.max(next.end);
            }
            out.push_str(&self.text[at..span.start.max(at)]);
            out.push_str(REDACTED);
            at = at.max(span.end);
        }
        out.push_str(&self.text[at..]);
        out
    }
}

/// The pieces of a line between `\n` or `\r` escapes (any number of backslashes: JSON inside
/// JSON doubles them), so a PEM block or wrapped base64 inside a JSON string reads as lines.
fn pieces(text: &str) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && b[j] == b'\\' {
            j += 1;
        }
        if j < b.len() && matches!(b[j], b'n' | b'r') {
            pieces.push(start..i);
            start = j + 1;
        }
        i = j + 1;
    }
    pieces.push(start..b.len());
    pieces
}

fn only_breaks(gap: &str) -> bool {
    pieces(gap).iter().all(|p| gap[p.clone()].trim().is_empty())
}

/// How a piece continues an open wrapped run, if it does: the run it starts with, and whether
/// the run may go on after it (a full-width piece, alone on its line, without padding).
fn continuation(
    text: &str,
    span: Range<usize>,
    width: Option<usize>,
) -> Option<(Range<usize>, bool)> {
    let piece = &text[span.clone()];
    let start = span.start + (piece.len() - piece.trim_start().len());
    let run = base64_runs(text.as_bytes(), start..span.end).next().filter(|r| r.start == start)?;
    let after = &text[run.end..span.end];
    // What may close a quoted or listed value after its last piece.
    if !after.chars().all(|c| c.is_whitespace() || "\"',;)]}".contains(c)) {
        return None;
    }
    if width.is_some_and(|w| run.len() > w) {
        return None;
    }
    let more = after.trim().is_empty()
        && !text[..run.end].ends_with('=')
        && width.is_none_or(|w| run.len() == w);
    Some((run, more))
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Maximal runs of base64 characters (both alphabets) with their padding: `name=LS0t…` is
/// two runs, `name=` and the value.
fn base64_runs(b: &[u8], span: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut i = span.start;
    std::iter::from_fn(move || {
        while i < span.end && !is_base64(b[i]) {
            i += 1;
        }
        if i >= span.end {
            return None;
        }
        let start = i;
        while i < span.end && is_base64(b[i]) {
            i += 1;
        }
        let mut padding = 0;
        while i < span.end && padding < 2 && b[i] == b'=' {
            i += 1;
            padding += 1;
        }
        Some(start..i)
    })
}

/// Whether a base64 run decodes to a private key (a PEM block, the DER of one, or base64 of
/// either, `depth` layers down). Whatever is glued in front shifts the 4-character groups,
/// so all four alignments are decoded.
fn holds_key(run: &[u8], depth: u8) -> bool {
    if depth == 0 || run.len() < MIN_RUN {
        return false;
    }
    (0..4).any(|skip| {
        let bytes = decode(&run[skip..]);
        is_private_key_der(&bytes) || {
            let mut inner = Redactor::looking_through(depth - 1);
            inner.feed(&bytes);
            inner.finish();
            inner.found
        }
    })
}

/// Decodes base64 in either alphabet up to the first character that is not one (padding
/// included); a last partial group gives what bytes it can.
fn decode(chars: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chars.len() / 4 * 3 + 2);
    let (mut acc, mut n) = (0u32, 0);
    for &c in chars {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => break,
        };
        acc = acc << 6 | u32::from(value);
        n += 1;
        if n == 4 {
            out.extend_from_slice(&acc.to_be_bytes()[1..]);
            (acc, n) = (0, 0);
        }
    }
    match n {
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&((acc >> 2) as u16).to_be_bytes()),
        _ => {}
    }
    out
}

/// The DER of a private key: a SEQUENCE whose first element is the version INTEGER 0 or 1,
/// followed by an INTEGER (PKCS#1 RSA), a SEQUENCE (PKCS#8) or an OCTET STRING (SEC1 EC).
/// Certificates, public keys and requests start with a SEQUENCE instead.
fn is_private_key_der(der: &[u8]) -> bool {
    let body = match der {
        [0x30, 0x81, _, body @ ..] | [0x30, 0x82, _, _, body @ ..] => body,
        [0x30, len, body @ ..] if *len < 0x80 => body,
        _ => return false,
    };
    matches!(body, [0x02, 0x01, 0x00 | 0x01, 0x02 | 0x30 | 0x04, ..])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The PEM label after a marker, up to its closing dashes.
fn label(after_marker: &[u8]) -> Option<&[u8]> {
    let near = &after_marker[..after_marker.len().min(MAX_LABEL)];
    find(near, b"-----").map(|end| &near[..end])
}

/// Where the first `-----BEGIN … PRIVATE KEY-----` marker starts.
fn private_begin(text: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = find(&text[from..], BEGIN) {
        let at = from + i;
        if label(&text[at + BEGIN.len()..]).is_some_and(|l| l.ends_with(b"PRIVATE KEY")) {
            return Some(at);
        }
        from = at + BEGIN.len();
    }
    None
}

/// Where the first END marker ends (its closing dashes included; the whole text when they
/// are missing).
fn pem_end(text: &[u8]) -> Option<usize> {
    let at = find(text, END)? + END.len();
    Some(label(&text[at..]).map_or(text.len(), |l| at + l.len() + "-----".len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbody1234567890abcdef\nQWERTYsecretline2\n-----END RSA PRIVATE KEY-----\n";

    fn redact(text: &str) -> String {
        let mut redactor = Redactor::default();
        let mut lines = redactor.feed(text.as_bytes());
        lines.extend(redactor.finish());
        lines.into_iter().map(|l| l + "\n").collect()
    }

    #[test]
    fn pem_blocks_in_a_terraform_plan_diff_are_redacted() {
        let plan = format!(
            "  # local_file.aggregation-ca-key[0] must be replaced\n      - content = <<~EOT\n{}      EOT -> null\n  id = \"abc\"\n",
            KEY.lines().map(|l| format!("          {l}\n")).collect::<String>()
        );
        let out = redact(&plan);
        assert!(!out.contains("secretbody") && !out.contains("secretline2"), "{out}");
        assert!(out.contains("must be replaced") && out.contains("EOT -> null"), "{out}");
        assert!(out.contains("          [REDACTED PRIVATE KEY]\n"), "indentation kept: {out}");
        assert!(out.contains("id = \"abc\""), "{out}");
    }

    #[test]
    fn one_line_json_blocks_are_one_marker_and_the_rest_kept() {
        let line = format!("{{\"private_key_pem\":{KEY:?},\"id\":\"1\",\"other\":{KEY:?}}}");
        let out = redact(&line);
        assert_eq!(
            out,
            "{\"private_key_pem\":\"[REDACTED PRIVATE KEY]\\n\",\"id\":\"1\",\
             \"other\":\"[REDACTED PRIVATE KEY]\\n\"}\n"
        );
    }

    #[test]
    fn base64_encoded_keys_are_redacted_certificates_kept() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        let cert = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let out = redact(&format!("aggregationClientKey={b64}\ncaCert: {cert}\n"));
        assert_eq!(out, format!("aggregationClientKey={REDACTED}\ncaCert: {cert}\n"));
    }

    #[test]
    fn wrapped_base64_is_decided_whole_and_held_until_it_ends() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY.repeat(3));
        let lines: Vec<&str> =
            b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let (last, first) = lines.split_last().unwrap();
        let mut redactor = Redactor::default();
        assert_eq!(redactor.feed(b"before\n"), ["before"]);
        for line in first {
            assert!(redactor.feed(format!("{line}\n").as_bytes()).is_empty(), "held");
        }
        let shown = redactor.feed(format!("{last}\nafter\n").as_bytes());
        assert_eq!(shown.len(), lines.len() + 1, "{shown:?}");
        assert!(shown[..lines.len()].iter().all(|l| l == REDACTED), "{shown:?}");
        assert_eq!(shown[lines.len()], "after");
    }

    #[test]
    fn public_keys_and_plain_text_pass_and_are_not_held() {
        let text =
            "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----\nApply complete!\n";
        let mut redactor = Redactor::default();
        assert_eq!(redactor.feed(text.as_bytes()), text.lines().collect::<Vec<_>>());
        assert!(redactor.finish().is_empty());
    }

    #[test]
    fn private_key_der_is_told_from_certificates_and_public_keys() {
        let rsa_pkcs1 = [0x30, 0x82, 0x04, 0xa4, 0x02, 0x01, 0x00, 0x02, 0x82];
        let ec_sec1 = [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
        let pkcs8 = [0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13];
        let certificate = [0x30, 0x82, 0x03, 0x0a, 0x30, 0x82, 0x01, 0xf2];
        let public_key = [0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09];
        for der in [&rsa_pkcs1[..], &ec_sec1, &pkcs8] {
            assert!(is_private_key_der(der), "{der:02x?}");
        }
        for der in [&certificate[..], &public_key] {
            assert!(!is_private_key_der(der), "{der:02x?}");
        }
    }
}
