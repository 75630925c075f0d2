//! The floor for Redis: one GET and one SET of the same encoded session on a
//! multiplexed redis-rs connection, no lock, no library.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use cloakroom::SessionData;
use cloakroom_cli::bench::{CycleError, Payload, Target, HITS};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

const TTL_SECS: u64 = 24 * 3600;

pub struct RawRedis {
    conn: MultiplexedConnection,
    prefix: String,
}

impl RawRedis {
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(RawRedis {
            conn,
            prefix: format!("anchor-raw:{namespace}:"),
        })
    }
}

#[async_trait]
impl Target for RawRedis {
    type Id = String;

    fn backend(&self) -> String {
        "redis".into()
    }

    fn library(&self) -> String {
        "redis-rs raw".into()
    }

    fn policy(&self) -> String {
        "unlocked".into()
    }

    fn multi_process(&self) -> bool {
        true
    }

    async fn create(&self) -> Result<String> {
        let key = format!("{}{}", self.prefix, cloakroom::SessionId::generate());
        let mut data = SessionData::new();
        Payload::random().fill(&mut data)?;
        let _: () = self.conn.clone().set_ex(&key, data.encode(), TTL_SECS).await?;
        Ok(key)
    }

    async fn cycle(&self, key: &String) -> Result<Duration, CycleError> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let bytes: Option<Vec<u8>> = conn.get(key).await.map_err(CycleError::fatal)?;
        let waited = started.elapsed();
        let bytes = bytes.ok_or_else(|| CycleError::fatal(anyhow!("session vanished")))?;
        let mut data = SessionData::decode(&bytes)?;
        let hits: u64 = data.get(HITS)?.unwrap_or(0);
        data.insert(HITS, &(hits + 1))?;
        let _: () = conn
            .set_ex(key, data.encode(), TTL_SECS)
            .await
            .map_err(CycleError::fatal)?;
        Ok(waited)
    }

    async fn hits(&self, key: &String) -> Result<u64> {
        let bytes: Option<Vec<u8>> = self.conn.clone().get(key).await?;
        cloakroom_cli::bench::hits_of_encoded(&bytes.ok_or_else(|| anyhow!("session vanished"))?)
    }

    async fn remove(&self, key: &String) -> Result<()> {
        let _: () = self.conn.clone().del(key).await?;
        Ok(())
    }

    fn id_to_text(&self, key: &String) -> String {
        key.clone()
    }

    fn id_from_text(&self, text: &str) -> Result<String> {
        Ok(text.to_owned())
    }
}
