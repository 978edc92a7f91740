//! Long-running component processes (etcd, kube-apiserver, …): spawned so that none can
//! outlive the test, stopped like a kubelet stops a container, and checked to be gone.
//!
//! No `unsafe` (the crate forbids it, and `forbid` cannot be lifted per function), so the two
//! things that would need `pre_exec` are done with safe means:
//! - each process runs under `setpriv --pdeathsig KILL`, which sets `PR_SET_PDEATHSIG` and then
//!   execs the component, so the component is SIGKILLed when its parent thread dies, even when
//!   the test binary itself is killed and no destructor runs. The parent is a dedicated spawner
//!   thread that lives as long as the [`Supervisor`]: the death signal follows the *thread* that
//!   forked, so spawning from a short-lived thread (a test thread, a `spawn_blocking` thread)
//!   would kill the component when that thread ends;
//! - each process leads its own process group (`process_group(0)`), so stopping signals the
//!   whole group and the leftover check can find anything it forked.
//!
//! A watcher thread notices a component that exits while nobody asked it to stop (a crash, a
//! `kill -9`): it records a [`Death`] with the component's exit status and last log lines, and
//! the waits, commands and `block_on` of the test fail with it at once instead of timing out
//! later on "connection refused"; the environment's teardown fails the test if any remains.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// How long a stopped component gets between SIGTERM and SIGKILL, unless its spec says.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the watcher looks for components that exited on their own.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Lines of a dead component's log that its [`Death`] carries.
pub const DEATH_LOG_LINES: usize = 40;

/// What to run. Arguments name files, never secrets: they are visible in `ps` and logged.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// stdout and stderr are appended here; a restart appends to the same file.
    pub log: PathBuf,
    /// Stop this one only after every other process has exited at teardown (etcd: a
    /// kube-apiserver whose etcd is gone hangs in its graceful shutdown).
    pub stop_last: bool,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl ProcSpec {
    pub fn new(name: impl Into<String>, program: &Path, log: &Path) -> Self {
        ProcSpec {
            name: name.into(),
            program: program.to_path_buf(),
            args: Vec::new(),
            log: log.to_path_buf(),
            stop_last: false,
            grace: STOP_GRACE,
        }
    }

    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn stop_last(mut self) -> Self {
        self.stop_last = true;
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A handle on one spawned process; stays valid (as "not running") after it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId(u64);

struct Running {
    child: Child,
    name: String,
    log: PathBuf,
    stop_last: bool,
    grace: Duration,
    /// An exit of its own is a [`Death`] (see [`Supervisor::spawn_unwatched`]).
    watched: bool,
}

#[derive(Default)]
struct Inner {
    closed: bool,
    next: u64,
    running: BTreeMap<ProcId, Running>,
    /// Processes being stopped by [`Supervisor::stop`] right now (e.g. a restart).
    stopping: usize,
    /// Every process group ever created, for the leftover check.
    groups: Vec<(String, u32)>,
}

/// A component that exited while nobody had asked it to stop.
#[derive(Debug, Clone)]
pub struct Death {
    /// The [`ProcSpec`] name, e.g. `kube-controller-manager`.
    pub component: String,
    pub pid: u32,
    /// As Rust prints an exit status, e.g. `signal: 9 (SIGKILL)` or `exit status: 1`.
    pub status: String,
    pub log: PathBuf,
    /// The last [`DEATH_LOG_LINES`] lines of its log when the exit was noticed.
    pub log_tail: String,
    /// When the watcher noticed.
    pub noticed: Instant,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}) exited on its own ({}); the last {DEATH_LOG_LINES} lines of {}:\n{}",
            self.component,
            self.pid,
            self.status,
            self.log.display(),
            self.log_tail
        )
    }
}

/// The deaths one supervisor recorded, and a counter async code can wait on.
struct Deaths {
    list: Mutex<Vec<Death>>,
    count: tokio::sync::watch::Sender<usize>,
}

impl Deaths {
    fn record(&self, death: Death) {
        let mut list = self.list.lock().unwrap();
        list.push(death);
        self.count.send_replace(list.len());
    }

    fn list(&self) -> Vec<Death> {
        self.list.lock().unwrap().clone()
    }
}

/// The panic message for recorded deaths; `None` without any.
pub fn death_report(deaths: &[Death]) -> Option<String> {
    if deaths.is_empty() {
        return None;
    }
    let each: Vec<String> = deaths.iter().map(Death::to_string).collect();
    Some(format!("a component of the test environment died: {}", each.join("\n\n")))
}

thread_local! {
    /// The deaths of the environments started on this thread: its waits and commands fail
    /// fast on them.
    static WATCHED_HERE: RefCell<Vec<Weak<Deaths>>> = const { RefCell::new(Vec::new()) };
}

/// The report of every death of the environments started on this thread (see
/// [`Supervisor::fail_fast_here`]); `None` while all is well.
pub fn deaths_here() -> Option<String> {
    let deaths: Vec<Death> = WATCHED_HERE.with(|watched| {
        let mut watched = watched.borrow_mut();
        watched.retain(|d| d.strong_count() > 0);
        watched.iter().filter_map(Weak::upgrade).flat_map(|d| d.list()).collect()
    });
    death_report(&deaths)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Owns every component process of one test environment.
pub struct Supervisor {
    inner: Arc<Mutex<Inner>>,
    stopped: Condvar,
    spawner: Mutex<Option<(mpsc::Sender<SpawnRequest>, JoinHandle<()>)>>,
    deaths: Arc<Deaths>,
    watcher: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Supervisor {
    pub fn new() -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("certrotate-test-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the spawner thread");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let deaths = Arc::new(Deaths {
            list: Mutex::new(Vec::new()),
            count: tokio::sync::watch::Sender::new(0),
        });
        // The watcher holds the state, not the supervisor, so that the supervisor's drop
        // (which joins it) never runs on the watcher thread.
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (watched, recorder) = (Arc::clone(&inner), Arc::clone(&deaths));
        let watcher = std::thread::Builder::new()
            .name("certrotate-test-watcher".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(WATCH_EVERY) {
                    notice_deaths(&watched, &recorder);
                }
            })
            .expect("starting the watcher thread");
        Arc::new(Supervisor {
            inner,
            stopped: Condvar::new(),
            spawner: Mutex::new(Some((tx, thread))),
            deaths,
            watcher: Mutex::new(Some((stop_tx, watcher))),
        })
    }

    /// Makes the waits (`wait_for`, `wait_for_async`) and commands (`Cmd`) run on the calling
    /// thread fail as soon as a component of this supervisor dies.
    pub fn fail_fast_here(&self) {
        let deaths = Arc::downgrade(&self.deaths);
        WATCHED_HERE.with(|watched| watched.borrow_mut().push(deaths));
    }

    /// Every death recorded so far.
    pub fn deaths(&self) -> Vec<Death> {
        self.deaths.list()
    }

    /// Counts recorded deaths; changes when one is recorded (for `select!`).
    pub fn death_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.deaths.count.subscribe()
    }

    /// The pid of the running process named `name` (a [`ProcSpec`] name).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let inner = self.inner.lock().unwrap();
        inner.running.values().find(|r| r.name == name).map(|r| r.child.id())
    }

    /// Starts `spec`; from then on an exit the test did not ask for is a [`Death`]. Fails once
    /// [`Supervisor::shutdown`] has begun, so that a sync task racing with teardown cannot
    /// leave a process behind.
    pub fn spawn(&self, spec: &ProcSpec) -> std::io::Result<ProcId> {
        self.spawn_watched(spec, true)
    }

    /// [`Supervisor::spawn`] for a start the caller checks and may retry (etcd whose port was
    /// taken meanwhile): its exit is no [`Death`] until [`Supervisor::watch`].
    pub fn spawn_unwatched(&self, spec: &ProcSpec) -> std::io::Result<ProcId> {
        self.spawn_watched(spec, false)
    }

    /// The process is up: an exit of its own is a [`Death`] from now on.
    pub fn watch(&self, id: ProcId) {
        if let Some(r) = self.inner.lock().unwrap().running.get_mut(&id) {
            r.watched = true;
        }
    }

    fn spawn_watched(&self, spec: &ProcSpec, watched: bool) -> std::io::Result<ProcId> {
        let mut log = OpenOptions::new().create(true).append(true).open(&spec.log)?;
        writeln!(
            log,
            "=== {} {}: {} {}",
            jiff::Timestamp::now(),
            spec.name,
            spec.program.display(),
            spec.args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        )?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&spec.program)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);

        let mut inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(std::io::Error::other(format!(
                "not starting {}: the test environment is shutting down",
                spec.name
            )));
        }
        let child = {
            let spawner = self.spawner.lock().unwrap();
            let (tx, _) = spawner.as_ref().expect("spawner alive while not closed");
            let (reply_tx, reply_rx) = mpsc::channel();
            tx.send((command, reply_tx)).expect("spawner thread alive");
            reply_rx.recv().expect("spawner thread replies")?
        };
        inner.next += 1;
        let id = ProcId(inner.next);
        inner.groups.push((spec.name.clone(), child.id()));
        inner.running.insert(
            id,
            Running {
                child,
                name: spec.name.clone(),
                log: spec.log.clone(),
                stop_last: spec.stop_last,
                grace: spec.grace,
                watched,
            },
        );
        Ok(id)
    }

    /// `Some(exit status)` once the process has ended on its own (or was never known).
    pub fn exit_status(&self, id: ProcId) -> Option<String> {
        let mut inner = self.inner.lock().unwrap();
        match inner.running.get_mut(&id) {
            None => Some("stopped".into()),
            Some(r) => match r.child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
        }
    }

    /// SIGTERM to the process group, SIGKILL after its grace period, and reap it. Blocks for at
    /// most the grace period plus a moment.
    pub fn stop(&self, id: ProcId) {
        let running = {
            let mut inner = self.inner.lock().unwrap();
            let running = inner.running.remove(&id);
            inner.stopping += usize::from(running.is_some());
            running
        };
        if let Some(running) = running {
            stop_all(vec![running]);
            self.inner.lock().unwrap().stopping -= 1;
            self.stopped.notify_all();
        }
    }

    /// Stops everything (all at once, so teardown costs one grace period, not one per
    /// process), refuses later spawns, ends the spawner thread, and returns a description of
    /// every process still alive in any group this supervisor created: empty when clean.
    pub fn shutdown(&self) -> Vec<String> {
        // What died just before teardown is a death too, not a process teardown stops.
        if let Some((stop, watcher)) = self.watcher.lock().unwrap().take() {
            drop(stop);
            let _ = watcher.join();
            notice_deaths(&self.inner, &self.deaths);
        }
        let (running, groups) = {
            let mut inner = self.inner.lock().unwrap();
            inner.closed = true;
            let running: Vec<Running> = std::mem::take(&mut inner.running).into_values().collect();
            (running, inner.groups.clone())
        };
        let (last, first): (Vec<Running>, Vec<Running>) =
            running.into_iter().partition(|r| r.stop_last);
        stop_all(first);
        // A restart racing with teardown may still be stopping its process: wait for it, so
        // that it is not counted as left behind and its etcd outlives it.
        let inner = self.inner.lock().unwrap();
        let wait = STOP_GRACE + Duration::from_secs(5);
        drop(self.stopped.wait_timeout_while(inner, wait, |i| i.stopping > 0).unwrap());
        stop_all(last);
        if let Some((tx, thread)) = self.spawner.lock().unwrap().take() {
            drop(tx);
            let _ = thread.join();
        }
        leftovers(&groups)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let left = self.shutdown();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("processes left behind by the test environment: {}", left.join("; "));
        }
    }
}

/// Records every watched process that has exited (once: it is no longer watched then).
fn notice_deaths(inner: &Mutex<Inner>, deaths: &Deaths) {
    let exited: Vec<(String, u32, String, PathBuf)> = {
        let mut inner = inner.lock().unwrap();
        inner
            .running
            .values_mut()
            .filter(|r| r.watched)
            .filter_map(|r| {
                let status = match r.child.try_wait() {
                    Ok(None) => return None,
                    Ok(Some(status)) => status.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                r.watched = false;
                Some((r.name.clone(), r.child.id(), status, r.log.clone()))
            })
            .collect()
    };
    for (component, pid, status, log) in exited {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let log_tail = lines[lines.len().saturating_sub(DEATH_LOG_LINES)..].join("\n");
        deaths.record(Death { component, pid, status, log, log_tail, noticed: Instant::now() });
    }
}

fn stop_all(mut procs: Vec<Running>) {
    let start = Instant::now();
    // A process already reaped (the watcher reaps what dies) may have lent its pid to another
    // one: only signal those still alive or unreaped.
    for p in &mut procs {
        if matches!(p.child.try_wait(), Ok(None)) {
            signal_group(p.child.id(), "TERM");
        }
    }
    while !procs.is_empty() {
        procs.retain_mut(|p| {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if start.elapsed() < p.grace {
                return true;
            }
            signal_group(p.child.id(), "KILL");
            let _ = p.child.kill();
            let _ = p.child.wait();
            false
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal to every process of a group through kill(1): std has no safe way to signal
/// a group, and `unsafe` is forbidden in this crate.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Live processes whose process group is one of `groups`, from /proc.
fn leftovers(groups: &[(String, u32)]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the parenthesised command name: state, ppid, pgrp, …
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let Some(pgrp) = fields.get(2).and_then(|f| f.parse::<u32>().ok()) else { continue };
        if let Some((component, _)) = groups.iter().find(|(_, g)| *g == pgrp) {
            let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c);
            found.push(format!("pid {pid} ({}) of {component}", comm.unwrap_or("?")));
        }
    }
    found
}

/// Appends one timestamped line to a harness log file; write errors are not worth failing a
/// test over.
pub struct EventLog {
    file: Mutex<File>,
}

impl EventLog {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog { file: Mutex::new(file) })
    }

    pub fn line(&self, message: impl std::fmt::Display) {
        let mut file = self.file.lock().unwrap();
        let _ = writeln!(file, "{} {message}", jiff::Timestamp::now());
    }
}
