//! A real, throw-away `redis-server` for tests and benchmarks: started on a free loopback port
//! with its own temporary folder (AOF on by default), killed (-9, as a crash) and restarted on the
//! same port and folder on request, and stopped when dropped. Needs Debian's `redis-server`
//! (`apt-get install redis-server`; `.ci/run` installs it), or `LAVIC_REDIS_SERVER` naming the
//! binary. Never used by the product itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Append-only file on (`appendonly yes`).
    pub aof: bool,
    /// `always` (fsync before every reply) or `everysec`.
    pub appendfsync: &'static str,
    /// More `--name value` arguments (ACL users, memory limits...).
    pub extra: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { aof: true, appendfsync: "everysec", extra: Vec::new() }
    }
}

/// A running `redis-server` child process (killed on drop).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    opts: ServerOptions,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with default options (AOF on, `everysec`).
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server; panics with a message naming what is missing when it cannot.
    pub fn start_with(opts: ServerOptions) -> Self {
        let mut dir = tempfile::Builder::new().prefix("lavic-redis-").tempdir().expect("a temporary folder for redis-server");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut s = RedisServer { port, dir, opts: opts.clone(), child: None };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => {
                    last = e;
                    dir = s.take_dir();
                }
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let placeholder = tempfile::tempdir().expect("a temporary folder");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = std::env::var("LAVIC_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.arg("--port").arg(self.port.to_string()).arg("--bind").arg("127.0.0.1");
        cmd.arg("--dir").arg(self.dir.path()).arg("--save").arg("").arg("--daemonize").arg("no");
        cmd.arg("--logfile").arg(self.log_path());
        cmd.arg("--appendonly").arg(if self.opts.aof { "yes" } else { "no" }).arg("--appendfsync").arg(self.opts.appendfsync);
        for a in &self.opts.extra {
            cmd.arg(a);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!("{bin}: {e}: install Debian's redis-server package (apt-get install redis-server; .ci/run does), or set LAVIC_REDIS_SERVER")
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("redis-server exited ({status}): {}", self.log_tail()));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(format!("redis-server did not answer within 15 s: {}", self.log_tail()))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }

    /// Whether the server answers PING (without authentication it may answer NOAUTH: up too).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")))
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill9(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port and folder (it reloads its AOF).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("could not restart redis-server: {e}");
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A plain synchronous connection (for inspecting or damaging what a test wrote).
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).and_then(|c| c.get_connection()).expect("a connection to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}
