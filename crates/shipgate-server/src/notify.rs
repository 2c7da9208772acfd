//! `/api/v1/notify`: the notification targets with how their deliveries stand and the
//! dead-letter list, sending dead deliveries again, and a test event for one target.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_api::answers::{NotifyTargetView, NotifyView};
use shipgate_api::requests::{DeadDeliveries, NotifyRetryRequest, NotifyTestRequest};
use shipgate_core::{Action, EventKind};
use shipgate_store::{Delivery, DeliveryStatus, NewEvent};

use crate::AppState;
use crate::extract::{ApiJson, Caller};
use crate::problem::Problem;

type ApiResult<T> = Result<T, Problem>;

/// How many deliveries the counts look at.
const COUNTED: i64 = 100_000;

fn store_error(e: shipgate_store::StoreError) -> Problem {
    shipgate_engine::EngineError::from(e).into()
}

/// `GET /api/v1/notify`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<NotifyView>> {
    caller.allow(Action::Read, None)?;
    let all: Vec<Delivery> = state
        .engine
        .store()
        .deliveries(None, COUNTED)
        .await
        .map_err(store_error)?;
    let count = |target: &str, status: DeliveryStatus| {
        all.iter()
            .filter(|d| d.target == target && d.status == status)
            .count() as u64
    };
    let targets = state
        .engine
        .config()
        .notify
        .iter()
        .map(|t| NotifyTargetView {
            name: t.name.clone(),
            url: shipgate_core::notify::shown_url(&t.url),
            format: t.format.as_str().to_owned(),
            events: t.events.clone(),
            signed: t.secret.is_some() || t.secret_env.is_some(),
            delivered: count(&t.name, DeliveryStatus::Delivered),
            pending: count(&t.name, DeliveryStatus::Pending),
            dead: count(&t.name, DeliveryStatus::Dead),
        })
        .collect();
    // A delivery carries any environment's event: only a token limited to no environment sees
    // them, and never a target's full URL (rows written before it was hidden at send time).
    let config = state.engine.config();
    let urls: Vec<&str> = config.notify.iter().map(|t| t.url.as_str()).collect();
    let dead = all
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Dead && caller.grant().envs.is_empty())
        .map(|mut d| {
            d.last_error = d
                .last_error
                .map(|e| shipgate_core::notify::without_urls(&e, urls.iter().copied()));
            d
        })
        .collect();
    Ok(Json(NotifyView { targets, dead }))
}

/// `POST /api/v1/notify/retry` (admin): dead deliveries back to pending, sent again at once.
pub(crate) async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<NotifyRetryRequest>,
) -> ApiResult<Json<Vec<Delivery>>> {
    caller.allow(Action::ManageTokens, None)?;
    let which = req
        .deliveries()
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid retry", e))?;
    let store = state.engine.store();
    let ids: Vec<i64> = match which {
        DeadDeliveries::These(ids) => ids,
        DeadDeliveries::All => store
            .deliveries(Some(DeliveryStatus::Dead), COUNTED)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|d| d.id)
            .collect(),
    };
    // Every dead delivery, when there is none, is nothing to do rather than a mistake.
    if ids.is_empty() {
        return Ok(Json(Vec::new()));
    }
    let event = NewEvent {
        actor: caller.name().to_owned(),
        kind: EventKind::NotifyRetried,
        app: None,
        env: None,
        promotion_id: None,
        message: format!("dead deliveries sent again: {ids:?}"),
        data: serde_json::json!({ "deliveries": ids }),
    };
    let again = store
        .retry_deliveries(&ids, event)
        .await
        .map_err(store_error)?;
    if again.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no such dead delivery",
            format!("none of {ids:?} is on the dead-letter list (shipgate notify list shows it)"),
        ));
    }
    Ok(Json(again))
}

/// `POST /api/v1/notify/test` (admin): a `notify.test` event for one target.
pub(crate) async fn test(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<NotifyTestRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.allow(Action::ManageTokens, None)?;
    let id = state
        .engine
        .notify_test(caller.grant(), &req.target)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "event_id": id, "target": req.target })),
    ))
}
