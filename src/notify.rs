//! The systemd notify protocol (`sd_notify(3)`), implemented directly on a Unix datagram socket:
//! `READY=1` once listening, `RELOADING=1` / `READY=1` around config reloads, `STOPPING=1` on
//! shutdown, and `WATCHDOG=1` every `WATCHDOG_USEC / 2` when the service manager asks for it.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset (a terminal, Docker) and on
//! non-Unix platforms. Send failures are logged once at debug level and never stop the proxy.

use std::time::Duration;

/// Errors from setting up the notify socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET `{0}` is not a usable socket address: {1}")]
    Address(String, String),
    #[error("cannot create the notify socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// A handle for sending notifications; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(unix)]
    sock: std::os::unix::net::UnixDatagram,
    #[cfg(unix)]
    addr: std::os::unix::net::SocketAddr,
    target: String,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::connect(&s).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for a socket path, or an abstract socket written `@name`.
    #[cfg(unix)]
    pub fn connect(target: &str) -> Result<Notifier, NotifyError> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let addr = if let Some(name) = target.strip_prefix('@') {
            abstract_addr(name).map_err(|e| NotifyError::Address(target.into(), e.to_string()))?
        } else {
            SocketAddr::from_pathname(target)
                .map_err(|e| NotifyError::Address(target.into(), e.to_string()))?
        };
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier {
            sock,
            addr,
            target: target.to_string(),
        })
    }

    #[cfg(not(unix))]
    pub fn connect(target: &str) -> Result<Notifier, NotifyError> {
        Err(NotifyError::Address(
            target.into(),
            "Unix sockets are not available on this platform".into(),
        ))
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            self.sock.send_to_addr(state.as_bytes(), &self.addr)?;
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = state;
            Ok(())
        }
    }

    /// Sends and logs a failure instead of returning it.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::debug!(socket = %self.target, error = %e, state, "sd_notify failed");
        }
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd expects alongside it.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(us) => self.send(&format!("RELOADING=1\nMONOTONIC_USEC={us}")),
            None => self.send("RELOADING=1"),
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn abstract_addr(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// `CLOCK_MONOTONIC` in microseconds (what `MONOTONIC_USEC` means).
fn monotonic_usec() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        if rc != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        Some(secs * 1_000_000 + nanos / 1_000)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set and `WATCHDOG_PID`
/// is absent or names this process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on explicit values (unit-tested).
pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid.filter(|p| !p.trim().is_empty()) {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Sends `WATCHDOG=1` every `interval` from the async runtime, so a wedged runtime stops the pings
/// and systemd restarts the service.
pub fn spawn_watchdog(
    notifier: std::sync::Arc<Notifier>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notifier.send("WATCHDOG=1");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_rules() {
        let d = watchdog_interval_from(Some("30000000"), None, 7);
        assert_eq!(d, Some(Duration::from_secs(15)));
        assert_eq!(
            watchdog_interval_from(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
        assert_eq!(watchdog_interval_from(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
    }

    #[cfg(unix)]
    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.notify("READY=1").unwrap();
        n.reloading();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "stockyard-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }
}
