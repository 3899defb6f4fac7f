//! What a server lets an unauthenticated connection cost, how many connections it keeps,
//! and the counters that show it.
//!
//! Before login a connection may send only what a login needs: a few small messages
//! ([`ConnectionLimits::pre_login`], [`ConnectionLimits::max_pre_login_messages`]) within
//! the login deadline. The number of connections that have not logged in and the number of
//! all connections are capped; a connection past a cap is closed as soon as it is accepted,
//! and counted.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::WireLimits;

/// Per-server caps on connections and on what a connection may send before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Limits on each message before login (a login needs well under 1 KiB).
    pub pre_login: WireLimits,
    /// Messages a connection may send before its login succeeds (a login takes 2-4).
    pub max_pre_login_messages: u32,
    /// Connections that have not logged in yet, at most; more are closed at once.
    pub max_unauthenticated: usize,
    /// Connections of any kind, at most; more are closed at once.
    pub max_connections: usize,
}

/// Largest message before login.
pub const PRE_LOGIN_MAX_MESSAGE_BYTES: usize = 64 << 10;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            pre_login: WireLimits {
                max_message_bytes: PRE_LOGIN_MAX_MESSAGE_BYTES,
                nesting_limit: 16,
            },
            max_pre_login_messages: 16,
            max_unauthenticated: 64,
            max_connections: 1024,
        }
    }
}

/// A server's connection counters, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    open: AtomicU64,
    unauthenticated: AtomicU64,
    accepted: AtomicU64,
    refused_unauthenticated_cap: AtomicU64,
    refused_connection_cap: AtomicU64,
    closed_before_login: AtomicU64,
    logins: AtomicU64,
    failed_logins: AtomicU64,
    throttled_logins: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

/// A snapshot of a server's connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: u64,
    /// Open connections that have not logged in.
    pub unauthenticated: u64,
    /// Connections accepted and kept (not closed at once by a cap), ever.
    pub accepted: u64,
    /// Connections closed at once because `max_unauthenticated` were waiting for login.
    pub refused_unauthenticated_cap: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_connection_cap: u64,
    /// Connections that ended without a successful login (deadline, limits, peer left).
    pub closed_before_login: u64,
    /// Successful logins.
    pub logins: u64,
    /// Logins refused for a wrong secret or role.
    pub failed_logins: u64,
    /// Logins refused unchecked because their source address failed too often.
    pub throttled_logins: u64,
    /// TLS handshakes that failed (plaintext peers, untrusted certificates).
    pub tls_handshake_failures: u64,
}

impl StatsCounters {
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            open: get(&self.open),
            unauthenticated: get(&self.unauthenticated),
            accepted: get(&self.accepted),
            refused_unauthenticated_cap: get(&self.refused_unauthenticated_cap),
            refused_connection_cap: get(&self.refused_connection_cap),
            closed_before_login: get(&self.closed_before_login),
            logins: get(&self.logins),
            failed_logins: get(&self.failed_logins),
            throttled_logins: get(&self.throttled_logins),
            tls_handshake_failures: get(&self.tls_handshake_failures),
        }
    }

    pub(crate) fn login_failed(&self) {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn login_throttled(&self) {
        self.throttled_logins.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverCap {
    /// Too many connections had not logged in.
    Unauthenticated,
    /// Too many connections were open.
    Connections,
}

/// The accept loop's bookkeeping (RPC thread only; the counters are shared).
pub(crate) struct Admission {
    limits: ConnectionLimits,
    stats: Arc<StatsCounters>,
    warn: WarnWindow,
}

impl Admission {
    pub(crate) fn new(limits: ConnectionLimits, stats: Arc<StatsCounters>) -> Self {
        Self {
            limits,
            stats,
            warn: WarnWindow::new(Duration::from_secs(10)),
        }
    }

    /// Takes a slot for a new connection, or says which cap it is over (and counts it).
    pub(crate) fn admit(&self) -> Result<ConnectionSlot, OverCap> {
        let open = self.stats.open.load(Ordering::Relaxed);
        let waiting = self.stats.unauthenticated.load(Ordering::Relaxed);
        let over = if open >= self.limits.max_connections as u64 {
            Some((OverCap::Connections, &self.stats.refused_connection_cap))
        } else if waiting >= self.limits.max_unauthenticated as u64 {
            Some((
                OverCap::Unauthenticated,
                &self.stats.refused_unauthenticated_cap,
            ))
        } else {
            None
        };
        if let Some((cap, counter)) = over {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(count) = self.warn.note() {
                let (what, limit) = match cap {
                    OverCap::Connections => ("connections open", self.limits.max_connections),
                    OverCap::Unauthenticated => (
                        "connections waiting for login",
                        self.limits.max_unauthenticated,
                    ),
                };
                tracing::warn!(
                    refused = count,
                    limit,
                    "connection cap reached ({limit} {what}): closing new connections at once"
                );
            }
            return Err(cap);
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            stats: self.stats.clone(),
            authenticated: Cell::new(false),
        })
    }
}

/// One admitted connection's place in the counts; released when dropped.
pub(crate) struct ConnectionSlot {
    stats: Arc<StatsCounters>,
    authenticated: Cell<bool>,
}

impl ConnectionSlot {
    /// The connection logged in: it no longer counts as unauthenticated.
    pub(crate) fn logged_in(&self) {
        if !self.authenticated.replace(true) {
            self.stats.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            self.stats.logins.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the connection has logged in.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated.get()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if !self.authenticated.get() {
            self.stats.unauthenticated.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .closed_before_login
                .fetch_add(1, Ordering::Relaxed);
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Says "log now" at most once per window, with how many events it covers, so a flood
/// leaves one line per window instead of one per event.
pub(crate) struct WarnWindow {
    window: Duration,
    started: Cell<Option<Instant>>,
    count: Cell<u64>,
}

impl WarnWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            started: Cell::new(None),
            count: Cell::new(0),
        }
    }

    /// Counts one event; returns the count to log when a line is due.
    pub(crate) fn note(&self) -> Option<u64> {
        let now = Instant::now();
        self.count.set(self.count.get() + 1);
        match self.started.get() {
            Some(started) if now.duration_since(started) < self.window => None,
            _ => {
                self.started.set(Some(now));
                Some(self.count.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_close_new_connections_and_release_on_drop() {
        let stats = Arc::new(StatsCounters::default());
        let limits = ConnectionLimits {
            max_unauthenticated: 2,
            max_connections: 3,
            ..ConnectionLimits::default()
        };
        let admission = Admission::new(limits, stats.clone());
        let a = admission.admit().expect("first");
        let b = admission.admit().expect("second");
        assert_eq!(admission.admit().err(), Some(OverCap::Unauthenticated));
        a.logged_in();
        let c = admission.admit().expect("a logged in: room again");
        c.logged_in();
        assert_eq!(admission.admit().err(), Some(OverCap::Connections));
        drop(b);
        let s = stats.snapshot();
        assert_eq!((s.open, s.unauthenticated), (2, 0));
        assert_eq!(s.refused_unauthenticated_cap, 1);
        assert_eq!(s.refused_connection_cap, 1);
        assert_eq!(s.closed_before_login, 1);
        assert_eq!(s.logins, 2);
        drop((a, c));
        assert_eq!(stats.snapshot().open, 0);
    }

    #[test]
    fn warn_window_logs_once_per_window_with_the_count() {
        let warn = WarnWindow::new(Duration::from_secs(3600));
        assert_eq!(warn.note(), Some(1));
        assert_eq!(warn.note(), None);
        assert_eq!(warn.note(), None);
        warn.started
            .set(Some(Instant::now() - Duration::from_secs(7200)));
        assert_eq!(warn.note(), Some(3));
    }
}
