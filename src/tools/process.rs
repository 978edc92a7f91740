//! The one subprocess wrapper (on duct) behind terraform, helm and lokoctl.
//!
//! No shell: arguments are a list. stdout and stderr are captured apart, each redacted as it
//! arrives and, at `-v`, streamed; only stdout is ever parsed. Each child leads its own
//! process group, so a timeout or Ctrl-C stops the whole group (lokoctl's own terraform and
//! helm included), and it gets SIGINT as its death signal, so a `kill -9` of this tool does
//! not leave a terraform apply or helm upgrade racing the re-run, yet terraform still gets to
//! write its state before it exits. Every child carries the rotation run in its environment,
//! so a re-run can find and stop what an earlier, killed run left behind (grandchildren have
//! no death signal).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::redact::Redactor;
use crate::error::{Error, Result};

/// The variable every child carries: which rotation run started it.
pub const RUN_ENV: &str = "KUBECTL_CERTROTATE_RUN";
/// How many lines of a failed command's output an error shows.
const ERROR_TAIL_LINES: usize = 25;
/// How long a stopped child group gets between SIGINT/SIGTERM and SIGKILL: terraform uses it
/// to finish the resource in hand and write its state.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Process groups running now: Ctrl-C stops them all.
static RUNNING: Mutex<BTreeMap<i32, String>> = Mutex::new(BTreeMap::new());

/// An external program, found once before anything changes.
#[derive(Debug, Clone)]
pub struct Program {
    pub name: &'static str,
    pub path: PathBuf,
}

impl Program {
    /// `flag` (`--helm PATH`), else `$ENV_VAR`, else `name` on `PATH`.
    pub fn find(
        name: &'static str,
        flag: Option<&Path>,
        env_var: &'static str,
        flag_name: &'static str,
    ) -> Result<Self> {
        let missing = |tried: String| Error::ProgramMissing {
            program: name,
            tried,
            hint: format!("pass {flag_name} PATH or set ${env_var}"),
        };
        let given = flag.map(|p| (p.to_path_buf(), flag_name.to_string())).or_else(|| {
            std::env::var_os(env_var)
                .filter(|v| !v.is_empty())
                .map(|v| (v.into(), format!("${env_var}")))
        });
        match given {
            Some((path, source)) => {
                let found = which::which(&path).map_err(|_| {
                    missing(format!("{} (from {source}) is not an executable", path.display()))
                })?;
                Ok(Self { name, path: found })
            }
            None => which::which(name)
                .map(|path| Self { name, path })
                .map_err(|_| missing(format!("no {name} on PATH"))),
        }
    }
}

impl Program {
    /// A program a dry run could not find, shown by its name in the plan (never run).
    pub fn unresolved(name: &'static str) -> Self {
        Self { name, path: name.into() }
    }
}

/// One command line to run.
#[derive(Debug, Clone)]
pub struct Command {
    program: Program,
    args: Vec<String>,
    dir: Option<PathBuf>,
    env: Vec<(String, OsString)>,
    /// Variables of this tool's environment the child must not inherit.
    unset: Vec<OsString>,
    timeout: Duration,
    echo: bool,
    keep_unredacted: bool,
    /// Arguments shown as a placeholder (by index): files that exist only while a run does
    /// (values, kubeconfig), whose path a plan cannot know and a reader needs not see.
    shown: Vec<(usize, String)>,
    /// Set: the command is recorded there instead of run ([`Recorder`]).
    recorder: Option<Recorder>,
}

/// What a command run through a recording [`super::Runner`] left: the argv as a plan shows
/// it (placeholders in), and the folder. The engine's tests use it instead of a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub argv: Vec<String>,
    pub dir: Option<PathBuf>,
    pub line: String,
}

/// Collects the commands a recording runner would have run; each "succeeds" with `stdout`
/// from the answer function (empty by default).
#[derive(Clone, Default)]
pub struct Recorder {
    pub calls: std::sync::Arc<Mutex<Vec<Recorded>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recorder({} calls)", self.calls.lock().map_or(0, |c| c.len()))
    }
}

impl Recorder {
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().expect("recorded calls").clone()
    }
}

/// How a command ended. All of it is redacted but `unredacted_stdout`, which is never shown.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// What the child printed on stdout: the only text that is parsed (`HELM_DEBUG`, `TF_LOG`
    /// and warnings go to stderr).
    pub stdout: String,
    pub stderr: String,
    /// stdout and stderr line by line as they came, for messages.
    pub output: String,
    /// stdout as written, when the command asked for it ([`Command::unredacted_stdout`]).
    pub unredacted_stdout: Unredacted,
    pub seconds: f64,
}

/// A child's stdout exactly as it wrote it, for a file only this user reads: a Terraform
/// state backup must hold the keys, or `terraform state push` would put redaction markers
/// where they were. Never shown: its `Debug` gives the length only.
#[derive(Clone, Default)]
pub struct Unredacted(Vec<u8>);

impl Unredacted {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Unredacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, not shown", self.0.len())
    }
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of the output, for an error message.
    pub fn tail(&self) -> String {
        last_lines(&self.output)
    }

    /// stdout as JSON; the error (for `cmd`'s, naming `what` it should have printed) shows
    /// the end of stderr, not what stdout held.
    pub fn json<T: serde::de::DeserializeOwned>(&self, cmd: &Command, what: &str) -> Result<T> {
        serde_json::from_str(self.stdout.trim()).map_err(|e| Error::CommandFailed {
            line: cmd.line(),
            status: format!("printed no {what} JSON on stdout ({e})"),
            tail: last_lines(&self.stderr),
        })
    }
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(ERROR_TAIL_LINES)..].join("\n")
}

/// Which of a child's streams a reader drains.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Command {
    pub fn new(program: &Program, timeout: Duration) -> Self {
        Self {
            program: program.clone(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            unset: Vec::new(),
            timeout,
            echo: false,
            keep_unredacted: false,
            shown: Vec::new(),
            recorder: None,
        }
    }

    /// Records instead of running ([`Recorder`]).
    pub fn recorded_by(mut self, recorder: Option<Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// An argument passed as `value` and shown (in plans, lines, argv) as `shown`.
    pub fn arg_shown(mut self, value: impl Into<String>, shown: impl Into<String>) -> Self {
        self.shown.push((self.args.len(), shown.into()));
        self.args.push(value.into());
        self
    }

    /// The program as invoked (its path) and every argument, placeholders shown: what a plan
    /// carries as `argv`.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.path.display().to_string())
            .chain(self.args.iter().enumerate().map(|(i, a)| match self.placeholder(i) {
                Some(shown) => shown.to_string(),
                None => a.clone(),
            }))
            .collect()
    }

    /// The folder it runs in, if not this tool's.
    pub fn workdir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn placeholder(&self, index: usize) -> Option<&str> {
        self.shown.iter().find(|(i, _)| *i == index).map(|(_, s)| s.as_str())
    }

    /// The plan's line: [`Command::argv`] as a shell would take it (placeholders as they
    /// are), then the folder.
    pub fn plan_line(&self) -> String {
        let mut words = vec![shell_quote(&self.program.path.display().to_string())];
        for (i, a) in self.args.iter().enumerate() {
            words.push(match self.placeholder(i) {
                Some(shown) => shown.to_string(),
                None => shell_quote(a),
            });
        }
        let line = words.join(" ");
        match &self.dir {
            Some(dir) => format!("{line} (in {})", dir.display()),
            None => line,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Keeps `key` of this tool's environment from the child.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.unset.push(key.into());
        self
    }

    /// Also keep stdout as written ([`Outcome::unredacted_stdout`]); what is shown, streamed
    /// or parsed stays redacted.
    pub fn unredacted_stdout(mut self) -> Self {
        self.keep_unredacted = true;
        self
    }

    /// Stream the (redacted) output to stderr while it runs (`-v`).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// The command line as an operator would type it (arguments never hold secrets: values
    /// travel in 0600 files).
    pub fn line(&self) -> String {
        std::iter::once(self.program.name.to_string())
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs it to the end (or the timeout); a non-zero exit is an `Ok` outcome.
    pub async fn run(&self) -> Result<Outcome> {
        if let Some(recorder) = &self.recorder {
            recorder.calls.lock().expect("recorded calls").push(Recorded {
                argv: self.argv(),
                dir: self.dir.clone(),
                line: self.plan_line(),
            });
            return Ok(Outcome { code: Some(0), ..Outcome::default() });
        }
        let (pgid_tx, pgid_rx) = tokio::sync::oneshot::channel();
        let spawn = self.clone();
        let mut task = tokio::task::spawn_blocking(move || spawn.run_blocking(pgid_tx));
        let Ok(pgid) = pgid_rx.await else {
            // Spawning failed: the task holds the error.
            return match task.await {
                Ok(result) => result,
                Err(e) => Err(self.spawn_error(std::io::Error::other(e.to_string()))),
            };
        };
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(joined) => joined
                .unwrap_or_else(|e| Err(self.spawn_error(std::io::Error::other(e.to_string())))),
            Err(_) => {
                stop_group(pgid, Signal::SIGTERM).await;
                let tail = match task.await {
                    Ok(Ok(outcome)) => outcome.tail(),
                    _ => String::new(),
                };
                Err(Error::CommandTimeout { line: self.line(), secs: self.timeout.as_secs(), tail })
            }
        }
    }

    /// [`Command::run`], requiring exit code 0.
    pub async fn ok(&self) -> Result<Outcome> {
        let outcome = self.run().await?;
        if outcome.success() { Ok(outcome) } else { Err(self.failed(&outcome)) }
    }

    /// [`Command::ok`], then its stdout as JSON ([`Outcome::json`]).
    pub async fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        self.ok().await?.json(self, what)
    }

    /// The error for a failed outcome of this command.
    pub fn failed(&self, outcome: &Outcome) -> Error {
        let status = match outcome.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_string(),
        };
        Error::CommandFailed { line: self.line(), status, tail: outcome.tail() }
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        Error::CommandFailed {
            line: self.line(),
            status: format!("could not start: {e}"),
            tail: String::new(),
        }
    }

    fn run_blocking(self, pgid_tx: tokio::sync::oneshot::Sender<i32>) -> Result<Outcome> {
        let started = Instant::now();
        let parent = std::process::id();
        let (stdout, stdout_writer) = std::io::pipe().map_err(|e| self.spawn_error(e))?;
        let (stderr, stderr_writer) = std::io::pipe().map_err(|e| self.spawn_error(e))?;
        let mut expression = duct::cmd(&self.program.path, &self.args)
            .stdin_null()
            .stdout_file(stdout_writer)
            .stderr_file(stderr_writer)
            .unchecked()
            .before_spawn(move |cmd| {
                use std::os::unix::process::CommandExt as _;
                cmd.process_group(0);
                // SAFETY: the closure runs in the forked child before exec and only makes
                // async-signal-safe calls (prctl, getppid); it allocates nothing.
                #[allow(unsafe_code)]
                unsafe {
                    cmd.pre_exec(move || die_with_parent(parent));
                }
                Ok(())
            });
        if let Some(dir) = &self.dir {
            expression = expression.dir(dir);
        }
        for key in &self.unset {
            expression = expression.env_remove(key);
        }
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        let handle = expression.start().map_err(|e| self.spawn_error(e))?;
        // The expression holds this process's copies of the write ends: without them, the
        // reads below end when the child's last copy closes.
        drop(expression);
        let pgid = handle.pids().first().map_or(0, |&p| p as i32);
        RUNNING.lock().expect("running children").insert(pgid, self.line());
        let _ = pgid_tx.send(pgid);
        let captured = Mutex::new(Outcome::default());
        std::thread::scope(|scope| {
            scope.spawn(|| self.capture(stderr, Stream::Stderr, &captured));
            self.capture(stdout, Stream::Stdout, &captured);
        });
        let status = handle.wait();
        RUNNING.lock().expect("running children").remove(&pgid);
        let mut outcome = captured.into_inner().expect("captured output");
        outcome.code = status.ok().and_then(|out| out.status.code());
        outcome.seconds = started.elapsed().as_secs_f64();
        Ok(outcome)
    }

    /// Reads one of the child's streams to its end through its own redactor (a PEM block on
    /// stdout is not ended by a line of stderr), keeping each line as it is released.
    fn capture(&self, mut pipe: std::io::PipeReader, stream: Stream, into: &Mutex<Outcome>) {
        let mut redactor = Redactor::default();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = match pipe.read(&mut buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(read) => read,
                Err(_) => 0,
            };
            let lines = if read == 0 { redactor.finish() } else { redactor.feed(&buffer[..read]) };
            let mut guard = into.lock().expect("captured output");
            let outcome = &mut *guard;
            if self.keep_unredacted && matches!(stream, Stream::Stdout) {
                outcome.unredacted_stdout.0.extend_from_slice(&buffer[..read]);
            }
            for line in lines {
                if self.echo {
                    eprintln!("    {}: {line}", self.program.name);
                }
                let own = match stream {
                    Stream::Stdout => &mut outcome.stdout,
                    Stream::Stderr => &mut outcome.stderr,
                };
                for text in [own, &mut outcome.output] {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            if read == 0 {
                return;
            }
        }
    }
}

/// In the child, before exec: be interrupted when this tool dies, and refuse to start if it
/// already has. SIGINT, not SIGKILL: terraform and helm stop cleanly on it (terraform writes
/// its state first). An ignored SIGINT survives exec (a tool started in the background of a
/// script inherits one), so the default is put back, or the death signal would do nothing.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    use nix::sys::signal::{SigHandler, signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_DFL installs no handler; `signal` is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            signal(sig, SigHandler::SigDfl).map_err(std::io::Error::from)?;
        }
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(std::io::Error::other("the parent exited before the child started"));
    }
    Ok(())
}

/// Asks a child group to stop (`first`), then kills it after the grace period.
async fn stop_group(pgid: i32, first: Signal) {
    if pgid <= 0 {
        return;
    }
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, first);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && killpg(group, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// Ctrl-C: stops every running child group (SIGINT first, so terraform saves its state) and
/// returns their command lines.
pub async fn stop_all() -> Vec<String> {
    let running: Vec<(i32, String)> =
        RUNNING.lock().expect("running children").iter().map(|(p, l)| (*p, l.clone())).collect();
    futures::future::join_all(running.iter().map(|(pgid, _)| stop_group(*pgid, Signal::SIGINT)))
        .await;
    running.into_iter().map(|(_, line)| line).collect()
}

/// Stops processes that an earlier, killed run of `run` left behind (the grandchildren a
/// death signal does not reach, such as lokoctl's terraform and helm): SIGINT first, so they
/// write their state, then SIGKILL after the grace period; returns once they are gone, so
/// that what is done is decided only once nothing of that run can still write.
pub async fn stop_leftovers(run: &str) -> Vec<u32> {
    let marker = format!("{RUN_ENV}={run}");
    let leftovers = processes_with_env(&marker);
    let signal_all = |sig: Signal| {
        for pid in processes_with_env(&marker) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
        }
    };
    signal_all(Signal::SIGINT);
    let gone_within = async |grace: Duration| {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if processes_with_env(&marker).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    if !gone_within(STOP_GRACE).await {
        signal_all(Signal::SIGKILL);
        gone_within(STOP_GRACE).await;
    }
    leftovers
}

fn processes_with_env(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// Quotes an argument for display the way a shell would need it.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+[]".contains(c));
    if plain { arg.to_string() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Program {
        Program { name: "sh", path: "/bin/sh".into() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_captured_redacted_and_the_exit_code_kept() {
        let script = "echo hello; echo '-----BEGIN RSA PRIVATE KEY-----'; echo MIIsecret; \
                      echo '-----END RSA PRIVATE KEY-----' >&2; exit 3";
        let cmd = Command::new(&sh(), Duration::from_secs(10)).args(["-c", script]);
        let out = cmd.run().await.unwrap();
        assert_eq!(out.code, Some(3));
        // The two streams are read apart, so only stdout's own order is fixed.
        assert!(out.stdout.starts_with("hello\n"), "{}", out.stdout);
        assert!(!out.output.contains("MIIsecret"), "{}", out.output);
        let err = cmd.ok().await.unwrap_err().to_string();
        assert!(err.contains("exit code 3") && err.contains("sh -c"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_stdout_is_parsed_and_stderr_explains_a_failure() {
        // What `HELM_DEBUG=1` and a group-readable kubeconfig make helm print around its JSON.
        let script = "echo '[debug] reading the release' >&2; echo '{\"revision\":1}'; \
                      echo 'WARNING: Kubernetes configuration file is group-readable.' >&2";
        let cmd = Command::new(&sh(), Duration::from_secs(10)).args(["-c", script]);
        let parsed: serde_json::Value = cmd.json("history").await.unwrap();
        assert_eq!(parsed["revision"], 1);
        let out = cmd.run().await.unwrap();
        assert_eq!(out.stdout, "{\"revision\":1}\n");
        assert!(out.stderr.starts_with("[debug]") && out.stderr.contains("WARNING"), "{out:?}");
        assert!(out.output.contains("[debug]") && out.output.contains("revision"), "{out:?}");

        let script = "echo 'not JSON at all'; echo 'Error: the reason helm gives' >&2";
        let cmd = Command::new(&sh(), Duration::from_secs(10)).args(["-c", script]);
        let err = cmd.json::<serde_json::Value>("history").await.unwrap_err().to_string();
        assert!(err.contains("printed no history JSON on stdout"), "{err}");
        assert!(err.contains("the reason helm gives") && err.contains("sh -c"), "{err}");
        let shown = err.rsplit("its last output:").next().unwrap();
        assert!(!shown.contains("not JSON at all"), "stdout is not quoted: {err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stdout_is_kept_unredacted_only_when_asked_and_never_shown() {
        let script = "printf '%s\\n' '-----BEGIN EC PRIVATE KEY-----' MHcCAQEEIsecretbody \
                      '-----END EC PRIVATE KEY-----'";
        let cmd = Command::new(&sh(), Duration::from_secs(10)).args(["-c", script]);
        let plain = cmd.run().await.unwrap();
        assert!(plain.unredacted_stdout.bytes().is_empty());
        let kept = cmd.unredacted_stdout().run().await.unwrap();
        let raw = String::from_utf8(kept.unredacted_stdout.bytes().to_vec()).unwrap();
        assert!(raw.contains("\nMHcCAQEEIsecretbody\n"), "{raw}");
        assert!(!kept.stdout.contains("secretbody"), "{}", kept.stdout);
        let debug = format!("{kept:?}");
        assert!(!debug.contains("secretbody") && debug.contains("bytes, not shown"), "{debug}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_stops_the_whole_group() {
        let cmd = Command::new(&sh(), Duration::from_millis(300))
            .args(["-c", "sleep 30 & echo started; wait"]);
        let started = Instant::now();
        let err = cmd.run().await.unwrap_err();
        assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");
        // The grandchild `sleep` held the pipe: returning means the group is gone.
        assert!(started.elapsed() < STOP_GRACE, "{:?}", started.elapsed());
    }

    #[test]
    fn a_missing_program_names_the_flag() {
        let err = Program::find("helm", Some(Path::new("/nonexistent/helm")), "HELM", "--helm")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/helm") && err.contains("--helm"), "{err}");
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let cmd = Command::new(&sh(), Duration::from_secs(1))
            .args(["-target=module.a.local_file.b[0]", "two words"]);
        assert_eq!(cmd.line(), "sh -target=module.a.local_file.b[0] 'two words'");
    }
}
