//! tower-sessions with its published stores: the unlocked anchor. A cycle is
//! its `load` + `save`, exactly what its middleware does around a request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use cloakroom_cli::bench::{CycleError, Payload, Target, CART, CSRF_TOKEN, FLASH, HITS, LOCALE, USER_ID};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore;

/// Same idle expiry as cloakroom's default.
const IDLE: time::Duration = time::Duration::hours(24);

/// One tower-sessions store, type-erased.
pub struct TowerTarget {
    store: Box<dyn SessionStore>,
    backend: String,
    multi_process: bool,
}

impl TowerTarget {
    pub fn new(store: impl SessionStore, backend: &str, multi_process: bool) -> Self {
        TowerTarget {
            store: Box::new(store),
            backend: backend.into(),
            multi_process,
        }
    }
}

fn payload_record() -> Result<Record> {
    let p = Payload::random();
    let mut data = HashMap::new();
    data.insert(HITS.to_owned(), serde_json::json!(0u64));
    data.insert(USER_ID.to_owned(), serde_json::json!(p.user_id));
    data.insert(CSRF_TOKEN.to_owned(), serde_json::json!(p.csrf_token));
    data.insert(LOCALE.to_owned(), serde_json::json!(p.locale));
    data.insert(FLASH.to_owned(), serde_json::json!(p.flash));
    data.insert(CART.to_owned(), serde_json::to_value(&p.cart)?);
    Ok(Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc() + IDLE,
    })
}

#[async_trait]
impl Target for TowerTarget {
    type Id = Id;

    fn backend(&self) -> String {
        self.backend.clone()
    }

    fn library(&self) -> String {
        "tower-sessions".into()
    }

    fn policy(&self) -> String {
        "unlocked".into()
    }

    fn multi_process(&self) -> bool {
        self.multi_process
    }

    async fn create(&self) -> Result<Id> {
        let mut record = payload_record()?;
        self.store.create(&mut record).await?;
        Ok(record.id)
    }

    async fn cycle(&self, id: &Id) -> Result<Duration, CycleError> {
        let started = Instant::now();
        let loaded = self.store.load(id).await.map_err(CycleError::fatal)?;
        let waited = started.elapsed();
        let mut record = loaded.ok_or_else(|| CycleError::fatal(anyhow!("session vanished")))?;
        let hits = record.data.get(HITS).and_then(|v| v.as_u64()).unwrap_or(0);
        record.data.insert(HITS.to_owned(), serde_json::json!(hits + 1));
        record.expiry_date = OffsetDateTime::now_utc() + IDLE;
        self.store.save(&record).await.map_err(CycleError::fatal)?;
        Ok(waited)
    }

    async fn hits(&self, id: &Id) -> Result<u64> {
        let record = self
            .store
            .load(id)
            .await?
            .ok_or_else(|| anyhow!("session vanished"))?;
        Ok(record.data.get(HITS).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    async fn remove(&self, id: &Id) -> Result<()> {
        Ok(self.store.delete(id).await?)
    }

    fn id_to_text(&self, id: &Id) -> String {
        id.to_string()
    }

    fn id_from_text(&self, text: &str) -> Result<Id> {
        text.parse().map_err(|e| anyhow!("bad tower-sessions id: {e:?}"))
    }
}
