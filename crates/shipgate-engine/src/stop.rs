//! Getting out fast: a rollback, or a rejection by someone with the role, ends the promotion in
//! flight in that environment at once, whatever it is doing (waiting for its turn, deploying,
//! verifying, watching), and the environment goes back to what it had.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shipgate_core::{AppName, EnvName, PromotionId, PromotionKind, PromotionState};
use shipgate_store::{Promotion, PromotionFilter};
use tokio::sync::watch;

use crate::{Engine, EngineError, locked};

/// The end asked of each promotion running here, by promotion: why, once asked.
pub(crate) type Stops = Mutex<HashMap<PromotionId, watch::Sender<Option<String>>>>;

/// How long a rollback waits for the promotion it ended to say so (it ends at its next step,
/// which never takes long; the instance it started is stopped after).
const ENDED_WITHIN: Duration = Duration::from_secs(60);

/// A running promotion's end, as asked by a person; forgotten when the run ends.
pub(crate) struct StopSignal<'a> {
    engine: &'a Engine,
    id: PromotionId,
    asked: watch::Receiver<Option<String>>,
}

impl StopSignal<'_> {
    /// Why it was asked to end, if it was.
    pub(crate) fn asked(&self) -> Option<String> {
        self.asked.borrow().clone()
    }

    /// Resolves with why, once it is asked to end.
    pub(crate) async fn asked_later(&mut self) -> String {
        loop {
            if let Some(why) = self.asked.borrow_and_update().clone() {
                return why;
            }
            if self.asked.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for StopSignal<'_> {
    fn drop(&mut self) {
        locked(&self.engine.stops).remove(&self.id);
    }
}

impl Engine {
    /// Where promotion `id`'s run learns that it must end.
    pub(crate) fn stop_signal(&self, id: PromotionId) -> StopSignal<'_> {
        let asked = locked(&self.stops)
            .entry(id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        StopSignal {
            engine: self,
            id,
            asked,
        }
    }

    /// Asks the run of promotion `id` to end now, for `why`; false when none runs here.
    pub(crate) fn stop(&self, id: PromotionId, why: &str) -> bool {
        locked(&self.stops)
            .get(&id)
            .map(|tx| tx.send_replace(Some(why.to_owned())))
            .is_some()
    }

    /// The promotion of `app` deploying or being verified in `env`, if one is (a rollback
    /// is never ended this way: it goes back to a release verified here).
    pub(crate) async fn in_flight(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<Promotion>, EngineError> {
        let running = PromotionFilter {
            app: Some(app.clone()),
            env: Some(env.clone()),
            states: vec![
                PromotionState::Deploying,
                PromotionState::Verifying,
                PromotionState::SigningOff,
            ],
            ..Default::default()
        };
        Ok(self
            .store
            .promotions(running)
            .await?
            .into_iter()
            .find(|p| p.kind != PromotionKind::Rollback))
    }

    /// Promotion `id` once it has ended, as recorded.
    pub(crate) async fn ended(&self, id: PromotionId) -> Result<Promotion, EngineError> {
        let deadline = tokio::time::Instant::now() + ENDED_WITHIN;
        loop {
            let p = self
                .store
                .promotion(id)
                .await?
                .ok_or(EngineError::NoSuchPromotion(id))?;
            if p.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Revokes the tokens minted for the experiments of `p` that an ended run left.
    pub(crate) async fn revoke_run_tokens(&self, p: &Promotion) {
        let prefix = format!("experiment-{}-{}-", p.env, p.id);
        let Ok(tokens) = self.store.tokens().await else {
            return;
        };
        for t in tokens
            .iter()
            .filter(|t| t.name.starts_with(&prefix) && t.revoked_at.is_none())
        {
            if let Err(e) = self.store.revoke_token(&t.name, crate::SYSTEM).await {
                tracing::warn!("could not revoke token {}: {e}", t.name);
            }
        }
    }
}
