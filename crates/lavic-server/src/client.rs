//! Client commands of the `lavic` binary: `lavic healthcheck` (container health checks) and
//! `lavic recommend` (a quick way to try the service).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use crate::proto::{self, recommend_request::Dialogue, recommender_client::RecommenderClient};

/// The default gRPC address of the client commands: 127.0.0.1 with `LAVIC_GRPC_ADDR`'s port.
pub fn default_addr() -> String {
    let port = std::env::var("LAVIC_GRPC_ADDR")
        .ok()
        .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
        .unwrap_or(50051);
    format!("http://127.0.0.1:{port}")
}

/// TLS flags shared by the client commands.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Connect with TLS, trusting this CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Server name to verify [default: the address's host].
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
}

fn endpoint(addr: &str, timeout: Duration, tls: &TlsArgs) -> anyhow::Result<Endpoint> {
    let scheme = if tls.tls_ca.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let mut e = Endpoint::from_shared(uri)?.connect_timeout(timeout).timeout(timeout);
    if let Some(ca) = &tls.tls_ca {
        let pem = std::fs::read(ca).map_err(|err| anyhow::anyhow!("{}: {err}", ca.display()))?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(d) = &tls.tls_domain {
            cfg = cfg.domain_name(d.clone());
        }
        e = e.tls_config(cfg)?;
    }
    Ok(e)
}

/// Flags of `lavic healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Server address [default: 127.0.0.1 with LAVIC_GRPC_ADDR's port, else 50051].
    #[arg(long)]
    pub addr: Option<String>,
    /// Health service to check ("" is the whole server).
    #[arg(long, default_value = crate::server::RECOMMENDER_SERVICE)]
    pub service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Checks `grpc.health.v1`; Ok(true) iff the service is SERVING.
pub async fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<bool> {
    let addr = args.addr.clone().unwrap_or_else(default_addr);
    let timeout = Duration::from_millis(args.timeout_ms);
    let channel = tokio::time::timeout(timeout, endpoint(&addr, timeout, &args.tls)?.connect()).await??;
    let mut client = HealthClient::new(channel);
    let status = client.check(HealthCheckRequest { service: args.service.clone() }).await?.into_inner().status;
    let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    println!("{}: {}", if args.service.is_empty() { "(server)" } else { &args.service }, status.as_str_name());
    Ok(status == ServingStatus::Serving)
}

/// Decoding mode flag.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// One-pass candidate scoring.
    Default,
    /// The reference's greedy generation.
    Free,
}

/// Flags of `lavic recommend`.
#[derive(Debug, Clone, Args)]
pub struct RecommendArgs {
    /// Server address [default: 127.0.0.1 with LAVIC_GRPC_ADDR's port, else 50051].
    #[arg(long)]
    pub addr: Option<String>,
    /// File holding the dialogue (the reference's context string, e.g. `<submission>..</submission>`).
    #[arg(long, conflicts_with = "context")]
    pub context_file: Option<PathBuf>,
    /// The dialogue itself.
    #[arg(long)]
    pub context: Option<String>,
    /// Candidate item ids, comma separated (2 or more).
    #[arg(long, value_delimiter = ',', required = true)]
    pub candidates: Vec<String>,
    /// Decoding mode.
    #[arg(long, value_enum, default_value = "default")]
    pub mode: ModeArg,
    /// Print every candidate's score.
    #[arg(long)]
    pub scores: bool,
    /// Use the reference's fallback for unknown ids instead of failing.
    #[arg(long)]
    pub fallback: bool,
    /// Request id (echoed in the server logs).
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// Deadline in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Sends one recommendation and prints the answer.
pub async fn recommend(args: &RecommendArgs) -> anyhow::Result<()> {
    let context = match (&args.context_file, &args.context) {
        (Some(f), _) => std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
        (None, Some(c)) => c.clone(),
        (None, None) => anyhow::bail!("give the dialogue with --context-file or --context"),
    };
    let addr = args.addr.clone().unwrap_or_else(default_addr);
    let timeout = Duration::from_secs(args.timeout_secs);
    let channel: Channel = endpoint(&addr, timeout, &args.tls)?.connect().await?;
    let mut client = RecommenderClient::new(channel);
    let mut request = tonic::Request::new(proto::RecommendRequest {
        request_id: args.request_id.clone(),
        dialogue: Some(Dialogue::Context(context)),
        candidate_ids: args.candidates.clone(),
        mode: match args.mode {
            ModeArg::Default => proto::Mode::Default,
            ModeArg::Free => proto::Mode::Free,
        } as i32,
        include_scores: args.scores,
        unknown_id_policy: if args.fallback { proto::UnknownIdPolicy::Fallback } else { proto::UnknownIdPolicy::Unspecified } as i32,
        ..Default::default()
    });
    request.set_timeout(timeout);
    let r = client.recommend(request).await?.into_inner();
    println!("item_id:       {}", r.item_id);
    println!("valid:         {}", r.valid);
    println!("raw_answer:    {:?}", r.raw_answer);
    println!("prompt_tokens: {} (shortened by {})", r.prompt_tokens, r.shortened_tokens);
    if !r.fallback_ids.is_empty() {
        println!("fallback_ids:  {}", r.fallback_ids.join(","));
    }
    if let Some(t) = r.timings {
        println!("timings:       total {} us, queue {} us, inference {} us (batch of {})", t.total_us, t.queue_us, t.inference_us, r.batch_size);
    }
    for s in &r.scores {
        println!("  {:<24} logprob {:>10.4}  mean {:>8.4}  tokens {}", s.id, s.logprob, s.mean_logprob, s.tokens);
    }
    println!("request_id:    {}", r.request_id);
    Ok(())
}
