//! Child processes that never outlive the harness: every `ldr` node and PostgreSQL server the
//! testbed starts goes through [`ManagedProcess`].
//!
//! Three things make "no process left behind" hold:
//! - [`ManagedProcess`]'s `Drop` sends SIGKILL to the child's process group and reaps it, so a
//!   panicking test leaves neither running processes nor zombies;
//! - each child asks the kernel (`prctl(PR_SET_PDEATHSIG)`) to be signalled when its parent
//!   dies, which covers a test process that is itself killed (no destructors run then);
//! - PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.
//!   Test threads and tokio's blocking threads come and go, so every child is forked by one
//!   dedicated spawner thread that lives as long as the process.
//!
//! This is the only module of the crate with `unsafe` code (the `pre_exec` hook and the raw
//! `kill`/`prctl` calls); each use carries a SAFETY comment.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Result, SimError};

/// SIGKILL: what a crashed machine looks like.
pub const SIGKILL: i32 = libc::SIGKILL;
/// SIGTERM: ask for a graceful shutdown.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGINT: PostgreSQL's "fast" shutdown.
pub const SIGINT: i32 = libc::SIGINT;
/// SIGQUIT: PostgreSQL's "immediate" shutdown.
pub const SIGQUIT: i32 = libc::SIGQUIT;
/// SIGSTOP: freeze (a GC pause or a VM stall as seen from outside).
pub const SIGSTOP: i32 = libc::SIGSTOP;
/// SIGCONT: thaw after SIGSTOP.
pub const SIGCONT: i32 = libc::SIGCONT;

/// How a child is started.
#[derive(Debug, Clone, Copy)]
pub struct SpawnOptions {
    /// Signal the kernel sends the child when the harness process dies.
    pub death_signal: i32,
    /// Put the child in a process group of its own (so terminal Ctrl-C does not reach it and
    /// signals can address its own children too).
    pub new_process_group: bool,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions {
            death_signal: SIGKILL,
            new_process_group: true,
        }
    }
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

/// The long-lived thread that forks every child (see the module doc for why).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ldr-sim-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so `recv` only fails at process exit.
                while let Ok(mut request) = rx.recv() {
                    let result = request.command.spawn();
                    // The requester may have given up; nothing to do then (the child is
                    // dropped, and its parent-death signal still guards it).
                    let _ = request.reply.send(result);
                }
            })
            .expect("spawning the spawner thread at startup");
        Mutex::new(tx)
    })
}

fn spawn_child(mut command: Command, options: SpawnOptions) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    let death_signal = options.death_signal;
    if options.new_process_group {
        command.process_group(0);
    }
    // SAFETY: the hook runs in the forked child before exec and only makes two
    // async-signal-safe system calls (prctl, getppid) and builds errors without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    {
        let sender = spawner()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sender
            .send(SpawnRequest {
                command,
                reply: reply_tx,
            })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// Sends `signal` to a process (`pid > 0`) or a process group (`pid < 0`).
fn send_signal(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user id of this process (PostgreSQL refuses to run as root, uid 0).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    group: bool,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `command` as a child guarded as described in the module doc.
    pub fn spawn(
        name: impl Into<String>,
        command: Command,
        options: SpawnOptions,
    ) -> Result<ManagedProcess> {
        let name = name.into();
        let program = command.get_program().to_string_lossy().into_owned();
        let child = spawn_child(command, options)
            .map_err(|e| SimError::io(format!("spawning {name} ({program})"), e))?;
        tracing::debug!(name = %name, pid = child.id(), "spawned child process");
        Ok(ManagedProcess {
            name,
            child,
            group: options.new_process_group,
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| SimError::io(format!("waiting for {}", self.name), e))?;
        }
        Ok(self.exit)
    }

    /// Whether the child is still running (a stopped child counts as running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` to the child (and its process group when it has one).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Err(SimError::Process(format!(
                "{} (pid {}) has already exited",
                self.name,
                self.pid()
            )));
        }
        let pid = self.pid() as i32;
        let target = if self.group { -pid } else { pid };
        send_signal(target, signal)
            .map_err(|e| SimError::io(format!("signal {signal} to {}", self.name), e))
    }

    /// SIGKILL and reap; a no-op when the child has already exited.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.pid() as i32;
        if self.group {
            // Also reaches anything the child started; ignore ESRCH (already gone).
            let _ = send_signal(-pid, SIGKILL);
        }
        let _ = send_signal(pid, SIGKILL);
        let status = self
            .child
            .wait()
            .map_err(|e| SimError::io(format!("reaping {}", self.name), e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits (polling, without blocking the runtime) until the child exits or `timeout`
    /// passes; `None` on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal`, waits up to `grace` for a clean exit, then SIGKILLs.
    pub async fn terminate(&mut self, signal: i32, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // A stopped process cannot act on SIGTERM; wake it first.
        let _ = self.signal(SIGCONT);
        let _ = self.signal(signal);
        match self.wait_exit(grace).await? {
            Some(status) => Ok(status),
            None => {
                tracing::warn!(name = %self.name, grace_ms = grace.as_millis() as u64, "child ignored the shutdown signal; killing it");
                self.kill()
            }
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(name = %self.name, error = %e, "could not kill child on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drop_kills_and_reaps_the_child() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let process =
            ManagedProcess::spawn("sleep", cmd, SpawnOptions::default()).expect("spawn sleep");
        let pid = process.pid();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(process);
        // Reaped, so not even a zombie entry remains.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still present after drop"
        );
    }

    #[tokio::test]
    async fn stop_and_continue_then_terminate() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut process =
            ManagedProcess::spawn("sleep", cmd, SpawnOptions::default()).expect("spawn sleep");
        process.signal(SIGSTOP).expect("stop");
        process.signal(SIGCONT).expect("cont");
        let status = process
            .terminate(SIGTERM, Duration::from_secs(10))
            .await
            .expect("terminate");
        assert!(!status.success());
        assert!(!process.is_running());
        assert!(
            process.signal(SIGTERM).is_err(),
            "signalling an exited child must fail"
        );
    }

    #[tokio::test]
    async fn exit_status_is_observed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let mut process =
            ManagedProcess::spawn("sh", cmd, SpawnOptions::default()).expect("spawn sh");
        let status = process
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("wait")
            .expect("exited in time");
        assert_eq!(status.code(), Some(3));
    }
}
