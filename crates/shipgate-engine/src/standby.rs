//! Warm standby: the release a promotion replaces keeps running for the environment's
//! `standby` time, so going back to it is a switch of the router, not a deploy.

use std::sync::Arc;

use shipgate_core::{InstanceId, PromotionKind};
use shipgate_store::{LiveRelease, NewPromotion, Promotion, Release};

use crate::{Engine, EngineError, LiveInstance, Slot, locked};

/// A replaced release, still running, ready to take traffic back.
#[derive(Clone)]
pub(crate) struct Standby {
    pub(crate) instance: LiveInstance,
    /// What was live while it served.
    pub(crate) live: LiveRelease,
    /// When it will be stopped.
    pub(crate) until: jiff::Timestamp,
}

impl Engine {
    /// Keeps `old`, which served `live` until a promotion replaced it, running for the
    /// environment's `standby` time (or retires it at once when that is zero). The standby it
    /// replaces is retired.
    pub(crate) fn keep_warm(self: &Arc<Self>, slot: Slot, old: LiveInstance, live: LiveRelease) {
        let keep = self
            .config()
            .environment(&slot.1)
            .map(|e| e.standby.as_std())
            .unwrap_or_default();
        if keep.is_zero() {
            self.retire_later(slot, old);
            return;
        }
        let until = crate::clock::after(self.clock.now(), keep);
        let id = old.id.clone();
        let replaced = locked(&self.standby).insert(
            slot.clone(),
            Standby {
                instance: old,
                live,
                until,
            },
        );
        if let Some(replaced) = replaced {
            self.retire_later(slot.clone(), replaced.instance);
        }
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            engine.clock.sleep_until(until).await;
            let expired = {
                let mut standby = locked(&engine.standby);
                match standby.get(&slot) {
                    Some(s) if s.instance.id == id => standby.remove(&slot),
                    _ => None,
                }
            };
            if let Some(expired) = expired {
                engine
                    .retire(&expired.instance, engine.drain_grace(&slot.1))
                    .await;
            }
        });
    }

    /// Drains and stops an instance in the background.
    pub(crate) fn retire_later(self: &Arc<Self>, slot: Slot, instance: LiveInstance) {
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.retire(&instance, engine.drain_grace(&slot.1)).await });
    }

    /// The standby of a slot.
    pub(crate) fn standby_of(&self, slot: &Slot) -> Option<Standby> {
        locked(&self.standby).get(slot).cloned()
    }

    pub(crate) fn slot_of_standby(&self, id: &InstanceId) -> Option<Slot> {
        locked(&self.standby)
            .iter()
            .find(|(_, s)| &s.instance.id == id)
            .map(|(slot, _)| slot.clone())
    }

    /// Forgets a standby whose instance the driver gave up on.
    pub(crate) fn drop_standby_instance(&self, id: &InstanceId) {
        locked(&self.standby).retain(|_, s| &s.instance.id != id);
    }

    /// Rolls back by switching the router to the slot's standby, if it runs `target` and is
    /// healthy and no promotion holds the slot; `None` means the normal deploy path must do it.
    /// Traffic moves before the record is written, so the rollback takes effect at once; if
    /// the record cannot be written, traffic moves back.
    pub(crate) async fn switch_back(
        self: &Arc<Self>,
        slot: &Slot,
        target: &Release,
        current: &LiveRelease,
        actor: &str,
    ) -> Result<Option<Promotion>, EngineError> {
        let lock = self.slot_lock(slot);
        let Ok(_held) = lock.try_lock() else {
            return Ok(None);
        };
        let Some(standby) = self
            .standby_of(slot)
            .filter(|s| s.live.version == target.version && s.live.digest == target.digest)
        else {
            return Ok(None);
        };
        if !self
            .driver
            .status(&standby.instance.id)
            .await
            .is_some_and(|s| s.healthy)
        {
            return Ok(None);
        }
        // The standby runs with the secrets its own promotion got: so does the switch back.
        let secrets = self
            .store
            .deployed_secrets(standby.live.promotion_id)
            .await?;
        self.route(slot, Some(&standby.instance)).await?;
        let replaced = self.set_live_instance(slot.clone(), Some(standby.instance.clone()));
        locked(&self.standby).remove(slot);

        let new = NewPromotion {
            app: target.app.clone(),
            version: target.version.clone(),
            digest: target.digest.clone(),
            env: slot.1.clone(),
            kind: PromotionKind::Rollback,
            previous_version: Some(current.version.clone()),
            override_reason: None,
            hotfix_reason: None,
        };
        let gate = format!(
            "switched traffic back to standby instance {} of {}@{}",
            standby.instance.id, target.app, target.version
        );
        match self
            .store
            .switch_back(new, current.promotion_id, gate, &secrets, actor)
            .await
        {
            Ok(promotion) => {
                if let Some(replaced) = replaced {
                    self.retire_later(slot.clone(), replaced);
                }
                Ok(Some(promotion))
            }
            Err(e) => {
                self.route(slot, replaced.as_ref()).await?;
                self.set_live_instance(slot.clone(), replaced);
                locked(&self.standby).insert(slot.clone(), standby);
                Err(e.into())
            }
        }
    }
}
