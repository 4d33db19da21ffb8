//! The Stockyard under test: a separate `stockyard serve` process with a temporary config and
//! data directory, so its memory and CPU can be read from `/proc/<pid>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables that would override the generated config file.
const OVERRIDES: &[&str] = &[
    "PORT",
    "STOCKYARD_DATA_DIR",
    "STOCKYARD_CONFIG",
    "STOCKYARD_ADMIN_KEY",
    "STOCKYARD_API_KEY",
    "RUST_LOG",
];

pub struct Stockyard {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Option<Child>,
    dir: PathBuf,
}

/// Memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Stockyard {
    /// Starts `bin serve -c <dir>/stockyard.yaml`; `yaml` receives the listen port and the data
    /// directory. `wrap` is an optional command prefix (e.g. `valgrind --tool=callgrind`).
    pub fn spawn(
        bin: &Path,
        name: &str,
        wrap: &[String],
        yaml: impl FnOnce(u16, &Path) -> String,
    ) -> Result<Stockyard, String> {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "stockyard-bench-{}-{seq}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port();
        let cfg_path = dir.join("stockyard.yaml");
        std::fs::write(&cfg_path, yaml(port, &dir.join("data")))
            .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let log = std::fs::File::create(dir.join("stockyard.log")).map_err(|e| e.to_string())?;
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .arg("-c")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        for v in OVERRIDES {
            cmd.env_remove(v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Stockyard {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: child.id(),
            child: Some(child),
            dir,
        })
    }

    /// Waits until `GET /health` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _, _)) = crate::load::get(self.addr, "/health").await {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "stockyard ({}) exited with {status} before it was ready:\n{}",
                        self.name,
                        self.log_tail()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "stockyard ({}) not ready after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stockyard.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Log lines above INFO level (ANSI colours removed), the last `n`.
    pub fn log_warnings(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("stockyard.log")).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .map(strip_ansi)
            .filter(|l| !l.contains(" INFO ") && !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    pub fn open_fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    pub fn mem(&self) -> Mem {
        read_mem(self.pid)
    }

    /// Resets the peak RSS (VmHWM) to the current RSS; false when the kernel refuses.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// SIGTERM (graceful: in-flight requests finish, traces are flushed), then SIGKILL after 20 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        if std::env::var_os("STOCKYARD_BENCH_KEEP").is_some() {
            eprintln!(
                "[stockyard-bench] kept {} (config, log, trace database)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Stockyard {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn strip_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn read_mem(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut m = Mem::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let kb = v
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        match k {
            "VmRSS" => m.rss_kb = kb,
            "VmHWM" => m.hwm_kb = kb,
            "RssAnon" => m.rss_anon_kb = kb,
            "RssFile" => m.rss_file_kb = kb,
            _ => {}
        }
    }
    m
}

/// utime + stime of a process from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after the last ')' start at 3.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let (utime, stime) = (ticks(14 - 3), ticks(15 - 3));
    (utime + stime) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
