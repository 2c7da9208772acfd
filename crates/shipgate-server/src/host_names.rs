//! Each template's `listen` address, where its on-demand environments are reached by name:
//! a request for `pr-123.preview.localhost` is passed on to `pr-123`'s router. Names of
//! environments that do not exist (or no longer) are answered 404 with what there is.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use shipgate_core::on_demand::TemplateConfig;
use shipgate_engine::Engine;

use crate::lead::{Forwarder, pass_on};

/// Serves every template that names its environments, until the returned tasks are dropped.
pub(crate) async fn serve(
    engine: &Arc<Engine>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for template in engine
        .config()
        .templates
        .iter()
        .filter(|t| t.host_suffix.is_some())
    {
        let Some(listen) = template.listen else {
            continue;
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!("template {} cannot listen on {listen} for its host names: {e}; change its `listen`", template.name)
        })?;
        let client: Forwarder =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let (engine, template) = (Arc::clone(engine), template.clone());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (engine, template, client) =
                (Arc::clone(&engine), template.clone(), client.clone());
            async move { answer(&engine, &template, &client, request).await }
        });
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the host names of a template stopped being served: {e}");
            }
        }));
    }
    Ok(tasks)
}

async fn answer(
    engine: &Engine,
    template: &TemplateConfig,
    client: &Forwarder,
    request: axum::extract::Request,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let config = engine.config();
    let env = template
        .env_of_host(&host)
        .and_then(|name| config.environment(&name).cloned())
        .filter(|e| e.template.as_ref() == Some(&template.name));
    let Some(env) = env else {
        let names: Vec<String> = config
            .environments
            .iter()
            .filter(|e| e.template.as_ref() == Some(&template.name))
            .filter_map(|e| template.host_name(&e.name))
            .collect();
        let there = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no environment of template {} is named `{host}`; there are: {there}\n",
                template.name
            ),
        )
            .into_response();
    };
    match pass_on(client, &format!("http://{}", env.listen), request).await {
        Ok(answer) => answer,
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("{} does not answer on {} ({e})\n", env.name, env.listen),
        )
            .into_response(),
    }
}
