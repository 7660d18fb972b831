//! Server configuration: defaults, then an optional TOML file, then `LAVIC_*` environment
//! variables, then command-line flags (each overrides the ones before), validated once at start.
//!
//! Flags and environment variables are read by clap ([`ServeArgs`]: every flag has its `LAVIC_*`
//! twin); the TOML file uses the field names of [`Config`]. With no model folder configured the
//! server runs an embedded demo (`demo`): the tiny fixture model with its five-item catalog
//! (`fixture`, the default until a trained demo is shipped) or the demo world of `demo/`
//! (`world`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::demo::DemoKind;
use crate::error::{Error, Result};

/// Environment variables `lavic serve` reads (anything else starting with `LAVIC_` is warned about).
pub const KNOWN_ENV: &[&str] = &[
    "LAVIC_CONFIG",
    "LAVIC_GRPC_ADDR",
    "LAVIC_METRICS_ADDR",
    "LAVIC_MODEL_DIR",
    "LAVIC_DEMO",
    "LAVIC_DEMO_DIR",
    "LAVIC_TOKENIZER",
    "LAVIC_VISION_ADAPTER",
    "LAVIC_LM_ADAPTER",
    "LAVIC_CATALOG_DIR",
    "LAVIC_DEVICE",
    "LAVIC_DTYPE",
    "LAVIC_MAX_CANDIDATES",
    "LAVIC_MAX_PROMPT_TOKENS",
    "LAVIC_OVERLONG_POLICY",
    "LAVIC_UNKNOWN_IDS",
    "LAVIC_MAX_CONTEXT_BYTES",
    "LAVIC_MAX_IMAGE_BYTES",
    "LAVIC_MAX_MESSAGE_BYTES",
    "LAVIC_QUEUE_CAPACITY",
    "LAVIC_MAX_BATCH",
    "LAVIC_WORKERS",
    "LAVIC_BATCH_WINDOW_MS",
    "LAVIC_REQUEST_TIMEOUT_SECS",
    "LAVIC_SHUTDOWN_GRACE_SECS",
    "LAVIC_LOG_FORMAT",
    "LAVIC_LOG",
    "LAVIC_CATALOG_TOKEN",
    "LAVIC_TLS_CERT",
    "LAVIC_TLS_KEY",
    "LAVIC_CATALOG_URL",
    "LAVIC_REDIS_KEY_PREFIX",
    "LAVIC_REDIS_CONSISTENCY",
    "LAVIC_REDIS_CACHE_BYTES",
    "LAVIC_REDIS_CACHE_TTL_SECS",
    "LAVIC_REDIS_TIMEOUT_MS",
    "LAVIC_REDIS_WAIT_REPLICAS",
    "LAVIC_REDIS_WAIT_TIMEOUT_MS",
    "LAVIC_REDIS_CA_FILE",
    "LAVIC_CATALOG_OUTAGE_SECS",
    "LAVIC_ALLOW_MEMORY_ONLY_WRITES",
    // Read by the Redis store itself (credentials never come from a flag or the TOML file).
    lavic_catalog::redis::ENV_USERNAME,
    lavic_catalog::redis::ENV_PASSWORD,
    lavic_catalog::redis::ENV_PASSWORD_FILE,
    // Issue 11 (hardening).
    "LAVIC_MAX_IMAGE_PIXELS",
    "LAVIC_MAX_REQUEST_PIXELS",
    "LAVIC_MAX_INFLIGHT_PIXELS",
    "LAVIC_MAX_CONNECTIONS",
    "LAVIC_HANDSHAKE_TIMEOUT_SECS",
    "LAVIC_MAX_CONCURRENT_STREAMS",
];

/// Freshness of a replica's cached catalog items when the catalog is in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisConsistency {
    /// Every lookup makes one round trip (only the write epoch when all items are cached): an
    /// acknowledged write on any replica is seen by every replica's next request.
    #[default]
    Strict,
    /// A lookup whose items are all cached makes no round trip; writes elsewhere are seen once
    /// their invalidation message arrived (about one network round trip later).
    Eventual,
}

/// What to do with a dialogue whose prompt exceeds `max_prompt_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverlongPolicy {
    /// Drop dialogue tokens from the front (never the instruction or the candidate block) and
    /// report how many in `shortened_tokens`.
    #[default]
    Shorten,
    /// Refuse the request with INVALID_ARGUMENT.
    Reject,
}

/// Server-wide default for candidate ids the catalog does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownIds {
    /// NOT_FOUND listing the unknown ids.
    #[default]
    Reject,
    /// The reference's fallback: title "No Title", white image.
    Fallback,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Compute dtype of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    /// 32-bit float (the CPU default).
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16 (GPU with compute capability >= 8.0).
    Bf16,
}

impl DTypeName {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DTypeName::F32 => candle_core::DType::F32,
            DTypeName::F16 => candle_core::DType::F16,
            DTypeName::Bf16 => candle_core::DType::BF16,
        }
    }

    /// `f32`, `f16` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            DTypeName::F32 => "f32",
            DTypeName::F16 => "f16",
            DTypeName::Bf16 => "bf16",
        }
    }
}

/// A secret string that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The resolved configuration of `lavic serve` (also the schema of the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address (plain HTTP).
    pub metrics_addr: SocketAddr,
    /// llava-hf checkpoint folder; none: the embedded demo named by `demo`.
    pub model_dir: Option<PathBuf>,
    /// The embedded demo served when `model_dir` is unset: `fixture` (the tiny fixture model and
    /// five items; the default until `demo/` ships a trained model) or `world` (the demo of
    /// `demo/` or `demo_dir`).
    pub demo: DemoKind,
    /// Folder of the world demo (`model/`, `adapters/vision/`, `adapters/lm/`, `world/`); none:
    /// `demo/` next to the sources the binary was built from, then `./demo`.
    pub demo_dir: Option<PathBuf>,
    /// `tokenizer.json`; none: the one in `model_dir`.
    pub tokenizer: Option<PathBuf>,
    /// Stage-1 (vision) LoRA adapter folder.
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 (language model) LoRA adapter folder.
    pub lm_adapter: Option<PathBuf>,
    /// Catalog folder; none: a demo catalog built at start-up in a temporary folder.
    pub catalog_dir: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Compute dtype; none: f32 on CPU, the checkpoint's on CUDA (as `lavic catalog build`).
    pub dtype: Option<DTypeName>,
    /// Most candidates per request (at least 2).
    pub max_candidates: usize,
    /// Prompt token budget (the LLaVA-v1.6 window is 4096).
    pub max_prompt_tokens: usize,
    /// Over-long dialogue policy.
    pub overlong_policy: OverlongPolicy,
    /// Default policy for unknown candidate ids.
    pub unknown_ids: UnknownIds,
    /// Largest dialogue in bytes (raw context or rendered turns).
    pub max_context_bytes: usize,
    /// Largest image in bytes (inline candidates and catalog upserts).
    pub max_image_bytes: usize,
    /// Largest gRPC message in bytes, both directions.
    pub max_message_bytes: usize,
    /// Requests admitted at once (queued or being processed); beyond it RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Most requests in one forward pass. 1 by default: on CPU, batching default-mode requests
    /// lowered throughput (docs/PERFORMANCE.md); the GPU overlay sets 4.
    pub max_batch: usize,
    /// Model worker threads (each runs whole batches; 1 is right for one device).
    pub workers: usize,
    /// How long a worker waits for more requests to fill a batch once it has one (0: no wait).
    pub batch_window_ms: u64,
    /// Longest a request may take when the client sets no deadline.
    pub request_timeout_secs: u64,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace_secs: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,lavic_server=debug`).
    pub log: String,
    /// Bearer token for mutating Catalog calls; none: those calls are refused.
    pub catalog_token: Option<Secret>,
    /// TLS certificate chain (PEM); TLS is on when both this and `tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Run a warm-up request before reporting SERVING.
    pub warmup: bool,
    // --- The fleet-wide catalog in Redis (instead of `catalog_dir`). ---
    /// `redis://host[:port][/db]` or `rediss://...` (TLS): the catalog lives in Redis, shared by
    /// every replica. Credentials only from LAVIC_REDIS_USERNAME and LAVIC_REDIS_PASSWORD or
    /// LAVIC_REDIS_PASSWORD_FILE, never in the URL.
    pub catalog_url: Option<String>,
    /// First part of every Redis key (to share one Redis between deployments).
    pub redis_key_prefix: String,
    /// `strict` or `eventual` freshness of cached items.
    pub redis_consistency: RedisConsistency,
    /// Per-replica item cache in front of Redis, in bytes (0: none).
    pub redis_cache_bytes: usize,
    /// Longest life of a cached item (a safety net; invalidations keep the cache right).
    pub redis_cache_ttl_secs: u64,
    /// Limit of one Redis round trip, in milliseconds.
    pub redis_timeout_ms: u64,
    /// Redis replicas that must acknowledge each catalog write (`WAIT`) before it is acknowledged.
    pub redis_wait_replicas: u32,
    /// How long that `WAIT` may take, in milliseconds.
    pub redis_wait_timeout_ms: u64,
    /// CA certificate (PEM) of a `rediss://` server with a private CA.
    pub redis_ca_file: Option<PathBuf>,
    /// Readiness turns NOT_SERVING once the catalog store has been unreachable this long
    /// (requests over cached items are still answered meanwhile).
    pub catalog_outage_secs: u64,
    /// Let UpsertItems/DeleteItems apply in memory only on a catalog folder the process cannot
    /// write (lost on restart, seen by this replica only; the response says so). Off: such writes
    /// are refused with FAILED_PRECONDITION.
    pub allow_memory_only_writes: bool,
    // Issue 11 (hardening), kept together.
    /// Largest image in pixels (width x height, read from its header before decoding).
    pub max_image_pixels: u64,
    /// Most decoded pixels of all images of one request (inline items, or upserted items).
    pub max_request_pixels: u64,
    /// Most decoded pixels held by all admitted requests together (beside `queue_capacity`):
    /// beyond it RESOURCE_EXHAUSTED. At least `max_request_pixels`.
    pub max_inflight_pixels: u64,
    /// Most open connections per port (gRPC, metrics); beyond it new ones wait to be accepted.
    pub max_connections: usize,
    /// A new connection must start talking (HTTP/2 preface, HTTP/1 request) within this time.
    pub handshake_timeout_secs: u64,
    /// Most concurrent streams (calls) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            model_dir: None,
            demo: DemoKind::default(),
            demo_dir: None,
            tokenizer: None,
            vision_adapter: None,
            lm_adapter: None,
            catalog_dir: None,
            device: "cpu".into(),
            dtype: None,
            max_candidates: 20,
            max_prompt_tokens: 4096,
            overlong_policy: OverlongPolicy::Shorten,
            unknown_ids: UnknownIds::Reject,
            max_context_bytes: 64 << 10,
            // 2 MiB per image; a message fits 20 inline images of that size plus the dialogue:
            // 20 x 2 MiB + 64 KiB + 1 MiB for ids, titles and framing (issue 11: it was 64 MiB,
            // and 1,024 streams per connection).
            max_image_bytes: 2 << 20,
            max_message_bytes: 20 * (2 << 20) + (64 << 10) + (1 << 20),
            queue_capacity: 64,
            max_batch: 1,
            workers: 1,
            batch_window_ms: 0,
            request_timeout_secs: 60,
            shutdown_grace_secs: 20,
            log_format: LogFormat::Text,
            log: "info".into(),
            catalog_token: None,
            tls_cert: None,
            tls_key: None,
            warmup: true,
            catalog_url: None,
            redis_key_prefix: "lavic".into(),
            redis_consistency: RedisConsistency::Strict,
            redis_cache_bytes: 256 << 20,
            redis_cache_ttl_secs: 600,
            redis_timeout_ms: 2000,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            redis_ca_file: None,
            catalog_outage_secs: 10,
            allow_memory_only_writes: false,
            max_image_pixels: 16_777_216,
            max_request_pixels: 33_554_432,
            max_inflight_pixels: 134_217_728,
            max_connections: 1024,
            handshake_timeout_secs: 10,
            max_concurrent_streams: 32,
        }
    }
}

/// Flags of `lavic serve`; each also reads its `LAVIC_*` variable. Unset ones fall back to the
/// TOML file, then to the defaults of [`Config`].
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (field names as in the README's table, lower case).
    #[arg(long, env = "LAVIC_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:50051].
    #[arg(long, env = "LAVIC_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Metrics listen address [default: 0.0.0.0:9090].
    #[arg(long, env = "LAVIC_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// llava-hf checkpoint folder [default: the embedded demo model].
    #[arg(long, env = "LAVIC_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Embedded demo served without --model-dir: fixture (tiny) or world (demo/) [default: fixture].
    #[arg(long, env = "LAVIC_DEMO", value_enum)]
    pub demo: Option<DemoKind>,
    /// Folder of the world demo [default: demo/ beside the sources, then ./demo].
    #[arg(long, env = "LAVIC_DEMO_DIR")]
    pub demo_dir: Option<PathBuf>,
    /// tokenizer.json [default: MODEL_DIR/tokenizer.json].
    #[arg(long, env = "LAVIC_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Stage-1 (vision) LoRA adapter folder.
    #[arg(long, env = "LAVIC_VISION_ADAPTER")]
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 (language model) LoRA adapter folder.
    #[arg(long, env = "LAVIC_LM_ADAPTER")]
    pub lm_adapter: Option<PathBuf>,
    /// Catalog folder [default: a demo catalog built in a temporary folder].
    #[arg(long, env = "LAVIC_CATALOG_DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: cpu].
    #[arg(long, env = "LAVIC_DEVICE")]
    pub device: Option<String>,
    /// Compute dtype [default: f32 on CPU, the checkpoint's on CUDA, as `lavic catalog build`].
    #[arg(long, env = "LAVIC_DTYPE", value_enum)]
    pub dtype: Option<DTypeName>,
    /// Most candidates per request [default: 20].
    #[arg(long, env = "LAVIC_MAX_CANDIDATES")]
    pub max_candidates: Option<usize>,
    /// Prompt token budget [default: 4096].
    #[arg(long, env = "LAVIC_MAX_PROMPT_TOKENS")]
    pub max_prompt_tokens: Option<usize>,
    /// Over-long dialogues: shorten from the front or reject [default: shorten].
    #[arg(long, env = "LAVIC_OVERLONG_POLICY", value_enum)]
    pub overlong_policy: Option<OverlongPolicy>,
    /// Unknown candidate ids: reject (NOT_FOUND) or fallback [default: reject].
    #[arg(long, env = "LAVIC_UNKNOWN_IDS", value_enum)]
    pub unknown_ids: Option<UnknownIds>,
    /// Largest dialogue in bytes [default: 65536].
    #[arg(long, env = "LAVIC_MAX_CONTEXT_BYTES")]
    pub max_context_bytes: Option<usize>,
    /// Largest image in bytes [default: 2097152].
    #[arg(long, env = "LAVIC_MAX_IMAGE_BYTES")]
    pub max_image_bytes: Option<usize>,
    /// Largest gRPC message in bytes [default: 42008576: 20 images of 2 MiB, the dialogue, 1 MiB].
    #[arg(long, env = "LAVIC_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Requests admitted at once [default: 64].
    #[arg(long, env = "LAVIC_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most requests per forward pass [default: 1].
    #[arg(long, env = "LAVIC_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Model worker threads [default: 1].
    #[arg(long, env = "LAVIC_WORKERS")]
    pub workers: Option<usize>,
    /// Wait this long to fill a batch [default: 0].
    #[arg(long, env = "LAVIC_BATCH_WINDOW_MS")]
    pub batch_window_ms: Option<u64>,
    /// Deadline for requests that carry none [default: 60].
    #[arg(long, env = "LAVIC_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Drain time on SIGTERM [default: 20].
    #[arg(long, env = "LAVIC_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Log format [default: text].
    #[arg(long, env = "LAVIC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter [default: info].
    #[arg(long, env = "LAVIC_LOG")]
    pub log: Option<String>,
    /// Bearer token for mutating Catalog calls (prefer the environment variable).
    #[arg(long, env = "LAVIC_CATALOG_TOKEN", hide_env_values = true)]
    pub catalog_token: Option<String>,
    /// TLS certificate (PEM).
    #[arg(long, env = "LAVIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "LAVIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Skip the warm-up request.
    #[arg(long)]
    pub no_warmup: bool,
    /// Catalog in Redis: redis://host[:port][/db] or rediss://... (instead of --catalog-dir).
    #[arg(long, env = "LAVIC_CATALOG_URL")]
    pub catalog_url: Option<String>,
    /// First part of every Redis key [default: lavic].
    #[arg(long, env = "LAVIC_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Freshness of cached items: strict or eventual [default: strict].
    #[arg(long, env = "LAVIC_REDIS_CONSISTENCY", value_enum)]
    pub redis_consistency: Option<RedisConsistency>,
    /// Per-replica item cache in bytes [default: 268435456].
    #[arg(long, env = "LAVIC_REDIS_CACHE_BYTES")]
    pub redis_cache_bytes: Option<usize>,
    /// Longest life of a cached item in seconds [default: 600].
    #[arg(long, env = "LAVIC_REDIS_CACHE_TTL_SECS")]
    pub redis_cache_ttl_secs: Option<u64>,
    /// Limit of one Redis round trip in ms [default: 2000].
    #[arg(long, env = "LAVIC_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Redis replicas that must acknowledge each write [default: 0].
    #[arg(long, env = "LAVIC_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,
    /// How long WAIT may take in ms [default: 1000].
    #[arg(long, env = "LAVIC_REDIS_WAIT_TIMEOUT_MS")]
    pub redis_wait_timeout_ms: Option<u64>,
    /// CA certificate (PEM) for rediss:// with a private CA.
    #[arg(long, env = "LAVIC_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// NOT_SERVING after the catalog store is unreachable this long [default: 10].
    #[arg(long, env = "LAVIC_CATALOG_OUTAGE_SECS")]
    pub catalog_outage_secs: Option<u64>,
    /// Accept catalog writes that cannot be made durable (read-only catalog folder).
    #[arg(long, env = "LAVIC_ALLOW_MEMORY_ONLY_WRITES")]
    pub allow_memory_only_writes: bool,
    /// Print the resolved configuration (TOML, token redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    // Issue 11 (hardening), kept together.
    /// Largest image in pixels, width x height [default: 16777216].
    #[arg(long, env = "LAVIC_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
    /// Most decoded pixels per request [default: 33554432].
    #[arg(long, env = "LAVIC_MAX_REQUEST_PIXELS")]
    pub max_request_pixels: Option<u64>,
    /// Most decoded pixels held by admitted requests together [default: 134217728].
    #[arg(long, env = "LAVIC_MAX_INFLIGHT_PIXELS")]
    pub max_inflight_pixels: Option<u64>,
    /// Most open connections per port [default: 1024].
    #[arg(long, env = "LAVIC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a new connection has to start talking [default: 10].
    #[arg(long, env = "LAVIC_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Most concurrent calls per HTTP/2 connection [default: 32].
    #[arg(long, env = "LAVIC_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
}

impl Config {
    /// Defaults, then the TOML file (if any), then `args` (flags and `LAVIC_*` env), validated.
    pub fn resolve(args: &ServeArgs) -> Result<Self> {
        let mut c = match &args.config {
            Some(path) => Self::from_toml_file(path)?,
            None => Self::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone().into(); } )* };
        }
        set!(demo);
        set!(grpc_addr, metrics_addr, device, dtype, max_candidates, max_prompt_tokens, overlong_policy);
        set!(unknown_ids, max_context_bytes, max_image_bytes, max_message_bytes, queue_capacity, max_batch);
        set!(workers, batch_window_ms, request_timeout_secs, shutdown_grace_secs, log_format, log);
        set!(redis_key_prefix, redis_consistency, redis_cache_bytes, redis_cache_ttl_secs, redis_timeout_ms);
        set!(redis_wait_replicas, redis_wait_timeout_ms, catalog_outage_secs);
        set!(max_image_pixels, max_request_pixels, max_inflight_pixels, max_connections, handshake_timeout_secs, max_concurrent_streams);
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = Some(v.clone()); } )* };
        }
        set_opt!(model_dir, demo_dir, tokenizer, vision_adapter, lm_adapter, catalog_dir, tls_cert, tls_key);
        set_opt!(catalog_url, redis_ca_file);
        if args.allow_memory_only_writes {
            c.allow_memory_only_writes = true;
        }
        if let Some(t) = &args.catalog_token {
            // Empty or not, a token given is a token: `validate` refuses an empty one, as it
            // does for the TOML file (issue 11: "" must never mean "anyone may write").
            c.catalog_token = Some(Secret(t.clone()));
        }
        if args.no_warmup {
            c.warmup = false;
        }
        c.validate()?;
        Ok(c)
    }

    /// Reads a TOML file with the field names of [`Config`] (unknown keys are an error).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks ranges and combinations; called by [`Config::resolve`] and by the server.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.max_candidates < 2 {
            return bad(format!("max_candidates must be at least 2, got {}", self.max_candidates));
        }
        if self.max_prompt_tokens < 64 {
            return bad(format!("max_prompt_tokens must be at least 64, got {}", self.max_prompt_tokens));
        }
        for (name, v) in [
            ("queue_capacity", self.queue_capacity),
            ("max_batch", self.max_batch),
            ("workers", self.workers),
            ("max_context_bytes", self.max_context_bytes),
            ("max_image_bytes", self.max_image_bytes),
            ("max_message_bytes", self.max_message_bytes),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.request_timeout_secs == 0 {
            return bad("request_timeout_secs must be positive".into());
        }
        if !(self.device == "cpu" || self.device == "cuda" || self.device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())) {
            return bad(format!("device must be cpu, cuda or cuda:N, got {:?}", self.device));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be set together".into());
        }
        if self.catalog_dir.is_some() && self.model_dir.is_none() {
            return bad("catalog_dir is set but model_dir is not: the embedded demo model cannot read another catalog".into());
        }
        if self.catalog_dir.is_some() && self.catalog_url.is_some() {
            return bad("catalog_dir and catalog_url are both set: the catalog is either a folder or a Redis store".into());
        }
        if self.catalog_url.is_some() {
            if self.catalog_outage_secs == 0 {
                return bad("catalog_outage_secs must be positive".into());
            }
            self.redis_settings(lavic_catalog::RedisCredentials::default())?;
        }
        self.validate_issue11()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return bad(format!("log filter {:?} is invalid", self.log));
        }
        Ok(())
    }

    /// The configuration as TOML, with the catalog token redacted.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        if c.catalog_token.is_some() {
            c.catalog_token = Some(Secret("***".into()));
        }
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    /// The Redis store's settings (`None` unless `catalog_url` is set), with the credentials
    /// read from the environment.
    pub fn redis_config(&self) -> Result<Option<lavic_catalog::RedisConfig>> {
        if self.catalog_url.is_none() {
            return Ok(None);
        }
        let creds = lavic_catalog::RedisCredentials::from_env().map_err(|e| Error::Config(e.to_string()))?;
        self.redis_settings(creds).map(Some)
    }

    /// Builds and checks the Redis settings with `credentials` (an error names the setting).
    fn redis_settings(&self, credentials: lavic_catalog::RedisCredentials) -> Result<lavic_catalog::RedisConfig> {
        use std::time::Duration;
        let url = self.catalog_url.clone().unwrap_or_default();
        let mut r = lavic_catalog::RedisConfig::new(url);
        r.credentials = credentials;
        r.ca_file = self.redis_ca_file.clone();
        r.key_prefix = self.redis_key_prefix.clone();
        r.consistency = match self.redis_consistency {
            RedisConsistency::Strict => lavic_catalog::Consistency::Strict,
            RedisConsistency::Eventual => lavic_catalog::Consistency::Eventual,
        };
        r.cache_bytes = self.redis_cache_bytes;
        r.cache_ttl = Duration::from_secs(self.redis_cache_ttl_secs);
        r.timeout = Duration::from_millis(self.redis_timeout_ms);
        r.wait_replicas = self.redis_wait_replicas;
        r.wait_timeout = Duration::from_millis(self.redis_wait_timeout_ms);
        if self.redis_cache_ttl_secs == 0 {
            return Err(Error::Config("redis_cache_ttl_secs must be positive".into()));
        }
        r.validate().map_err(|e| Error::Config(e.to_string()))?;
        Ok(r)
    }

    /// Whether an embedded demo ([`Config::demo`]: the world demo or the fixture one) is served.
    pub fn is_demo(&self) -> bool {
        self.model_dir.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// Hardening settings and checks (issue 11), kept together.

impl Config {
    /// The checks added for issue 11: the catalog token, ...
    fn validate_issue11(&self) -> Result<()> {
        if let Some(token) = &self.catalog_token {
            check_token(&token.0)?;
        }
        let bad = |m: String| Err(Error::Config(m));
        for (name, v) in [
            ("max_image_pixels", self.max_image_pixels),
            ("max_request_pixels", self.max_request_pixels),
            ("max_inflight_pixels", self.max_inflight_pixels),
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("max_concurrent_streams", u64::from(self.max_concurrent_streams)),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.max_request_pixels < self.max_image_pixels {
            return bad(format!(
                "max_request_pixels ({}) is below max_image_pixels ({}): one image could never be sent",
                self.max_request_pixels, self.max_image_pixels
            ));
        }
        if self.max_inflight_pixels < self.max_request_pixels {
            return bad(format!(
                "max_inflight_pixels ({}) is below max_request_pixels ({}): such a request could never be admitted",
                self.max_inflight_pixels, self.max_request_pixels
            ));
        }
        Ok(())
    }
}

/// A catalog token must be usable as a bearer token: an empty one is a configuration error from
/// every source (TOML, `LAVIC_CATALOG_TOKEN`, `--catalog-token`): to refuse catalog changes,
/// leave the token unset.
fn check_token(token: &str) -> Result<()> {
    if token.trim().is_empty() {
        return Err(Error::Config(
            "catalog_token (LAVIC_CATALOG_TOKEN, --catalog-token) is empty: leave it unset to refuse catalog changes, or set a secret".into(),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(
            "catalog_token (LAVIC_CATALOG_TOKEN, --catalog-token) must be printable ASCII without spaces (it travels in the authorization header)".into(),
        ));
    }
    Ok(())
}

/// `LAVIC_*` variables in `vars` that `lavic serve` does not know (to warn about).
pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<String> = vars
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("LAVIC_") && !KNOWN_ENV.contains(&k.as_str()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_toml_and_toml_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lavic.toml");
        std::fs::write(&path, "max_batch = 8\nqueue_capacity = 3\nlog_format = \"json\"\n").unwrap();
        let args = ServeArgs { config: Some(path), max_batch: Some(2), ..Default::default() };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.max_batch, 2);
        assert_eq!(c.queue_capacity, 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_candidates, 20);
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lavic.toml");
        std::fs::write(&path, "max_bach = 8\n").unwrap();
        let err = Config::resolve(&ServeArgs { config: Some(path), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("max_bach"), "{err}");
        let err = Config::resolve(&ServeArgs { max_candidates: Some(1), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("max_candidates"), "{err}");
        let err = Config::resolve(&ServeArgs { device: Some("tpu".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("device"), "{err}");
    }

    #[test]
    fn unknown_lavic_variables_are_listed() {
        let vars = [("LAVIC_MAX_BATCH", "1"), ("LAVIC_MAXBATCH", "1"), ("PATH", "/bin")];
        let unknown = unknown_env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(unknown, vec!["LAVIC_MAXBATCH".to_string()]);
    }

    #[test]
    fn a_redis_catalog_is_checked_at_start() {
        let ok = ServeArgs { catalog_url: Some("redis://127.0.0.1:6379/2".into()), redis_wait_replicas: Some(1), ..Default::default() };
        let c = Config::resolve(&ok).unwrap();
        let r = c.redis_settings(lavic_catalog::RedisCredentials::default()).unwrap();
        assert_eq!((r.url.as_str(), r.wait_replicas, r.key_prefix.as_str()), ("redis://127.0.0.1:6379/2", 1, "lavic"));
        let both = ServeArgs { catalog_dir: Some("/c".into()), model_dir: Some("/m".into()), ..ok.clone() };
        let err = Config::resolve(&both).unwrap_err().to_string();
        assert!(err.contains("catalog_dir") && err.contains("catalog_url"), "{err}");
        let err = Config::resolve(&ServeArgs { catalog_url: Some("redis://u:hunter2@h:1".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("catalog_url") && !err.contains("hunter2"), "{err}");
        let err = Config::resolve(&ServeArgs { catalog_url: Some("http://h:1".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("catalog_url"), "{err}");
        let err = Config::resolve(&ServeArgs { catalog_outage_secs: Some(0), ..ok }).unwrap_err().to_string();
        assert!(err.contains("catalog_outage_secs"), "{err}");
    }

    #[test]
    fn an_empty_token_is_a_configuration_error_from_every_source() {
        for bad in ["", "   ", "has space", "tab\there"] {
            let err = Config::resolve(&ServeArgs { catalog_token: Some(bad.into()), ..Default::default() }).unwrap_err();
            assert!(err.to_string().contains("catalog_token"), "{bad:?}: {err}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("lavic.toml");
            std::fs::write(&path, format!("catalog_token = {bad:?}\n")).unwrap();
            let err = Config::resolve(&ServeArgs { config: Some(path), ..Default::default() }).unwrap_err();
            assert!(err.to_string().contains("catalog_token"), "{bad:?}: {err}");
        }
        let c = Config::resolve(&ServeArgs { catalog_token: Some("s3cret".into()), ..Default::default() }).unwrap();
        assert_eq!(c.catalog_token, Some(Secret("s3cret".into())));
    }

    #[test]
    fn the_fixture_demo_is_the_default_and_the_world_demo_a_choice() {
        let c = Config::resolve(&ServeArgs::default()).unwrap();
        assert_eq!((c.demo, c.demo_dir.as_deref(), c.is_demo()), (DemoKind::Fixture, None, true));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lavic.toml");
        std::fs::write(&path, "demo = \"world\"\ndemo_dir = \"/srv/demo\"\n").unwrap();
        let c = Config::resolve(&ServeArgs { config: Some(path.clone()), ..Default::default() }).unwrap();
        assert_eq!((c.demo, c.demo_dir.as_deref()), (DemoKind::World, Some(Path::new("/srv/demo"))));
        let c = Config::resolve(&ServeArgs { config: Some(path.clone()), demo: Some(DemoKind::Fixture), ..Default::default() }).unwrap();
        assert_eq!(c.demo, DemoKind::Fixture, "the flag beats the file");
        std::fs::write(&path, "demo = \"tiny\"\n").unwrap();
        let err = Config::resolve(&ServeArgs { config: Some(path), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("tiny"), "{err}");
    }

    #[test]
    fn the_token_is_not_printed() {
        let c = Config { catalog_token: Some(Secret("hunter2".into())), ..Default::default() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
