//! `xtrail.v1.Events/Query` (and the HTTP API's `/api/events`): one page of stored events
//! by time range and filter, newest or oldest first, continued with a page token (the last
//! cursor of the previous page). A page holds at most `limit` events and about
//! [`crate::storage::PAGE_MAX_BYTES`] of them; `next_page_token` is set whenever it was cut.

use std::sync::Arc;

use tonic::Status;
use xtrail_proto::v1::{self, QueryRequest, QueryResponse};

use crate::filter::EventFilter;
use crate::metrics::inc;
use crate::storage::{Order, QuerySpec};
use crate::subscribe::Hub;

/// Page size when the request gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page.
pub const MAX_LIMIT: u32 = 10_000;

/// Checks a query request and turns it into a storage query.
pub fn spec(req: &QueryRequest) -> Result<QuerySpec, Status> {
    let filter = EventFilter::compile(req.filter.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "limit {n} is above the maximum of {MAX_LIMIT}"
            )))
        }
        n => n,
    };
    let after_cursor = if req.page_token.is_empty() {
        None
    } else {
        Some(req.page_token.parse::<u64>().map_err(|_| {
            Status::invalid_argument(format!(
                "page_token {:?} is not a token this collector issued",
                req.page_token
            ))
        })?)
    };
    let from = (req.from_ts_us != 0).then_some(req.from_ts_us);
    let to = (req.to_ts_us != 0).then_some(req.to_ts_us);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(Status::invalid_argument(format!(
                "empty time range: from_ts_us {f} is not before to_ts_us {t}"
            )));
        }
    }
    let order = match v1::Order::try_from(req.order) {
        Ok(v1::Order::NewestFirst) => Order::NewestFirst,
        Ok(v1::Order::OldestFirst) => Order::OldestFirst,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown order {}",
                req.order
            )))
        }
    };
    Ok(QuerySpec {
        filter,
        from_ts_us: from,
        to_ts_us: to,
        after_cursor,
        limit: limit as usize,
        order,
    })
}

/// Runs one query page.
pub async fn query(hub: &Hub, req: QueryRequest) -> Result<QueryResponse, Status> {
    let spec = spec(&req)?;
    let storage = Arc::clone(&hub.storage);
    let page = tokio::task::spawn_blocking(move || storage.query(&spec))
        .await
        .map_err(|e| Status::internal(format!("query task: {e}")))?
        .map_err(|e| {
            inc(&hub.metrics.storage_errors);
            Status::unavailable(format!("storage: {e}"))
        })?;
    inc(&hub.metrics.queries);
    let next_page_token = if page.more {
        page.events
            .last()
            .map(|e| e.cursor.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(QueryResponse {
        events: page.events,
        next_page_token,
    })
}
