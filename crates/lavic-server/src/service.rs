//! The gRPC handlers of `lavic.v1.Recommender` and `lavic.v1.Catalog`. Each is thin: validate
//! the message ([`crate::validation`]), call [`Core`], build the answer. The plumbing around
//! them (request id, deadline, span, metrics, log line, status codes) is [`Core::handle`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::proto::{self, catalog_server, recommender_server};
use crate::queue::Outcome;
use crate::validation;

/// `lavic.v1.Recommender`.
#[derive(Clone)]
pub struct RecommenderService {
    core: Arc<Core>,
}

impl RecommenderService {
    /// A handler over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn response(request_id: String, include_scores: bool, mode: proto::Mode, o: Outcome) -> proto::RecommendResponse {
    let r = o.recommendation;
    let us = |d: std::time::Duration| d.as_micros() as u64;
    proto::RecommendResponse {
        request_id,
        item_id: r.pick.unwrap_or_default(),
        valid: r.valid,
        raw_answer: r.raw_answer,
        reference_parsed_id: r.parsed_id.unwrap_or_default(),
        scores: if include_scores {
            r.scores
                .into_iter()
                .map(|s| proto::CandidateScore { id: s.id, logprob: s.logprob, mean_logprob: s.mean_logprob, tokens: s.tokens as u32 })
                .collect()
        } else {
            Vec::new()
        },
        prompt_tokens: r.prompt_tokens as u32,
        shortened_tokens: r.shortened_tokens as u32,
        fallback_ids: o.fallback_ids,
        mode: mode as i32,
        batch_size: o.batch_size as u32,
        timings: Some(proto::Timings { total_us: 0, queue_us: us(o.queue_time), inference_us: us(o.inference_time) }),
    }
}

#[tonic::async_trait]
impl recommender_server::Recommender for RecommenderService {
    async fn recommend(&self, request: Request<proto::RecommendRequest>) -> std::result::Result<Response<proto::RecommendResponse>, Status> {
        let core = &self.core;
        core.handle("Recommend", request, |call, request| async move {
            let v = validation::recommend(request.into_inner(), &core.limits)?;
            let (scores, free) = (v.include_scores, v.mode == lavic_model::Mode::Free);
            let outcome = core.recommend(&call, v).await?;
            let mode = if free { proto::Mode::Free } else { proto::Mode::Default };
            let labels = crate::metrics::ResultLabels {
                mode: if free { "free" } else { "default" }.into(),
                valid: outcome.recommendation.valid.to_string(),
            };
            core.metrics.results.get_or_create(&labels).inc();
            let mut resp = response(call.request_id.clone(), scores, mode, outcome);
            if let Some(t) = resp.timings.as_mut() {
                t.total_us = call.arrival.elapsed().as_micros() as u64;
            }
            Ok(resp)
        })
        .await
    }

    async fn model_info(&self, request: Request<proto::ModelInfoRequest>) -> std::result::Result<Response<proto::ModelInfoResponse>, Status> {
        let core = &self.core;
        core.handle("ModelInfo", request, |_, _| async move { core.engine().map(|e| e.model_info()) }).await
    }
}

/// `lavic.v1.Catalog`.
#[derive(Clone)]
pub struct CatalogService {
    core: Arc<Core>,
}

impl CatalogService {
    /// A handler over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Mutating calls need `authorization: Bearer <LAVIC_CATALOG_TOKEN>`; with no token
    /// configured they are refused.
    fn authorize<T>(&self, request: &Request<T>) -> Result<()> {
        let Some(token) = &self.core.config.catalog_token else {
            return Err(Error::PermissionDenied(
                "catalog changes are disabled on this server (no LAVIC_CATALOG_TOKEN configured)".into(),
            ));
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        // No header (or an empty token) never matches, whatever the configured token.
        let Some(given) = given.filter(|g| !g.is_empty()) else { return Err(Error::Unauthenticated) };
        if !token.0.is_empty() && constant_time_eq(given.as_bytes(), token.0.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Unauthenticated)
        }
    }
}

/// Compares two tokens in time independent of where they differ and of their lengths: both
/// are hashed (SHA-256) and the digests compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    let diff = x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q));
    std::hint::black_box(diff) == 0
}

/// Runs blocking catalog I/O off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("catalog task failed: {e}")))?
}

#[tonic::async_trait]
impl catalog_server::Catalog for CatalogService {
    async fn upsert_items(&self, request: Request<proto::UpsertItemsRequest>) -> std::result::Result<Response<proto::UpsertItemsResponse>, Status> {
        let core = &self.core;
        core.handle("UpsertItems", request, |call, request| async move {
            self.authorize(&request)?;
            let items = validation::upsert_items(request.into_inner(), &core.limits)?;
            let report = core.upsert(&call, items).await?;
            Ok(proto::UpsertItemsResponse {
                encoded: report.encoded as u32,
                reused: report.reused as u32,
                unchanged: report.unchanged as u32,
                failed: report.failed.into_iter().map(|(id, reason)| proto::ItemFailure { id, reason }).collect(),
                missing_images: report.missing_images.len() as u32,
                catalog_items: core.engine()?.store.len() as u64,
                memory_only: core.engine()?.store.memory_only(),
            })
        })
        .await
    }

    async fn get_item(&self, request: Request<proto::GetItemRequest>) -> std::result::Result<Response<proto::GetItemResponse>, Status> {
        let core = &self.core;
        core.handle("GetItem", request, |_, request| async move {
            let id = validation::get_item(request.into_inner())?;
            let engine = core.engine()?.clone();
            let found = blocking(move || engine.store.get(&id).map(|f| (id, f))).await?;
            match found {
                (_, Some(info)) => Ok(proto::GetItemResponse {
                    id: info.id,
                    title: info.title,
                    image_missing: info.image_missing,
                    image_sha256: info.image_sha256,
                    metadata_json: info.metadata,
                }),
                (id, None) => Err(Error::NotFound { what: "item", ids: vec![id] }),
            }
        })
        .await
    }

    async fn delete_items(&self, request: Request<proto::DeleteItemsRequest>) -> std::result::Result<Response<proto::DeleteItemsResponse>, Status> {
        let core = &self.core;
        core.handle("DeleteItems", request, |_, request| async move {
            self.authorize(&request)?;
            let ids = validation::delete_items(request.into_inner())?;
            let engine = core.engine()?.clone();
            let (deleted, items) = blocking(move || {
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let n = engine.store.delete(&refs)?;
                Ok((n, engine.store.len()))
            })
            .await?;
            Ok(proto::DeleteItemsResponse { deleted: deleted as u32, catalog_items: items as u64, memory_only: core.engine()?.store.memory_only() })
        })
        .await
    }
}
