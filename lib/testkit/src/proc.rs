//! Child processes: tandem's real binaries, with their output in a log file, the
//! listening sockets they are handed, and the signals a fault test sends them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use crate::eventually;

/// A binary of this workspace, built in the same profile as the running executable
/// (next to it, or next to its `deps/` directory for test executables).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe.parent().expect("an executable lives in a directory");
    let candidates = [
        dir.join(name),
        dir.parent().map(|d| d.join(name)).unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built next to {}: build the workspace first (cargo build --workspace)",
                exe.display()
            )
        })
}

/// A child process with its output in a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with `listeners` handed over as its sockets 0, 1, … of systemd's
    /// socket activation protocol (file descriptors 3, 4, …; `LISTEN_FDS`). The command
    /// is consumed: it holds the parent's copies of the sockets, which must close once the
    /// child has them, or a killed child's port would go on accepting connections.
    pub fn start(
        name: &str,
        mut command: Command,
        listeners: Vec<std::net::TcpListener>,
        log_dir: &Path,
    ) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the log file can be created");
        if !listeners.is_empty() {
            let mappings = listeners
                .into_iter()
                .enumerate()
                .map(|(i, listener)| FdMapping {
                    parent_fd: OwnedFd::from(listener),
                    child_fd: 3 + i as i32,
                })
                .collect::<Vec<_>>();
            command
                .env("LISTEN_FDS", mappings.len().to_string())
                .env_remove("LISTEN_PID")
                .fd_mappings(mappings)
                .expect("distinct child file descriptors");
        }
        let child = command
            .stdout(Stdio::from(file.try_clone().expect("a log file handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        drop(command);
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), signal);
    }

    /// Sends SIGTERM and waits for the exit status (panics after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(timeout).await
    }

    /// Sends SIGKILL, as a crash would, and waits until the process is gone.
    pub async fn kill(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(10)).await
    }

    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        eventually(timeout, &format!("{name} to exit"), || {
            let status = self.child.try_wait().expect("the child can be polled");
            async move { status }
        })
        .await
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        (kib / 1024.0 * 10.0).round() / 10.0
    }

    /// CPU time (user + system) used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a /proc/PID/stat file, in seconds (Linux clock ticks are 1/100 s).
pub fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
