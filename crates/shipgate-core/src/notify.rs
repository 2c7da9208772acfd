//! Notifications: which events reach which target (`[notify.NAME]`), the bodies they are sent
//! as (CloudEvents 1.0 structured JSON, or a Slack incoming-webhook message), the Standard
//! Webhooks signature of a body, and when a failed delivery is tried again.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// How a target wants its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents 1.0 structured JSON, signed as Standard Webhooks says.
    CloudEvents,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

impl Format {
    /// The config's word for it.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "cloudevents" => Ok(Format::CloudEvents),
            "slack" => Ok(Format::Slack),
            other => Err(format!(
                "`{other}` is not a notification format; write \"cloudevents\" or \"slack\""
            )),
        }
    }

    /// The config's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::CloudEvents => "cloudevents",
            Format::Slack => "slack",
        }
    }
}

/// A notification target as the config declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name (`[notify.NAME]`).
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event kinds, exact or ending in `.*` (`promotion.failed`, `environment.*`); `*` is all.
    pub events: Vec<String>,
    /// Only events of these environments (none: all).
    pub envs: Vec<String>,
    /// Only events of these apps (none: all).
    pub apps: Vec<String>,
    /// How events are sent.
    pub format: Format,
    /// The signing secret (`whsec_` and base64), from `secret` or the variable `secret_env`.
    pub secret: Option<String>,
    /// The variable the secret is read from, when it comes from one.
    pub secret_env: Option<String>,
    /// Attempts before a delivery goes to the dead-letter list.
    pub max_attempts: u32,
}

/// The attempts a delivery gets unless `max_attempts` says.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

impl Target {
    /// Whether an event of `kind` about `app` in `env` goes to this target.
    pub fn wants(&self, kind: &str, app: Option<&str>, env: Option<&str>) -> bool {
        let kind_ok = self.events.iter().any(|p| matches_kind(p, kind));
        let env_ok = self.envs.is_empty() || env.is_some_and(|e| self.envs.iter().any(|x| x == e));
        let app_ok = self.apps.is_empty() || app.is_some_and(|a| self.apps.iter().any(|x| x == a));
        kind_ok && env_ok && app_ok
    }
}

/// `scheme://host:port/…` of a target's URL, as it is shown or stored anywhere: its path and
/// query may be a secret (Slack's are), and so may a `user:password@`.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}/…")
}

/// `text` (an error from a delivery) with each of `urls` replaced by its [`shown_url`].
pub fn without_urls<'a>(text: &str, urls: impl IntoIterator<Item = &'a str>) -> String {
    let mut urls: Vec<&str> = urls.into_iter().collect();
    // A URL that another one starts with must not leave the other's tail behind.
    urls.sort_by_key(|u| std::cmp::Reverse(u.len()));
    urls.into_iter().fold(text.to_owned(), |out, url| {
        out.replace(url, &shown_url(url))
    })
}

/// Whether `kind` matches `pattern`: exactly, `family.*`, or `*`.
pub fn matches_kind(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(family) => kind
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

/// An event as a notification body: what is sent, and its content type.
pub struct Body {
    /// The JSON text.
    pub text: String,
    /// `application/cloudevents+json` or `application/json`.
    pub content_type: &'static str,
}

/// The body of an event for `format`. `id` is the message id (`webhook-id`), `source` names
/// the server (`shipgate://host`), `event` is the audit event as its API shows it.
pub fn body(format: Format, id: &str, source: &str, event: &Value) -> Body {
    let kind = event.get("kind").and_then(Value::as_str).unwrap_or("event");
    match format {
        Format::CloudEvents => {
            let mut ce = json!({
                "specversion": "1.0",
                "id": id,
                "source": source,
                "type": format!("dev.shipgate.{kind}"),
                "time": event.get("at").cloned().unwrap_or(Value::Null),
                "datacontenttype": "application/json",
                "data": event,
            });
            let subject = [event.get("app"), event.get("env")]
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("/");
            if !subject.is_empty() {
                ce["subject"] = Value::String(subject);
            }
            Body {
                text: ce.to_string(),
                content_type: "application/cloudevents+json",
            }
        }
        Format::Slack => {
            let message = event.get("message").and_then(Value::as_str).unwrap_or("");
            let actor = event.get("actor").and_then(Value::as_str).unwrap_or("");
            Body {
                text: json!({ "text": format!("*{kind}* {message} (by {actor})") }).to_string(),
                content_type: "application/json",
            }
        }
    }
}

/// The Standard Webhooks signature of `body` sent as message `id` at `timestamp` (Unix
/// seconds) with `secret` (`whsec_` and the base64 key): `v1,` and the base64 HMAC-SHA256 of
/// `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| format!("the signing secret is not `whsec_` and base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("v1,{signature}"))
}

/// How long to wait before attempt `attempt + 1` after `attempt` failed ones: 1 s, 2 s, 4 s, …
/// up to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_url_is_shown_without_its_path_query_or_password() {
        let url = "https://bot:pw@hooks.example.com:8443/services/T0PSECRET?k=v";
        assert_eq!(shown_url(url), "https://hooks.example.com:8443/…");
        let error = format!("POST {url}: connection refused ({url})");
        assert_eq!(
            without_urls(&error, [url]),
            "POST https://hooks.example.com:8443/…: connection refused (https://hooks.example.com:8443/…)"
        );
    }

    #[test]
    fn patterns_pick_the_events_a_target_wants() {
        let t = Target {
            name: "ops".into(),
            url: "http://x".into(),
            events: vec!["promotion.failed".into(), "environment.*".into()],
            envs: vec!["production".into()],
            apps: vec![],
            format: Format::CloudEvents,
            secret: None,
            secret_env: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        };
        assert!(t.wants("promotion.failed", Some("web"), Some("production")));
        assert!(t.wants("environment.unhealthy", None, Some("production")));
        assert!(!t.wants("promotion.succeeded", Some("web"), Some("production")));
        assert!(!t.wants("promotion.failed", Some("web"), Some("staging")));
        assert!(!t.wants("environmental", None, Some("production")));
        assert!(matches_kind("*", "anything.at_all"));
    }

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // The example of the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign("whsec_!!!", "m", 1, "b").is_err());
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn bodies_are_cloudevents_or_slack() {
        let event = json!({"id": 7, "kind": "promotion.failed", "app": "web", "env": "production", "at": "2026-12-04T00:00:00Z", "message": "web@2 failed", "actor": "ci"});
        let ce: Value =
            serde_json::from_str(&body(Format::CloudEvents, "msg_1", "shipgate://h", &event).text)
                .unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "dev.shipgate.promotion.failed");
        assert_eq!(ce["subject"], "web/production");
        assert_eq!(ce["data"]["id"], 7);
        let slack: Value =
            serde_json::from_str(&body(Format::Slack, "msg_1", "s", &event).text).unwrap();
        assert_eq!(slack["text"], "*promotion.failed* web@2 failed (by ci)");
    }
}
