//! Which client connections are working on a request and which are idle, so
//! that at capacity the connection idle the longest gives its slot to a new
//! one.
//!
//! A connection is *idle* from the moment it is accepted until the api has
//! received a whole request on it (head and body), and again from the end of
//! each response until the next request is whole; it is *busy* while the api
//! handles a request and writes its answer. Idle connections cost the api
//! nothing but their buffers, and closing one loses nothing: no request on
//! it has been acted on. So `MAX_CONNECTIONS` silent, trickling or kept-alive
//! connections can never lock a new client out: when every slot is taken,
//! the accept loop closes the one idle the longest ([`Registry::evict_oldest`])
//! and the newcomer takes its place. (Closing lets hyper finish writing an
//! answer still in the socket's buffer first.) When none is idle, a
//! connection whose answer its client has not taken within the write
//! timeout (`HEADER_READ_TIMEOUT`) gives way instead: a client that never
//! reads cannot hold a slot. Only busy connections that are handling a
//! request (bounded by `REQUEST_TIMEOUT`) or whose clients are reading make
//! new ones wait.
//!
//! Bounded: one entry per open connection, at most `MAX_CONNECTIONS`
//! (a connection gets its entry with its slot; one closed to make room
//! leaves the registry at once, and may linger up to a second, at most 256
//! of them, finishing an answer: see `serve`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a connection is idle before it may be closed to make room: a
/// client's request may already be in its socket while a flood of accepts
/// keeps its task from reading it.
pub const MIN_IDLE: Duration = Duration::from_millis(250);

/// The open connections, idle and busy. Cheap to share.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Connections closed to make room, ever.
    evicted: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Hands out connection ids and idle ranks, both increasing.
    next: u64,
    /// Idle connections by rank, with when they went idle: the first went
    /// idle the longest ago.
    idle: BTreeMap<u64, (u64, Instant)>,
    /// Every open connection, by id.
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// Requests being handled (HTTP/1: at most one).
    busy: u32,
    /// Its rank in `idle`, while idle.
    idle_rank: Option<u64>,
    /// Set once it was chosen to make room; it never becomes busy again.
    evicted: bool,
    /// It has answered a request: the answer may still be in the socket's
    /// buffer when it is chosen to make room.
    answered: bool,
    /// Since when its answer has been ready to write, while it is busy
    /// writing it (a client that does not read keeps it there).
    writing_since: Option<Instant>,
    /// Wakes the connection's task to close it.
    close: Arc<Notify>,
}

impl Inner {
    fn rank(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Registry {
    /// Registers a new connection, idle. Dropping the [`Registration`]
    /// removes it.
    pub fn open(self: &Arc<Self>) -> Registration {
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.rank();
        let rank = inner.rank();
        inner.idle.insert(rank, (id, Instant::now()));
        inner.open.insert(
            id,
            Entry {
                busy: 0,
                idle_rank: Some(rank),
                evicted: false,
                answered: false,
                writing_since: None,
                close: close.clone(),
            },
        );
        Registration {
            activity: Activity {
                registry: self.clone(),
                id,
            },
            close,
        }
    }

    /// Closes the connection idle the longest, if there is one, or else the
    /// one whose answer has waited longest (more than `write_timeout`) for
    /// its client to read it: it is told to close and never starts another
    /// request. False when every open connection is busy handling a request
    /// or writing an answer its client is taking.
    pub fn evict_oldest(&self, write_timeout: Duration) -> bool {
        let mut inner = self.lock();
        let oldest = inner
            .idle
            .first_key_value()
            .map(|(rank, (_, since))| (*rank, *since));
        let id = match oldest {
            // Idle long enough to have sent a request it meant to send.
            Some((rank, since)) if since.elapsed() >= MIN_IDLE => {
                inner
                    .idle
                    .remove(&rank)
                    .expect("the first idle connection")
                    .0
            }
            // A burst of newcomers: none has had the time to speak yet.
            Some(_) => return false,
            // Only when every connection is busy: a scan of them all.
            None => {
                let stuck = inner
                    .open
                    .iter()
                    .filter(|(_, e)| !e.evicted)
                    .filter_map(|(id, e)| Some((e.writing_since?, *id)))
                    .filter(|(since, _)| since.elapsed() > write_timeout)
                    .min();
                let Some((_, id)) = stuck else {
                    return false;
                };
                id
            }
        };
        let entry = inner
            .open
            .get_mut(&id)
            .expect("an evicted connection is open");
        entry.idle_rank = None;
        entry.evicted = true;
        entry.close.notify_one();
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Open connections, and how many of them are idle.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.open.len(), inner.idle.len())
    }

    /// Connections closed to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("connection registry lock")
    }
}

/// A connection's place in the [`Registry`], held by its task.
pub struct Registration {
    activity: Activity,
    close: Arc<Notify>,
}

impl Registration {
    /// The handle requests on this connection use to say they are busy.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Resolves once the connection was chosen to make room.
    pub async fn evicted(&self) {
        self.close.notified().await
    }

    /// Whether it has answered a request (whose answer may not be written
    /// out yet); a connection that never did has nothing to finish.
    pub fn answered(&self) -> bool {
        let inner = self.activity.registry.lock();
        inner
            .open
            .get(&self.activity.id)
            .is_some_and(|entry| entry.answered)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.activity.registry.lock();
        if let Some(entry) = inner.open.remove(&self.activity.id)
            && let Some(rank) = entry.idle_rank
        {
            inner.idle.remove(&rank);
        }
    }
}

/// One connection's activity, carried in its requests' extensions.
#[derive(Clone)]
pub struct Activity {
    registry: Arc<Registry>,
    id: u64,
}

impl Activity {
    /// A whole request arrived: the connection is busy until the returned
    /// guard is dropped (after its response was written). `None` when the
    /// connection was already chosen to make room: the request must not be
    /// acted on.
    pub fn begin(&self) -> Option<Busy> {
        let mut inner = self.registry.lock();
        let entry = inner.open.get_mut(&self.id)?;
        if entry.evicted {
            return None;
        }
        entry.busy += 1;
        if let Some(rank) = entry.idle_rank.take() {
            inner.idle.remove(&rank);
        }
        Some(Busy {
            activity: self.clone(),
        })
    }
}

/// A request being handled; dropping it makes the connection idle again
/// once no other request is.
pub struct Busy {
    activity: Activity,
}

impl Busy {
    /// The answer is ready: from now on the client must take it within the
    /// write timeout, or its connection may be closed for a newcomer.
    pub fn writing(&self) {
        let mut inner = self.activity.registry.lock();
        if let Some(entry) = inner.open.get_mut(&self.activity.id) {
            entry.writing_since.get_or_insert_with(Instant::now);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut inner = self.activity.registry.lock();
        let rank = inner.rank();
        let Some(entry) = inner.open.get_mut(&self.activity.id) else {
            return;
        };
        entry.busy -= 1;
        entry.answered = true;
        entry.writing_since = None;
        if entry.busy == 0 && !entry.evicted {
            entry.idle_rank = Some(rank);
            inner.idle.insert(rank, (self.activity.id, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_the_longest_makes_room_and_busy_ones_never_do() {
        let registry = Arc::new(Registry::default());
        let first = registry.open();
        let second = registry.open();
        let third = registry.open();
        // The first starts a request and finishes it: it is now the newest idle.
        drop(first.activity().begin().expect("not evicted"));
        // The third is busy.
        let busy = third.activity().begin().expect("not evicted");
        // Nobody has been idle long enough to be closed yet.
        assert!(!registry.evict_oldest(Duration::MAX));
        std::thread::sleep(MIN_IDLE);
        assert!(registry.evict_oldest(Duration::MAX));
        // The second was idle the longest.
        assert!(second.activity().begin().is_none());
        assert!(first.activity().begin().is_some());
        // The first is busy again (its guard dropped above made it idle,
        // the one just taken made it busy and was dropped: idle again).
        std::thread::sleep(MIN_IDLE);
        assert!(registry.evict_oldest(Duration::MAX));
        assert!(first.activity().begin().is_none());
        // Only the busy one is left: nothing to evict.
        assert!(!registry.evict_oldest(Duration::MAX));
        assert_eq!(registry.counts(), (3, 0));
        assert_eq!(registry.evictions(), 2);
        drop(busy);
        assert_eq!(registry.counts(), (3, 1));
        drop((first, second, third));
        assert_eq!(registry.counts(), (0, 0));
    }

    #[test]
    fn a_connection_whose_answer_is_not_taken_gives_way_once_every_other_is_busy() {
        let registry = Arc::new(Registry::default());
        let handling = registry.open();
        let writing = registry.open();
        let _handled = handling.activity().begin().unwrap();
        let written = writing.activity().begin().unwrap();
        written.writing();
        // Within the write timeout: nothing to evict.
        assert!(!registry.evict_oldest(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(registry.evict_oldest(Duration::from_millis(10)));
        assert!(
            writing.activity().begin().is_none(),
            "the stuck writer went"
        );
        // The one still handling its request is never chosen.
        assert!(!registry.evict_oldest(Duration::ZERO));
    }

    #[tokio::test]
    async fn an_evicted_connection_hears_it() {
        let registry = Arc::new(Registry::default());
        let connection = registry.open();
        tokio::time::sleep(MIN_IDLE).await;
        assert!(registry.evict_oldest(Duration::MAX));
        tokio::time::timeout(std::time::Duration::from_secs(1), connection.evicted())
            .await
            .expect("told to close");
    }
}
