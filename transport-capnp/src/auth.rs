//! Who may log in, with which secret, and what each role may call.
//!
//! A login names a [`Role`] and presents that role's secret: ConfigNodes and DataNodes share
//! the *internal* secret, administrators hold the *admin* secret. A server checks each call
//! against the role its connection logged in with ([`Role::may`]); failed logins are
//! rate-limited per source address ([`LoginLimiter`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::limits::WarnWindow;

/// Who a connection logged in as. Codes travel on the wire and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A ConfigNode: drives DataNodes (tasks, epochs) and talks to ConfigNode peers.
    ConfigNode = 1,
    /// A DataNode: registers with and reports to the ConfigNode.
    DataNode = 2,
    /// An administrator (the CLI): the admin API, and writes of the load generator.
    Admin = 3,
}

impl Role {
    /// The role's wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The role with wire code `code` (0, what older clients send, is none).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Role::ConfigNode),
            2 => Some(Role::DataNode),
            3 => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::ConfigNode => "ConfigNode",
            Role::DataNode => "DataNode",
            Role::Admin => "admin",
        }
    }

    /// Which secret this role presents.
    pub fn secret_kind(self) -> SecretKind {
        match self {
            Role::ConfigNode | Role::DataNode => SecretKind::Internal,
            Role::Admin => SecretKind::Admin,
        }
    }

    /// Whether this role may use `access`. The one place the role policy is decided.
    pub fn may(self, access: Access) -> bool {
        match access {
            // Moving epochs, creating and deleting regions, tasks: only the ConfigNode.
            Access::DataNodeControl => self == Role::ConfigNode,
            // The load generator writes synthetic data; the ConfigNode may too.
            Access::DataNodeWrite => matches!(self, Role::ConfigNode | Role::Admin),
            // Reading a replica's data and digests: a DataNode copying it (a migration's
            // target pulls from its source), and the ConfigNode verifying the copy.
            Access::DataNodeRead => matches!(self, Role::ConfigNode | Role::DataNode),
            Access::Admin => self == Role::Admin,
            Access::Registration => self == Role::DataNode,
            Access::Peer => self == Role::ConfigNode,
            // The ConfigNode group's membership: admins, and a ConfigNode joining a group.
            Access::Membership => matches!(self, Role::ConfigNode | Role::Admin),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a call needs its connection's role to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// DataNode calls that carry an epoch or change regions and tasks.
    DataNodeControl,
    /// `DataNode.writeRegion` (data, no epoch, no task).
    DataNodeWrite,
    /// `DataNode.readRegion` and `DataNode.regionDigest` (read-only, no epoch).
    DataNodeRead,
    /// The ConfigNode's admin API (databases, procedures, listings).
    Admin,
    /// A DataNode registering with and reporting to the ConfigNode.
    Registration,
    /// ConfigNode-to-ConfigNode calls (Raft messages).
    Peer,
    /// The ConfigNode group's status and membership changes.
    Membership,
}

/// The two kinds of secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Node to node (ConfigNode and DataNode roles).
    Internal,
    /// Administrators.
    Admin,
}

impl SecretKind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Internal => "internal",
            SecretKind::Admin => "admin",
        }
    }
}

/// A secret. Never printed: `Debug` and `Display` show only that it is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text` (surrounding whitespace, e.g. a file's trailing newline, is dropped).
    pub fn new(text: impl AsRef<str>) -> Self {
        Self(text.as_ref().trim().to_string())
    }

    /// The secret itself, for sending at login.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (never a valid secret).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in time independent of where the secrets differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Secret::new(text)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Secret::new(text)
    }
}

impl From<&String> for Secret {
    fn from(text: &String) -> Self {
        Secret::new(text)
    }
}

/// The secrets a server checks logins against. A missing kind refuses that kind's roles.
#[derive(Debug, Clone, Default)]
pub struct ServerSecrets {
    /// Checked for ConfigNode and DataNode logins.
    pub internal: Option<Secret>,
    /// Checked for admin logins.
    pub admin: Option<Secret>,
}

impl ServerSecrets {
    /// Separate internal and admin secrets.
    pub fn new(internal: impl Into<Secret>, admin: impl Into<Secret>) -> Self {
        Self {
            internal: Some(internal.into()),
            admin: Some(admin.into()),
        }
    }

    /// One secret for every role (the single cluster secret of older releases).
    pub fn shared(secret: impl Into<Secret>) -> Self {
        let secret = secret.into();
        Self {
            internal: Some(secret.clone()),
            admin: Some(secret),
        }
    }

    /// Only node-to-node logins (no admin logins accepted).
    pub fn internal_only(internal: impl Into<Secret>) -> Self {
        Self {
            internal: Some(internal.into()),
            admin: None,
        }
    }

    /// The secret `role` must present, if this server accepts that role.
    pub fn for_role(&self, role: Role) -> Option<&Secret> {
        match role.secret_kind() {
            SecretKind::Internal => self.internal.as_ref(),
            SecretKind::Admin => self.admin.as_ref(),
        }
    }
}

/// A plain secret: one shared by every role (the single cluster secret of older releases).
impl From<&str> for ServerSecrets {
    fn from(secret: &str) -> Self {
        ServerSecrets::shared(secret)
    }
}

impl From<&String> for ServerSecrets {
    fn from(secret: &String) -> Self {
        ServerSecrets::shared(secret)
    }
}

impl From<Secret> for ServerSecrets {
    fn from(secret: Secret) -> Self {
        ServerSecrets::shared(secret)
    }
}

impl From<&Secret> for ServerSecrets {
    fn from(secret: &Secret) -> Self {
        ServerSecrets::shared(secret.clone())
    }
}

impl From<&ServerSecrets> for ServerSecrets {
    fn from(secrets: &ServerSecrets) -> Self {
        secrets.clone()
    }
}

/// How failed logins are rate-limited per source address: a token bucket of `burst`
/// failures, refilled by one every `refill_every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRateLimit {
    /// Failed logins an address may make in a burst.
    pub burst: u32,
    /// One more failed login is allowed per this interval.
    pub refill_every: Duration,
    /// At most one WARN per address per window.
    pub warn_window: Duration,
}

impl Default for LoginRateLimit {
    fn default() -> Self {
        Self {
            burst: 10,
            refill_every: Duration::from_secs(1),
            warn_window: Duration::from_secs(10),
        }
    }
}

/// Addresses tracked at most; past it, the buckets that have refilled are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: Instant,
    warn: WarnWindow,
}

/// Per-address token buckets of failed logins (RPC thread only).
pub(crate) struct LoginLimiter {
    config: LoginRateLimit,
    buckets: RefCell<BTreeMap<IpAddr, Bucket>>,
}

/// What the limiter says about a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Check the secret.
    Check,
    /// Refuse without checking; a token comes back after this long.
    Throttled(Duration),
}

impl LoginLimiter {
    pub(crate) fn new(config: LoginRateLimit) -> Self {
        Self {
            config,
            buckets: RefCell::new(BTreeMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let per_sec = 1.0 / self.config.refill_every.as_secs_f64().max(1e-6);
        let gained = now.duration_since(bucket.updated).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + gained).min(f64::from(self.config.burst));
        bucket.updated = now;
    }

    /// Whether a login from `ip` may be checked now. Successful logins never use tokens:
    /// only failures do, so a correct secret works as soon as the address has a token.
    pub(crate) fn gate(&self, ip: IpAddr) -> Gate {
        let now = Instant::now();
        let mut buckets = self.buckets.borrow_mut();
        let Some(bucket) = buckets.get_mut(&ip) else {
            return Gate::Check;
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            Gate::Check
        } else {
            let wait = self.config.refill_every.mul_f64(1.0 - bucket.tokens);
            if let Some(count) = bucket.warn.note() {
                tracing::warn!(
                    peer = %ip,
                    refused = count,
                    "too many failed logins from this address: refusing its logins unchecked"
                );
            }
            Gate::Throttled(wait)
        }
    }

    /// Records a failed login from `ip`; logs a WARN at most once per window per address.
    pub(crate) fn failed(&self, ip: IpAddr, why: &str) {
        let now = Instant::now();
        let mut buckets = self.buckets.borrow_mut();
        if !buckets.contains_key(&ip) && buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.forget_refilled(&mut buckets, now);
        }
        let bucket = buckets.entry(ip).or_insert_with(|| Bucket {
            tokens: f64::from(self.config.burst),
            updated: now,
            warn: WarnWindow::new(self.config.warn_window),
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        match bucket.warn.note() {
            Some(count) => tracing::warn!(peer = %ip, failed = count, "login refused: {why}"),
            None => tracing::debug!(peer = %ip, "login refused: {why}"),
        }
    }

    /// Drops full buckets; if none is full, the one with the most tokens.
    fn forget_refilled(&self, buckets: &mut BTreeMap<IpAddr, Bucket>, now: Instant) {
        for bucket in buckets.values_mut() {
            self.refill(bucket, now);
        }
        let full = f64::from(self.config.burst);
        buckets.retain(|_, b| b.tokens < full);
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            let most = buckets
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(ip, _)| *ip);
            if let Some(ip) = most {
                buckets.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_reach_only_their_own_calls() {
        use Access::*;
        for (role, allowed) in [
            (
                Role::ConfigNode,
                vec![DataNodeControl, DataNodeWrite, DataNodeRead, Peer],
            ),
            (Role::DataNode, vec![Registration, DataNodeRead]),
            (Role::Admin, vec![Admin, DataNodeWrite]),
        ] {
            for access in [
                DataNodeControl,
                DataNodeWrite,
                DataNodeRead,
                Admin,
                Registration,
                Peer,
            ] {
                assert_eq!(
                    role.may(access),
                    allowed.contains(&access),
                    "{role} {access:?}"
                );
            }
        }
    }

    #[test]
    fn role_codes_are_stable() {
        for (role, code) in [(Role::ConfigNode, 1), (Role::DataNode, 2), (Role::Admin, 3)] {
            assert_eq!(role.code(), code);
            assert_eq!(Role::from_code(code), Some(role));
        }
        assert_eq!(Role::from_code(0), None);
        assert_eq!(Role::from_code(4), None);
    }

    #[test]
    fn secrets_are_never_printed_and_compare_exactly() {
        let secret = Secret::new("hunter2-abcdef\n");
        assert_eq!(
            secret.expose(),
            "hunter2-abcdef",
            "trailing newline dropped"
        );
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        let secrets = ServerSecrets::new("in", "ad");
        assert!(!format!("{secrets:?}").contains("in\""));
        assert!(secret.matches("hunter2-abcdef"));
        assert!(!secret.matches("hunter2-abcdeg"));
        assert!(!secret.matches("hunter2-abcde"));
        assert!(!secret.matches(""));
    }

    #[test]
    fn failed_logins_empty_the_bucket_and_it_refills() {
        let limiter = LoginLimiter::new(LoginRateLimit {
            burst: 3,
            refill_every: Duration::from_millis(50),
            warn_window: Duration::from_secs(60),
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(limiter.gate(ip), Gate::Check);
            limiter.failed(ip, "wrong secret");
        }
        assert!(matches!(limiter.gate(ip), Gate::Throttled(_)));
        assert_eq!(
            limiter.gate(other),
            Gate::Check,
            "other addresses unaffected"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(limiter.gate(ip), Gate::Check, "a token came back");
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let limiter = LoginLimiter::new(LoginRateLimit::default());
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), "wrong secret");
        }
        assert!(limiter.tracked() <= MAX_TRACKED_ADDRESSES);
    }
}
