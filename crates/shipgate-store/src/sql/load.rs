//! Load test runs: each with its figures and verdict, written with its event. The gate compares
//! a release with the newest run of the same fingerprint that passed the gate (or seeded a
//! baseline) for another release in the same environment.

use shipgate_core::{AppName, EnvName};

use super::*;

fn run_from(row: &AnyRow) -> Result<LoadRun> {
    let id: i64 = get(row, "id")?;
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("load run #{id} {what}: {e}"))
    };
    Ok(LoadRun {
        id,
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        version: get(row, "version")?,
        promotion_id: get(row, "promotion_id")?,
        kind: get(row, "kind")?,
        fingerprint: get(row, "fingerprint")?,
        verdict: serde_json::from_str(&get::<String>(row, "verdict")?)
            .map_err(|e| corrupt("verdict", e))?,
        figures: serde_json::from_str(&get::<String>(row, "figures")?)
            .map_err(|e| corrupt("figures", e))?,
        compared_with: get(row, "compared_with")?,
        at: get_time(row, "at")?,
    })
}

impl SqlStore {
    pub(super) async fn record_load_run(&self, r: NewLoadRun, event: NewEvent) -> Result<LoadRun> {
        let (_w, mut tx) = self.begin().await?;
        let json = |v: serde_json::Result<String>| {
            v.map_err(|e| StoreError::Corrupt(format!("a load run: {e}")))
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO load_runs (app, env, version, promotion_id, kind, fingerprint, verdict, figures, compared_with, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(r.app.as_str())
        .bind(r.env.as_str())
        .bind(&r.version)
        .bind(r.promotion_id.map(|p| p.0))
        .bind(&r.kind)
        .bind(&r.fingerprint)
        .bind(json(serde_json::to_string(&r.verdict))?)
        .bind(json(serde_json::to_string(&r.figures))?)
        .bind(r.compared_with)
        .bind(now().to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("recording a load run"))?;
        let row = sqlx::query("SELECT * FROM load_runs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading a load run"))?;
        let run = run_from(&row)?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(run)
    }

    pub(super) async fn load_runs(&self, app: &AppName, env: &EnvName) -> Result<Vec<LoadRun>> {
        sqlx::query("SELECT * FROM load_runs WHERE app = $1 AND env = $2 ORDER BY id DESC")
            .bind(app.as_str())
            .bind(env.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading load runs"))?
            .iter()
            .map(run_from)
            .collect()
    }
}
