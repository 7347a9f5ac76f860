use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
    DEFAULT_RETENTION,
};
use crate::Error;

/// A bounded in-memory [`KeyStore`] for tests and single-process services.
///
/// Its clock is the process's monotonic clock ([`Instant`]). Clones share
/// the same records (set the limits before cloning).
///
/// # Bounds, who pays, and how space comes back
///
/// - **Per client** ([`with_client_limit`](Self::with_client_limit); by
///   default 1% of the capacity, at least 1: **1,000** records for
///   [`MemoryStore::default`]). A client — the
///   [`Scope::client`] part of the scope, across all its operations —
///   holding that many records gets [`Error::TooManyKeys`] for a new key,
///   with `retry_after` until its oldest record is due to expire
///   (`idem_http` answers 429 with `Retry-After`). That client pays, and
///   only that client: its retries of keys it already holds still replay,
///   and every other client is served. Size it from the client's peak
///   rate: a client may start `limit` keyed requests per retention period
///   (1,000 per 24 h by default).
/// - **In total** ([`new`](Self::new); **100,000** records for
///   [`MemoryStore::default`]). With the defaults, 100 clients can each
///   hold their whole share at once, and no client is ever refused
///   because of another's traffic. Only when more clients than
///   `capacity / client limit` hold records together can the store fill;
///   then a claim of a new key by any client gets [`Error::KeyStoreFull`]
///   (503 with `Retry-After` through `idem_http`) until records expire: the
///   store is too small for the number of clients, so size it for them,
///   or use a database store.
/// - **Reclaimed by itself.** A record expires [`retention`](Self::with_retention)
///   after it completed (24 h by default, [`DEFAULT_RETENTION`]), and a
///   record left running by a run that died expires `retention` after its
///   lease ran out. Every claim first forgets the records that expired —
///   no [`purge`](KeyStore::purge) call is needed, though it still removes
///   records older than the retention it is given. A live record is never
///   forgotten to make room: a forgotten completed key would let a late
///   retry run the work again, and a forgotten running key would let the
///   retry run without being told ([`Claim::Recovered`]) that the first
///   run's outcome is uncertain.
///
/// Memory: each record holds its scope, key and stored response (status,
/// headers and body as the handler returned them), so the bound in bytes
/// is `capacity` times the largest response plus about 200 bytes.
///
/// ```
/// use std::time::Duration;
/// use idem_core::keys::{Claim, Completion, Fingerprint, KeyStore, MemoryStore, Scope, StoredResponse};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new(10_000).with_client_limit(500);
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
    client_limit: usize,
    retention: Duration,
}

/// (encoded scope, key)
type RecordId = (String, String);

/// When a record may be forgotten, and its token (unique per claim).
type Expiry = (Instant, i64);

#[derive(Debug, Default)]
struct Records {
    map: HashMap<RecordId, Record>,
    /// Every record by expiry: the next to go first.
    expiries: BTreeMap<Expiry, RecordId>,
    /// Each client's records by expiry; a client with none is absent.
    clients: HashMap<Arc<str>, BTreeSet<Expiry>>,
    last_token: i64,
}

#[derive(Debug)]
struct Record {
    client: Arc<str>,
    fingerprint: Fingerprint,
    state: RecordState,
    expiry: Expiry,
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
    /// A store that holds at most `capacity` records in total, and at most
    /// 1% of that (at least 1) per client.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            inner: Arc::default(),
            capacity,
            client_limit: (capacity / 100).max(1),
            retention: DEFAULT_RETENTION,
        }
    }

    /// Lets each client hold at most `limit` records (clamped to the
    /// capacity): its claims of new keys beyond that get
    /// [`Error::TooManyKeys`].
    pub fn with_client_limit(mut self, limit: usize) -> Self {
        self.client_limit = limit;
        self
    }

    /// Forgets records `retention` after they completed, or after the
    /// lease of a run that never completed ran out (default
    /// [`DEFAULT_RETENTION`], 24 h). Retries within it replay.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How many records it may hold in total.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many records one client may hold.
    pub fn client_limit(&self) -> usize {
        self.client_limit.min(self.capacity)
    }

    /// How long records are kept.
    pub fn retention(&self) -> Duration {
        self.retention
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
        // Every critical section leaves the records consistent, so a panic
        // in another thread does not make them unusable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When a record whose last event (completion, or end of lease) is at
    /// `since` may be forgotten.
    fn expires(&self, since: Instant) -> Instant {
        later(since, self.retention)
    }
}

impl Default for MemoryStore {
    /// A store of 100,000 records, 1,000 per client, kept 24 hours.
    fn default() -> Self {
        MemoryStore::new(100_000)
    }
}

/// `at + duration`; a time too far to represent is as good as a century.
fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Records {
    fn insert(&mut self, id: RecordId, record: Record) {
        self.index(&id, &record);
        self.map.insert(id, record);
    }

    fn index(&mut self, id: &RecordId, record: &Record) {
        self.expiries.insert(record.expiry, id.clone());
        self.clients
            .entry(Arc::clone(&record.client))
            .or_default()
            .insert(record.expiry);
    }

    fn unindex(&mut self, record: &Record) {
        self.expiries.remove(&record.expiry);
        if let Some(expiries) = self.clients.get_mut(&record.client) {
            expiries.remove(&record.expiry);
            if expiries.is_empty() {
                self.clients.remove(&record.client);
            }
        }
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(record) = self.map.remove(id) {
            self.unindex(&record);
        }
    }

    /// Moves the record `id` to a new state and expiry.
    fn update(&mut self, id: &RecordId, state: RecordState, expiry: Expiry) {
        let Some(mut record) = self.map.remove(id) else {
            return;
        };
        self.unindex(&record);
        record.state = state;
        record.expiry = expiry;
        self.insert(id.clone(), record);
    }

    /// Forgets every record that expired by `now`; each costs O(log n)
    /// once, so a claim pays only for what expired since the last one.
    fn reclaim(&mut self, now: Instant) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.remove(&id);
        }
    }

    /// How many records `client` holds, and when its first one expires.
    fn client(&self, client: &str) -> (usize, Option<Instant>) {
        self.clients.get(client).map_or((0, None), |expiries| {
            (expiries.len(), expiries.first().map(|e| e.0))
        })
    }
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
        records.reclaim(now);
        let token = records.last_token + 1;
        let id = (scope.as_str().to_owned(), key.as_str().to_owned());
        let new_lease = || Lease::new(scope.clone(), key.clone(), token);
        let running = || {
            let lease_until = later(now, lease);
            let state = RecordState::Running { token, lease_until };
            (state, (self.expires(lease_until), token))
        };
        let claim = match records.map.get(&id) {
            None => {
                let (held, first) = records.client(scope.client());
                let until = |at: Option<Instant>| {
                    at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
                };
                if held >= self.client_limit() {
                    return Err(Error::TooManyKeys {
                        limit: self.client_limit(),
                        retry_after: until(first),
                    });
                }
                if records.map.len() >= self.capacity {
                    let first = records.expiries.keys().next().map(|e| e.0);
                    return Err(Error::KeyStoreFull {
                        capacity: self.capacity,
                        retry_after: until(first),
                    });
                }
                let (state, expiry) = running();
                let client = records
                    .clients
                    .get_key_value(scope.client())
                    .map_or_else(|| Arc::from(scope.client()), |(c, _)| Arc::clone(c));
                let record = Record {
                    client,
                    fingerprint: *fingerprint,
                    state,
                    expiry,
                };
                records.insert(id, record);
                Claim::New(new_lease())
            }
            Some(record) if record.fingerprint != *fingerprint => Claim::KeyReused,
            Some(record) => match &record.state {
                RecordState::Done { response, .. } => Claim::Replay(response.clone()),
                RecordState::Running { lease_until, .. } if *lease_until > now => {
                    Claim::InProgress {
                        retry_after: *lease_until - now,
                    }
                }
                RecordState::Running { .. } => {
                    let (state, expiry) = running();
                    records.update(&id, state, expiry);
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
        let now = Instant::now();
        let mut records = self.lock();
        let id = (
            lease.scope().as_str().to_owned(),
            lease.key().as_str().to_owned(),
        );
        if !holds(&records, &id, lease) {
            return Ok(Completion::LeaseLost);
        }
        let state = RecordState::Done {
            response: response.clone(),
            completed_at: now,
        };
        records.update(&id, state, (self.expires(now), lease.token()));
        Ok(Completion::Stored)
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut records = self.lock();
        let id = (
            lease.scope().as_str().to_owned(),
            lease.key().as_str().to_owned(),
        );
        if holds(&records, &id, lease) {
            records.remove(&id);
        }
        Ok(())
    }

    async fn purge(&self, retention: Duration) -> Result<u64, Error> {
        let now = Instant::now();
        let mut records = self.lock();
        let old: Vec<RecordId> = records
            .map
            .iter()
            .filter(|(_, record)| {
                let since = match record.state {
                    RecordState::Done { completed_at, .. } => completed_at,
                    RecordState::Running { lease_until, .. } => lease_until,
                };
                // `since` is in the future for a live lease: keep it.
                now.checked_duration_since(since)
                    .is_some_and(|age| age >= retention)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            records.remove(id);
        }
        Ok(old.len() as u64)
    }
}

/// Whether the record `id` is running under `lease`.
fn holds(records: &Records, id: &RecordId, lease: &Lease) -> bool {
    matches!(
        records.map.get(id),
        Some(Record { state: RecordState::Running { token, .. }, .. }) if *token == lease.token()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    async fn claim(store: &MemoryStore, client: &str, key: &str) -> Result<Claim, Error> {
        let scope = Scope::new(client, "op").unwrap();
        let key = IdempotencyKey::new(key).unwrap();
        let fingerprint = Fingerprint::of_bytes(b"x");
        store.claim(&scope, &key, &fingerprint, LEASE).await
    }

    async fn done(store: &MemoryStore, client: &str, key: &str) -> StoredResponse {
        let Claim::New(lease) = claim(store, client, key).await.unwrap() else {
            panic!("{client}/{key} must be new")
        };
        let response = StoredResponse::new(200, key.as_bytes().to_vec());
        assert_eq!(
            store.complete(&lease, &response).await.unwrap(),
            Completion::Stored
        );
        response
    }

    #[test]
    fn the_default_store_holds_100_000_records_1_000_per_client_for_24_hours() {
        let store = MemoryStore::default();
        assert_eq!(store.capacity(), 100_000);
        assert_eq!(store.client_limit(), 1_000);
        assert_eq!(store.retention(), DEFAULT_RETENTION);
        assert_eq!(MemoryStore::new(10).client_limit(), 1);
        assert_eq!(
            MemoryStore::new(10).with_client_limit(50).client_limit(),
            10
        );
    }

    #[tokio::test]
    async fn a_client_over_its_limit_gets_too_many_keys_and_other_clients_are_served() {
        let store = MemoryStore::new(100).with_client_limit(3);
        let mut held = Vec::new();
        for key in ["a1", "a2", "a3"] {
            held.push(done(&store, "a", key).await);
        }
        let Err(Error::TooManyKeys { limit, retry_after }) = claim(&store, "a", "a4").await else {
            panic!("a holds its whole share")
        };
        assert_eq!(limit, 3);
        // Its oldest record expires a day after it completed.
        assert!(
            retry_after > DEFAULT_RETENTION - Duration::from_secs(60),
            "{retry_after:?}"
        );
        // The same client in another operation shares the bound.
        let other_op = Scope::new("a", "other").unwrap();
        let refused = store
            .claim(
                &other_op,
                &"k".parse().unwrap(),
                &Fingerprint::of_bytes(b"x"),
                LEASE,
            )
            .await;
        assert!(matches!(refused, Err(Error::TooManyKeys { .. })));
        // What it already holds still replays; other clients are served.
        assert_eq!(
            claim(&store, "a", "a1").await.unwrap(),
            Claim::Replay(held.remove(0))
        );
        assert!(matches!(
            claim(&store, "b", "b1").await.unwrap(),
            Claim::New(_)
        ));
        assert_eq!(store.len(), 4);
    }

    #[tokio::test]
    async fn expired_records_make_room_by_themselves_without_a_purge() {
        let retention = Duration::from_millis(200);
        let store = MemoryStore::new(100)
            .with_client_limit(2)
            .with_retention(retention);
        done(&store, "a", "a1").await;
        done(&store, "a", "a2").await;
        let Err(Error::TooManyKeys { retry_after, .. }) = claim(&store, "a", "a3").await else {
            panic!("a holds its whole share")
        };
        assert!(retry_after <= retention);
        tokio::time::sleep(retry_after + Duration::from_millis(50)).await;
        assert!(matches!(
            claim(&store, "a", "a3").await.unwrap(),
            Claim::New(_)
        ));
        assert!(store.len() <= 2, "a1 went by itself");
        // A key forgotten after its retention runs again, as documented.
        tokio::time::sleep(retention + Duration::from_millis(50)).await;
        assert!(matches!(
            claim(&store, "a", "a1").await.unwrap(),
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn a_running_record_is_kept_for_its_lease_plus_the_retention() {
        // Sleeps only ever last longer: each check has its margin on the
        // side a late wake-up cannot cross.
        let retention = Duration::from_millis(300);
        let store = MemoryStore::new(100)
            .with_client_limit(10)
            .with_retention(retention);
        let scope = Scope::new("a", "op").unwrap();
        let fingerprint = Fingerprint::of_bytes(b"x");
        let live = IdempotencyKey::new("live").unwrap();
        let abandoned = IdempotencyKey::new("abandoned").unwrap();
        let (long, short) = (Duration::from_secs(3600), Duration::from_millis(100));
        let claim = |key, lease| store.claim(&scope, key, &fingerprint, lease);
        assert!(matches!(claim(&live, long).await, Ok(Claim::New(_))));
        assert!(matches!(claim(&abandoned, short).await, Ok(Claim::New(_))));
        // Its lease is over, its retention is not: the takeover is told it
        // recovers an uncertain run.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(matches!(
            claim(&abandoned, short).await,
            Ok(Claim::Recovered(_))
        ));
        // Abandoned again, and its lease plus the retention passed: forgotten.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(claim(&abandoned, short).await, Ok(Claim::New(_))));
        // Far past the retention, but inside its lease: never forgotten.
        assert!(matches!(
            claim(&live, long).await,
            Ok(Claim::InProgress { .. })
        ));
    }

    #[tokio::test]
    async fn a_store_full_of_live_records_refuses_new_keys_with_retry_after_and_still_replays() {
        let store = MemoryStore::new(4).with_client_limit(2);
        let a1 = done(&store, "a", "a1").await;
        done(&store, "a", "a2").await;
        done(&store, "b", "b1").await;
        done(&store, "b", "b2").await;
        let Err(Error::KeyStoreFull {
            capacity,
            retry_after,
        }) = claim(&store, "c", "c1").await
        else {
            panic!("the store is full")
        };
        assert_eq!(capacity, 4);
        assert!(retry_after > Duration::ZERO);
        // A full store never forgets a live record to make room.
        assert_eq!(claim(&store, "a", "a1").await.unwrap(), Claim::Replay(a1));
        assert_eq!(store.len(), 4);
    }

    #[tokio::test]
    async fn purge_keeps_the_indexes_in_step() {
        let store = MemoryStore::new(100).with_client_limit(2);
        done(&store, "a", "a1").await;
        done(&store, "a", "a2").await;
        assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 2);
        assert!(store.is_empty());
        assert!(matches!(
            claim(&store, "a", "a3").await.unwrap(),
            Claim::New(_)
        ));
        let records = store.lock();
        assert_eq!(records.expiries.len(), 1);
        assert_eq!(records.clients.len(), 1);
    }
}
