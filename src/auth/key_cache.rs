//! A bounded cache in front of the API key store, so a high-volume caller's key costs
//! one query per [`API_KEY_CACHE_AGE_MAX`], not one per request.
//!
//! Revocation through this wrapper clears the cache, so it takes effect at once in this
//! process. A key revoked by another process clears it too where the store announces
//! revocations (PostgreSQL's NOTIFY, see [`CachedKeys::follow`]); elsewhere it is
//! honoured here after at most [`API_KEY_CACHE_AGE_MAX`]. Only keys found active are
//! cached: an unknown key always asks the store.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ledger_aggregates::BrandId;
use lru::LruCache;
use uuid::Uuid;

use crate::store::{ApiKeyInfo, ApiKeyStore, NewApiKey, StoreError};

/// Distinct keys remembered. Each entry is a few hundred bytes; ten thousand callers
/// per process is far beyond the expected number of integrations.
pub const API_KEY_CACHE_ENTRIES_MAX: usize = 10_000;
/// How stale a cached answer may be: the delay before a revocation made by another
/// process is honoured here.
pub const API_KEY_CACHE_AGE_MAX: Duration = Duration::from_secs(30);

struct CacheState {
    /// Bumped by every revocation. A lookup that started before a revocation does not
    /// store its (possibly just revoked) answer.
    generation: u64,
    entries: LruCache<String, (ApiKeyInfo, Instant)>,
}

pub struct CachedKeys {
    inner: Arc<dyn ApiKeyStore>,
    state: Mutex<CacheState>,
}

impl CachedKeys {
    pub fn new(inner: Arc<dyn ApiKeyStore>) -> Self {
        let cap = NonZeroUsize::new(API_KEY_CACHE_ENTRIES_MAX).expect("the limit is not zero");
        Self {
            inner,
            state: Mutex::new(CacheState {
                generation: 0,
                entries: LruCache::new(cap),
            }),
        }
    }

    /// Forget every cached key.
    fn clear(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.entries.clear();
    }

    /// Clear the cache on every revocation the store announces, for as long as the
    /// cache lives.
    pub async fn follow(self: &Arc<Self>) -> Result<(), StoreError> {
        let Some(signal) = self.inner.watch_revocations().await? else {
            return Ok(());
        };
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                signal.notified().await;
                match cache.upgrade() {
                    Some(c) => c.clear(),
                    None => return,
                }
            }
        });
        Ok(())
    }

    /// The lock is never held across an await or a panic-prone call, so a poisoned lock
    /// still guards a consistent cache.
    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ApiKeyStore for CachedKeys {
    async fn insert_within_limit(
        &self,
        key: &NewApiKey,
        active_max: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        self.inner.insert_within_limit(key, active_max).await
    }

    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        self.inner.list(brand).await
    }

    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError> {
        let revoked = self.inner.revoke(brand, id).await;
        // Cleared whatever the outcome: after a failure we cannot tell what was written.
        self.clear();
        revoked
    }

    async fn find_active_by_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let generation = {
            let mut state = self.state();
            if let Some((info, at)) = state.entries.get(secret_sha256) {
                if at.elapsed() <= API_KEY_CACHE_AGE_MAX {
                    return Ok(Some(info.clone()));
                }
            }
            state.generation
        };
        let found = self.inner.find_active_by_hash(secret_sha256).await?;
        let mut state = self.state();
        match &found {
            Some(info) if state.generation == generation => {
                state
                    .entries
                    .put(secret_sha256.to_owned(), (info.clone(), Instant::now()));
            }
            _ => {
                state.entries.pop(secret_sha256);
            }
        }
        Ok(found)
    }
}
