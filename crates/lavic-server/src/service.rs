//! The gRPC handlers of `lavic.v1.Recommender` and `lavic.v1.Catalog`. Each is thin: validate
//! the message, call [`Core`], map the result (one `From<Error> for Status` does the codes).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::proto::{self, catalog_server, recommender_server};
use crate::queue::Outcome;
use crate::request::{self, Validated};

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
        let call = self.core.call(&request, &request.get_ref().request_id);
        let span = tracing::info_span!("recommend", request_id = %call.request_id);
        let core = &self.core;
        let result = async {
            let v: Validated = request::validate(request.into_inner(), &core.limits)?;
            let (scores, mode) = (v.include_scores, v.mode);
            let outcome = core.recommend(&call, v).await?;
            let mode = if mode == lavic_model::Mode::Free { proto::Mode::Free } else { proto::Mode::Default };
            let valid = outcome.recommendation.valid;
            core.metrics
                .results
                .get_or_create(&crate::metrics::ResultLabels {
                    mode: if mode == proto::Mode::Free { "free" } else { "default" }.into(),
                    valid: valid.to_string(),
                })
                .inc();
            let mut resp = response(call.request_id.clone(), scores, mode, outcome);
            if let Some(t) = resp.timings.as_mut() {
                t.total_us = call.arrival.elapsed().as_micros() as u64;
            }
            Ok(resp)
        }
        .instrument(span)
        .await;
        core.finish("Recommend", &call, &result);
        Ok(Response::new(result?))
    }

    async fn model_info(&self, request: Request<proto::ModelInfoRequest>) -> std::result::Result<Response<proto::ModelInfoResponse>, Status> {
        let call = self.core.call(&request, "");
        let result = self.core.engine().map(|e| e.model_info());
        self.core.finish("ModelInfo", &call, &result);
        Ok(Response::new(result?))
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
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.0.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Unauthenticated)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_items(req: proto::UpsertItemsRequest, max_image_bytes: usize) -> Result<Vec<lavic_catalog::NewItem>> {
    if req.items.is_empty() {
        return Err(Error::invalid("items", "no items"));
    }
    let mut seen = std::collections::HashSet::new();
    req.items
        .into_iter()
        .enumerate()
        .map(|(i, it)| {
            request::check_id(&format!("items[{i}].id"), &it.id)?;
            request::check_title(&format!("items[{i}].title"), &it.title)?;
            if !seen.insert(it.id.clone()) {
                return Err(Error::invalid(format!("items[{i}].id"), format!("duplicate id {}", it.id)));
            }
            if it.image.len() > max_image_bytes {
                return Err(Error::invalid(
                    format!("items[{i}].image"),
                    format!("{} bytes, over the limit of {max_image_bytes}", it.image.len()),
                ));
            }
            let metadata = if it.metadata_json.trim().is_empty() {
                serde_json::json!({})
            } else {
                match serde_json::from_str::<serde_json::Value>(&it.metadata_json) {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    Ok(_) => return Err(Error::invalid(format!("items[{i}].metadata_json"), "must be a JSON object")),
                    Err(e) => return Err(Error::invalid(format!("items[{i}].metadata_json"), e.to_string())),
                }
            };
            Ok(lavic_catalog::NewItem {
                id: it.id,
                title: it.title,
                image: (!it.image.is_empty()).then_some(it.image),
                metadata,
            })
        })
        .collect()
}

/// Runs blocking catalog I/O off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("catalog task failed: {e}")))?
}

#[tonic::async_trait]
impl catalog_server::Catalog for CatalogService {
    async fn upsert_items(&self, request: Request<proto::UpsertItemsRequest>) -> std::result::Result<Response<proto::UpsertItemsResponse>, Status> {
        let call = self.core.call(&request, "");
        let result = async {
            self.authorize(&request)?;
            let items = new_items(request.into_inner(), self.core.limits.max_image_bytes)?;
            let report = self.core.upsert(&call, items).await?;
            Ok(proto::UpsertItemsResponse {
                encoded: report.encoded as u32,
                reused: report.reused as u32,
                unchanged: report.unchanged as u32,
                failed: report.failed.into_iter().map(|(id, reason)| proto::ItemFailure { id, reason }).collect(),
                missing_images: report.missing_images.len() as u32,
                catalog_items: self.core.engine()?.store.len() as u64,
            })
        }
        .await;
        self.core.finish("UpsertItems", &call, &result);
        Ok(Response::new(result?))
    }

    async fn get_item(&self, request: Request<proto::GetItemRequest>) -> std::result::Result<Response<proto::GetItemResponse>, Status> {
        let call = self.core.call(&request, "");
        let result = async {
            let id = request.into_inner().id;
            request::check_id("id", &id)?;
            let engine = self.core.engine()?.clone();
            let found = blocking(move || engine.store.get(&id).map(|f| (id, f))).await?;
            match found {
                (_, Some(info)) => Ok(proto::GetItemResponse {
                    id: info.id,
                    title: info.title,
                    image_missing: info.image_missing,
                    image_sha256: info.image_sha256,
                    metadata_json: info.metadata.to_string(),
                }),
                (id, None) => Err(Error::NotFound { what: "item", ids: vec![id] }),
            }
        }
        .await;
        self.core.finish("GetItem", &call, &result);
        Ok(Response::new(result?))
    }

    async fn delete_items(&self, request: Request<proto::DeleteItemsRequest>) -> std::result::Result<Response<proto::DeleteItemsResponse>, Status> {
        let call = self.core.call(&request, "");
        let result = async {
            self.authorize(&request)?;
            let ids = request.into_inner().ids;
            if ids.is_empty() {
                return Err(Error::invalid("ids", "no ids"));
            }
            for (i, id) in ids.iter().enumerate() {
                request::check_id(&format!("ids[{i}]"), id)?;
            }
            let engine = self.core.engine()?.clone();
            let (deleted, items) = blocking(move || {
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let n = engine.store.delete(&refs)?;
                Ok((n, engine.store.len()))
            })
            .await?;
            self.core.metrics.catalog_items.set(items as i64);
            Ok(proto::DeleteItemsResponse { deleted: deleted as u32, catalog_items: items as u64 })
        }
        .await;
        self.core.finish("DeleteItems", &call, &result);
        Ok(Response::new(result?))
    }
}
