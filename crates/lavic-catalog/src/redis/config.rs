//! Settings of the Redis store: the URL (`redis://` or `rediss://`), credentials (from the
//! environment or a file, never from the URL, which shows up in flags, logs and printed
//! configurations), consistency, cache, timeouts, replication acknowledgement.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// How fresh the items a replica serves from its cache are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Every lookup makes one round trip, even when all its items are cached (then it only reads
    /// the namespace's write epoch): an acknowledged write on any replica is seen by every
    /// replica's next lookup.
    #[default]
    Strict,
    /// A lookup whose items are all cached makes no round trip; a write on another replica is
    /// seen once its invalidation message has arrived (about a network round trip later).
    Eventual,
}

impl std::str::FromStr for Consistency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "strict" => Ok(Consistency::Strict),
            "eventual" => Ok(Consistency::Eventual),
            other => Err(Error::InvalidArgument(format!("consistency {other:?} (expected strict or eventual)"))),
        }
    }
}

/// Username and password for Redis ACL authentication (`AUTH [username] password`). The password
/// is never printed (`Debug` shows `***`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisCredentials {
    /// ACL user (`None`: the `default` user).
    pub username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCredentials").field("username", &self.username).field("password", &self.password.as_ref().map(|_| "***")).finish()
    }
}

/// Environment variable of the ACL user.
pub const ENV_USERNAME: &str = "LAVIC_REDIS_USERNAME";
/// Environment variable of the password.
pub const ENV_PASSWORD: &str = "LAVIC_REDIS_PASSWORD";
/// Environment variable naming a file that holds the password (a mounted Kubernetes Secret).
pub const ENV_PASSWORD_FILE: &str = "LAVIC_REDIS_PASSWORD_FILE";

impl RedisCredentials {
    /// Credentials given directly (tests, embedding).
    pub fn new(username: Option<String>, password: Option<String>) -> Self {
        RedisCredentials { username, password }
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Reads `LAVIC_REDIS_USERNAME` and `LAVIC_REDIS_PASSWORD` or `LAVIC_REDIS_PASSWORD_FILE`
    /// from the environment (an empty variable counts as unset).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`RedisCredentials::from_env`], reading variables through `var`. The password file's
    /// content is used without its trailing line break; both password variables at once, an
    /// unreadable or an empty file are errors naming the variable.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let password = match (get(ENV_PASSWORD), get(ENV_PASSWORD_FILE)) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument(format!("set {ENV_PASSWORD} or {ENV_PASSWORD_FILE}, not both")));
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => {
                let raw = std::fs::read_to_string(&file).map_err(|e| Error::InvalidArgument(format!("{ENV_PASSWORD_FILE}={file}: {e}")))?;
                let p = raw.trim_end_matches(['\n', '\r']).to_string();
                if p.is_empty() {
                    return Err(Error::InvalidArgument(format!("{ENV_PASSWORD_FILE}={file}: the file is empty")));
                }
                Some(p)
            }
            (None, None) => None,
        };
        Ok(RedisCredentials { username: get(ENV_USERNAME), password })
    }
}

/// Everything the Redis store needs. Build with [`RedisConfig::new`] and change fields.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host[:port][/db]` or `rediss://...` (TLS). No password in it.
    pub url: String,
    /// ACL credentials (see [`RedisCredentials::from_env`]).
    pub credentials: RedisCredentials,
    /// PEM file of the CA that signed the server's certificate, for `rediss://` with a private
    /// CA (default: the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// First part of every key (`PREFIX:{fingerprint}:...`), to share one Redis between
    /// deployments.
    pub key_prefix: String,
    /// Strict (default) or eventual freshness of cached items.
    pub consistency: Consistency,
    /// Bound of the per-replica item cache, in bytes (0: no cache).
    pub cache_bytes: usize,
    /// Longest life of a cache entry (a safety net; invalidations keep the cache right).
    pub cache_ttl: Duration,
    /// Limit of one round trip (connecting included); past it the call fails as unavailable.
    pub timeout: Duration,
    /// Redis replicas that must acknowledge each write (`WAIT n`) before it is acknowledged;
    /// 0 = the primary's acknowledgement suffices.
    pub wait_replicas: u32,
    /// How long `WAIT` may take.
    pub wait_timeout: Duration,
    /// Interval of the health check (and of the pub/sub keep-alive ping).
    pub health_interval: Duration,
    /// How long the cache may lag behind the epoch lookups see before it empties itself
    /// (lost or stuck invalidations).
    pub resync_after: Duration,
}

impl RedisConfig {
    /// Defaults: no credentials, prefix `lavic`, strict, a 256 MiB cache with a 10 min TTL,
    /// 2 s round trips, no `WAIT`, a health check every second.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            credentials: RedisCredentials::default(),
            ca_file: None,
            key_prefix: "lavic".into(),
            consistency: Consistency::Strict,
            cache_bytes: 256 << 20,
            cache_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(2),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            resync_after: Duration::from_secs(1),
        }
    }

    /// Whether `s` names a Redis store (`redis://` or `rediss://`) rather than a folder.
    pub fn is_redis_url(s: &str) -> bool {
        s.starts_with("redis://") || s.starts_with("rediss://")
    }

    /// Checks the settings; returns the store's name for messages (the URL as given: it holds no
    /// secret once checked).
    pub fn validate(&self) -> Result<String> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("catalog_url {:?}: {m}", redact(&self.url))));
        let u = match url::Url::parse(&self.url) {
            Ok(u) => u,
            Err(e) => return bad(e.to_string()),
        };
        if !matches!(u.scheme(), "redis" | "rediss") {
            return bad("the scheme must be redis:// or rediss://".into());
        }
        if u.password().is_some() {
            return bad(format!("a password in the URL is refused (URLs end up in flags, logs and printed configurations); set {ENV_PASSWORD} or {ENV_PASSWORD_FILE}"));
        }
        if !u.username().is_empty() && self.credentials.username.is_some() {
            return bad(format!("the user is given both in the URL and in {ENV_USERNAME}"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return bad("no host".into());
        }
        if u.fragment().is_some() || u.query().is_some() {
            return bad("no query or fragment is accepted (insecure TLS is not supported)".into());
        }
        let path = u.path().trim_start_matches('/');
        if !path.is_empty() && path.parse::<u16>().is_err() {
            return bad(format!("the path must be a database number, not {path:?}"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err(Error::InvalidArgument(format!("key prefix {:?}: must be non-empty, without braces or spaces", self.key_prefix)));
        }
        if self.timeout.is_zero() || self.health_interval.is_zero() {
            return Err(Error::InvalidArgument("Redis timeout and health interval must be positive".into()));
        }
        if self.wait_replicas > 0 && self.wait_timeout.is_zero() {
            return Err(Error::InvalidArgument("a WAIT for replicas needs a positive wait timeout".into()));
        }
        if self.ca_file.is_some() && u.scheme() != "rediss" {
            return bad("a CA file needs a rediss:// URL".into());
        }
        Ok(self.url.clone())
    }
}

/// The URL with any password replaced (for error messages about a refused URL).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_in_them_refused() {
        for ok in ["redis://127.0.0.1:6379", "redis://cache.internal/2", "rediss://r.example.com:6380/0", "redis://lavic@10.0.0.5"] {
            assert_eq!(RedisConfig::new(ok).validate().unwrap(), ok);
        }
        let e = RedisConfig::new("redis://u:hunter2@10.0.0.5:6379").validate().unwrap_err().to_string();
        assert!(e.contains(ENV_PASSWORD) && !e.contains("hunter2"), "{e}");
        for bad in ["http://x:1", "redis://", "redis://h/x", "rediss://h/#insecure", "redis://h/?protocol=resp3", "not a url"] {
            assert!(RedisConfig::new(bad).validate().is_err(), "{bad}");
        }
        let mut c = RedisConfig::new("redis://h");
        c.ca_file = Some("/ca.pem".into());
        assert!(c.validate().is_err(), "a CA without TLS");
        let mut c = RedisConfig::new("redis://h");
        c.key_prefix = "a{b}".into();
        assert!(c.validate().is_err());
        assert!(RedisConfig::is_redis_url("rediss://h") && !RedisConfig::is_redis_url("/catalog/v1"));
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file_s = file.display().to_string();
        let env = |pairs: Vec<(&'static str, String)>| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());

        let c = RedisCredentials::from_lookup(env(vec![(ENV_USERNAME, "lavic".into()), (ENV_PASSWORD_FILE, file_s.clone())])).unwrap();
        assert_eq!((c.username.as_deref(), c.password()), (Some("lavic"), Some("s3cret")));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = RedisCredentials::from_lookup(env(vec![(ENV_PASSWORD, "p".into()), (ENV_USERNAME, String::new())])).unwrap();
        assert_eq!((c.username.as_deref(), c.password()), (None, Some("p")));
        assert_eq!(RedisCredentials::from_lookup(env(vec![])).unwrap(), RedisCredentials::default());
        let e = RedisCredentials::from_lookup(env(vec![(ENV_PASSWORD, "p".into()), (ENV_PASSWORD_FILE, file_s)])).unwrap_err();
        assert!(e.to_string().contains("not both"));
        std::fs::write(&file, "\n").unwrap();
        let e = RedisCredentials::from_lookup(env(vec![(ENV_PASSWORD_FILE, file.display().to_string())])).unwrap_err();
        assert!(e.to_string().contains("empty"));
        let e = RedisCredentials::from_lookup(env(vec![(ENV_PASSWORD_FILE, "/nonexistent/pw".into())])).unwrap_err();
        assert!(e.to_string().contains(ENV_PASSWORD_FILE));
    }
}
