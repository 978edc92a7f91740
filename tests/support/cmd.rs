//! Running a real program (kubectl, helm, terraform, the plugin itself) with its output
//! captured, a timeout, and the whole command line in every failure message.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::{deaths_here, signal_group};

/// Unless a caller says otherwise, no command of a test may take longer than this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A command to run. Arguments must never carry secrets: pass them in 0600 files.
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    dir: Option<PathBuf>,
    timeout: Duration,
}

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code; `None` when a signal ended the program.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.line, self.status, self.stdout, self.stderr
        )
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Cmd {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_os_string(), Some(value.as_ref().to_os_string())));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_os_string(), None));
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line as a shell would show it.
    pub fn line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                    format!("'{}'", a.replace('\'', r"'\''"))
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts the command without waiting, e.g. to kill it half-way.
    pub fn spawn(self) -> Spawned {
        let line = self.line();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own group: a timeout kills terraform's provider plugins along with terraform.
            .process_group(0);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        let stdout = reader(child.stdout.take().expect("piped stdout"));
        let stderr = reader(child.stderr.take().expect("piped stderr"));
        Spawned { child, line, stdout: Some(stdout), stderr: Some(stderr), timeout: self.timeout }
    }

    /// Runs to the end (panics when it outlives its timeout, after killing it).
    pub fn run(self) -> Output {
        self.spawn().wait()
    }

    /// Runs and requires exit status 0.
    pub fn ok(self) -> Output {
        let out = self.run();
        assert!(out.success(), "command failed: {out}");
        out
    }

    /// Runs and requires a non-zero exit status.
    pub fn fails(self) -> Output {
        let out = self.run();
        assert!(!out.success(), "command should have failed but succeeded: {out}");
        out
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A command that is running.
pub struct Spawned {
    child: Child,
    line: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    timeout: Duration,
}

impl Spawned {
    /// The program's pid (it leads its own process group).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the end, killing the command (and panicking) after its timeout, or as soon
    /// as a component of the test's environment died (the command would only wait for it).
    pub fn wait(mut self) -> Output {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a command") {
                return self.collect(status);
            }
            if let Some(report) = deaths_here() {
                let out = self.kill();
                panic!("stopped the command: {report}\n{out}");
            }
            if Instant::now() >= deadline {
                let timeout = self.timeout;
                let out = self.kill();
                panic!("command timed out after {timeout:?} and was killed: {out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the command and its process group — no chance to clean up, like `kill -9` or
    /// a node losing power — and returns what it printed until then.
    pub fn kill(&mut self) -> Output {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let status = self.child.wait().expect("reaping a killed command");
        self.collect(status)
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        let take = |h: &mut Option<JoinHandle<String>>| {
            h.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Output {
            line: self.line.clone(),
            status,
            stdout: take(&mut self.stdout),
            stderr: take(&mut self.stderr),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.is_running() {
            signal_group(self.child.id(), "KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
