use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
};
use crate::Error;

/// A bounded in-memory [`KeyStore`] for tests and single-process services.
///
/// Its clock is the process's monotonic clock ([`Instant`]). When it holds
/// `capacity` records a claim of a new key fails with
/// [`Error::KeyStoreFull`]: it never evicts a record early, because a
/// forgotten key would let a late retry run the work again. Call
/// [`KeyStore::purge`] periodically. Clones share the same records.
///
/// ```
/// use std::time::Duration;
/// use idem_core::keys::{Claim, Completion, Fingerprint, KeyStore, MemoryStore, Scope, StoredResponse};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new(10_000);
/// let scope = Scope::new("client-1", "payments").unwrap();
/// let key = "order-42".parse().unwrap();
/// let fingerprint = Fingerprint::of_request("POST", "/payments", b"{\"amount\":100}");
///
/// let Claim::New(lease) = store.claim(&scope, &key, &fingerprint, Duration::from_secs(30)).await? else {
///     unreachable!("a fresh store has no record of this key")
/// };
/// let response = StoredResponse::new(201, b"paid".to_vec());
/// assert_eq!(store.complete(&lease, &response).await?, Completion::Stored);
///
/// // A retry replays, without running the work.
/// let again = store.claim(&scope, &key, &fingerprint, Duration::from_secs(30)).await?;
/// assert_eq!(again, Claim::Replay(response));
/// # Ok::<(), idem_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Records>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Records {
    map: HashMap<(String, String), Record>,
    last_token: i64,
}

#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    state: RecordState,
}

#[derive(Debug)]
enum RecordState {
    Running {
        token: i64,
        lease_until: Instant,
    },
    Done {
        response: StoredResponse,
        completed_at: Instant,
    },
}

impl MemoryStore {
    /// A store that holds at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            inner: Arc::default(),
            capacity,
        }
    }

    /// How many records it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many records (in progress and completed) it holds.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // Every critical section leaves the map consistent, so a panic in
        // another thread does not make it unusable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryStore {
    /// A store of 10 000 records.
    fn default() -> Self {
        MemoryStore::new(10_000)
    }
}

fn deadline(now: Instant, lease: Duration) -> Instant {
    // A lease too long to represent is as good as a lease of a century.
    now.checked_add(lease)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[async_trait]
impl KeyStore for MemoryStore {
    type Error = Error;

    async fn claim(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, Error> {
        let now = Instant::now();
        let mut records = self.lock();
        let token = records.last_token + 1;
        let id = (scope.as_str().to_owned(), key.as_str().to_owned());
        let new_lease = || Lease::new(scope.clone(), key.clone(), token);
        let full = records.map.len() >= self.capacity;
        let claim = match records.map.get_mut(&id) {
            None if full => {
                return Err(Error::KeyStoreFull {
                    capacity: self.capacity,
                })
            }
            None => {
                records.map.insert(
                    id,
                    Record {
                        fingerprint: *fingerprint,
                        state: RecordState::Running {
                            token,
                            lease_until: deadline(now, lease),
                        },
                    },
                );
                Claim::New(new_lease())
            }
            Some(record) if record.fingerprint != *fingerprint => Claim::KeyReused,
            Some(record) => match &record.state {
                RecordState::Done { response, .. } => return Ok(Claim::Replay(response.clone())),
                RecordState::Running { lease_until, .. } if *lease_until > now => {
                    return Ok(Claim::InProgress {
                        retry_after: *lease_until - now,
                    })
                }
                RecordState::Running { .. } => {
                    record.state = RecordState::Running {
                        token,
                        lease_until: deadline(now, lease),
                    };
                    Claim::Recovered(new_lease())
                }
            },
        };
        if matches!(claim, Claim::New(_) | Claim::Recovered(_)) {
            records.last_token = token;
        }
        Ok(claim)
    }

    async fn complete(
        &self,
        lease: &Lease,
        response: &StoredResponse,
    ) -> Result<Completion, Error> {
        let mut records = self.lock();
        let id = (
            lease.scope().as_str().to_owned(),
            lease.key().as_str().to_owned(),
        );
        match records.map.get_mut(&id) {
            Some(record) if matches!(record.state, RecordState::Running { token, .. } if token == lease.token()) =>
            {
                record.state = RecordState::Done {
                    response: response.clone(),
                    completed_at: Instant::now(),
                };
                Ok(Completion::Stored)
            }
            _ => Ok(Completion::LeaseLost),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut records = self.lock();
        let id = (
            lease.scope().as_str().to_owned(),
            lease.key().as_str().to_owned(),
        );
        let held = matches!(
            records.map.get(&id),
            Some(Record { state: RecordState::Running { token, .. }, .. }) if *token == lease.token()
        );
        if held {
            records.map.remove(&id);
        }
        Ok(())
    }

    async fn purge(&self, retention: Duration) -> Result<u64, Error> {
        let now = Instant::now();
        let mut records = self.lock();
        let before = records.map.len();
        records.map.retain(|_, record| {
            let since = match record.state {
                RecordState::Done { completed_at, .. } => completed_at,
                RecordState::Running { lease_until, .. } => lease_until,
            };
            // `since` is in the future for a live lease: keep it.
            match now.checked_duration_since(since) {
                Some(age) => age < retention,
                None => true,
            }
        });
        Ok((before - records.map.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(store: &MemoryStore, key: &str) -> Result<Claim, Error> {
        let scope = Scope::new("c", "op").unwrap();
        let key = IdempotencyKey::new(key).unwrap();
        let fingerprint = Fingerprint::of_bytes(b"x");
        let future = store.claim(&scope, &key, &fingerprint, Duration::from_secs(30));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_full_store_refuses_new_keys_and_still_replays_the_ones_it_holds() {
        let store = MemoryStore::new(1);
        let Claim::New(lease) = claim(&store, "a").unwrap() else {
            panic!("a fresh key must be new")
        };
        let response = StoredResponse::new(200, b"a".to_vec());
        let done = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.complete(&lease, &response))
            .unwrap();
        assert_eq!(done, Completion::Stored);
        assert!(matches!(
            claim(&store, "b"),
            Err(Error::KeyStoreFull { capacity: 1 })
        ));
        // The late retry of the completed key is still a replay: a full
        // store never forgets a record to make room.
        assert_eq!(claim(&store, "a").unwrap(), Claim::Replay(response));
        assert_eq!(store.len(), 1);
    }
}
