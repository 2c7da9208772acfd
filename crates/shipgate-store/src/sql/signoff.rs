//! User acceptance sign-off: the sheet a verified promotion waits on (its scenarios and role,
//! fixed when it began to wait) and each pass or fail, each written with its event. The rules
//! of who may sign are `shipgate_core::signoff`'s; this keeps what was signed.

use shipgate_core::signoff::{SignoffEntry, SignoffSheet, SignoffVerdict};

use super::*;

fn entry_from(row: &AnyRow) -> Result<SignoffEntry> {
    Ok(SignoffEntry {
        scenario: get(row, "scenario")?,
        by: get(row, "person")?,
        token: get(row, "token")?,
        verdict: if get::<i64>(row, "pass")? != 0 {
            SignoffVerdict::Pass
        } else {
            SignoffVerdict::Fail
        },
        note: get(row, "note")?,
        at: get_time(row, "at")?,
    })
}

async fn sheet_in(
    tx: &mut Transaction<'static, Any>,
    promotion_id: PromotionId,
) -> Result<Option<SignoffSheet>> {
    let Some(row) = sqlx::query("SELECT * FROM signoff_requests WHERE promotion_id = $1")
        .bind(promotion_id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a sign-off"))?
    else {
        return Ok(None);
    };
    let entries = sqlx::query("SELECT * FROM signoffs WHERE promotion_id = $1 ORDER BY id")
        .bind(promotion_id.0)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("reading sign-offs"))?;
    Ok(Some(SignoffSheet {
        promotion_id,
        role: parse(
            "role",
            &get::<String>(&row, "role")?,
            shipgate_core::Role::parse,
        )?,
        scenarios: serde_json::from_str(&get::<String>(&row, "scenarios")?)
            .map_err(|e| StoreError::Corrupt(format!("sign-off scenarios: {e}")))?,
        requested_at: get_time(&row, "requested_at")?,
        entries: entries.iter().map(entry_from).collect::<Result<_>>()?,
    }))
}

impl SqlStore {
    pub(super) async fn request_signoff(&self, r: NewSignoffRequest) -> Result<Promotion> {
        let (_w, mut tx) = self.begin().await?;
        let before = promotion_in(&mut tx, r.promotion_id).await?;
        if before.state != PromotionState::Verifying {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::StateConflict {
                id: before.id,
                expected: PromotionState::Verifying.as_str().to_owned(),
                actual: before.state,
            });
        }
        set_state(&mut tx, before.id, PromotionState::SigningOff, None).await?;
        let scenarios = serde_json::to_string(&r.scenarios)
            .map_err(|e| StoreError::Corrupt(format!("sign-off scenarios: {e}")))?;
        let at = now();
        sqlx::query("INSERT INTO signoff_requests (promotion_id, role, scenarios, requested_at) VALUES ($1, $2, $3, $4)")
            .bind(before.id.0)
            .bind(r.role.as_str())
            .bind(&scenarios)
            .bind(at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a sign-off request"))?;
        let after = promotion_in(&mut tx, before.id).await?;
        let data = serde_json::json!({ "from": before.state, "to": after.state, "version": after.version });
        let mut events = vec![
            append(
                &mut tx,
                promotion_event(
                    &after,
                    &r.actor,
                    EventKind::Promotion(PromotionState::SigningOff),
                    r.message.clone(),
                    data,
                ),
            )
            .await?,
        ];
        let data = serde_json::json!({ "version": after.version, "role": r.role, "scenarios": r.scenarios });
        let message = format!(
            "{}@{} waits in {} for the sign-off of {} scenario(s) by the role {}: {}",
            after.app,
            after.version,
            after.env,
            r.scenarios.len(),
            r.role,
            r.scenarios.join("; ")
        );
        events.push(
            append(
                &mut tx,
                promotion_event(&after, &r.actor, EventKind::SignoffRequested, message, data),
            )
            .await?,
        );
        self.commit(tx, events).await?;
        Ok(after)
    }

    pub(super) async fn record_signoff(&self, s: NewSignoff) -> Result<SignoffEntry> {
        let (_w, mut tx) = self.begin().await?;
        let p = promotion_in(&mut tx, s.promotion_id).await?;
        if p.state != PromotionState::SigningOff {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::StateConflict {
                id: p.id,
                expected: PromotionState::SigningOff.as_str().to_owned(),
                actual: p.state,
            });
        }
        let at = now();
        let inserted = sqlx::query("INSERT INTO signoffs (promotion_id, scenario, person, token, pass, note, at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
            .bind(p.id.0)
            .bind(&s.entry.scenario)
            .bind(&s.entry.by)
            .bind(&s.entry.token)
            .bind(i64::from(s.entry.verdict == SignoffVerdict::Pass))
            .bind(&s.entry.note)
            .bind(at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording a sign-off"))?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "{} already signed `{}` of promotion {}; each person signs a scenario once",
                s.entry.by, s.entry.scenario, p.id
            )));
        }
        let (kind, verb) = match s.entry.verdict {
            SignoffVerdict::Pass => (EventKind::SignoffPassed, "passed"),
            SignoffVerdict::Fail => (EventKind::SignoffFailed, "failed"),
        };
        let mut message = format!(
            "{} {verb} `{}` of {}@{} in {}",
            s.entry.by, s.entry.scenario, p.app, p.version, p.env
        );
        if let Some(note) = &s.entry.note {
            message.push_str(&format!(": {note}"));
        }
        let data = serde_json::json!({
            "version": p.version, "scenario": s.entry.scenario, "verdict": s.entry.verdict,
            "note": s.entry.note, "token": s.entry.token,
        });
        let event = append(
            &mut tx,
            promotion_event(&p, &s.entry.by, kind, message, data),
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(SignoffEntry { at, ..s.entry })
    }

    pub(super) async fn signoff_sheet(
        &self,
        promotion_id: PromotionId,
    ) -> Result<Option<SignoffSheet>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        let sheet = sheet_in(&mut tx, promotion_id).await?;
        tx.rollback().await.map_err(db("rolling back"))?;
        Ok(sheet)
    }

    /// For each promotion of `app` (or every app) with a sign-off: its app, digest, when it
    /// began to wait and when it stopped waiting (its end, or None while it waits).
    pub(super) async fn signoff_waits(&self, app: Option<&AppName>) -> Result<Vec<SignoffWait>> {
        let rows = sqlx::query(
            "SELECT p.app, p.version, s.requested_at, s.ended_at FROM signoff_requests s \
             JOIN promotions p ON p.id = s.promotion_id WHERE ($1 IS NULL OR p.app = $1)",
        )
        .bind(app.map(|a| a.as_str().to_owned()))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading sign-off waits"))?;
        rows.iter()
            .map(|row| {
                Ok(SignoffWait {
                    app: get(row, "app")?,
                    version: get(row, "version")?,
                    from: get_time(row, "requested_at")?,
                    to: get_time_opt(row, "ended_at")?,
                })
            })
            .collect()
    }
}

/// How long one release waited for sign-off in one promotion.
pub(super) struct SignoffWait {
    pub(super) app: String,
    pub(super) version: String,
    pub(super) from: Timestamp,
    pub(super) to: Option<Timestamp>,
}

/// Marks the end of a promotion's wait for sign-off, when it leaves `signing_off`.
pub(super) async fn end_signoff(
    tx: &mut Transaction<'static, Any>,
    promotion_id: PromotionId,
) -> Result<()> {
    sqlx::query("UPDATE signoff_requests SET ended_at = $1 WHERE promotion_id = $2")
        .bind(now().to_string())
        .bind(promotion_id.0)
        .execute(&mut **tx)
        .await
        .map_err(db("ending a sign-off"))?;
    Ok(())
}

/// The seconds `app`@`version` waited for sign-off before `until`, over all its promotions.
pub(super) fn waited(
    waits: &[SignoffWait],
    app: &str,
    version: &str,
    until: Timestamp,
) -> Option<f64> {
    let mine: Vec<f64> = waits
        .iter()
        .filter(|w| w.app == app && w.version == version && w.from < until)
        .map(|w| {
            let end = w.to.map_or(until, |t| t.min(until));
            end.duration_since(w.from).as_secs_f64().max(0.0)
        })
        .collect();
    (!mine.is_empty()).then(|| mine.iter().sum())
}
