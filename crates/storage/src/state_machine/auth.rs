//! The auth store: etcd's users, roles and permissions and the enabled flag, replicated through
//! the log ([`Command::Auth`](crate::types::Command::Auth)) and kept in the system keyspace
//! (`auth/meta`, `auth/user/<name>`, `auth/role/<name>`), so every member enforces the same
//! rules, and they survive restarts and travel in snapshots. Only apply changes it, on the apply
//! thread; the services read it for every request ([`AuthStore::check`]).
//!
//! Simple tokens (what `Authenticate` hands out) are replicated too, as etcd's are, so a token
//! any member issued is valid on every member; they live in memory only and lapse after going
//! unused for the token TTL, or when their user is deleted, changes password, or auth is
//! disabled. After a restart clients authenticate again (etcd's clients do so on
//! "invalid auth token").
//!
//! The store never sees a password: the member that receives `UserAdd`, `UserChangePassword` or
//! `Authenticate` hashes or checks it (bcrypt) before anything is proposed.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use rskv_proto::storage as pb;
use rskv_proto::storage::auth_change::Op;

use crate::error::io_err;
use crate::types::Command;
use crate::types::TxnRequest;

/// `d` in whole milliseconds (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The user and the role that may do everything, and that enabling auth requires.
pub const ROOT: &str = "root";

/// The system-keyspace key of the flag and revision ([`pb::AuthMeta`]); public, with the user
/// and role prefixes, for backups in etcd's format, which carry them in etcd's buckets.
pub const META_KEY: &[u8] = b"auth/meta";
/// The prefix of a user's record ([`pb::AuthUser`]), followed by its name.
pub const USER_PREFIX: &[u8] = b"auth/user/";
/// The prefix of a role's record ([`pb::AuthRole`]), followed by its name.
pub const ROLE_PREFIX: &[u8] = b"auth/role/";

/// A permission as etcd's API and backups carry it (the same type numbers and range).
pub fn to_etcd_permission(p: pb::AuthPermission) -> rskv_proto::etcd::authpb::Permission {
    rskv_proto::etcd::authpb::Permission {
        perm_type: p.kind,
        key: p.key,
        range_end: p.range_end,
    }
}

/// A permission etcd's API or a backup of etcd's gave, as the auth store keeps it.
pub fn from_etcd_permission(p: rskv_proto::etcd::authpb::Permission) -> pb::AuthPermission {
    pb::AuthPermission {
        kind: p.perm_type,
        key: p.key,
        range_end: p.range_end,
    }
}

/// How long a simple token stays valid without being used, unless configured (etcd's
/// `--auth-token-ttl` default).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// What a request needs on its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Range, Watch, a Txn's comparisons and reads.
    Read,
    /// Put, DeleteRange, a Txn's writes, a lease revoke's keys.
    Write,
}

/// Why the auth store refused a change or a request (each is an etcd error the services answer
/// with etcd's code and message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Enabling auth without a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// Enabling auth while `root` lacks the `root` role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// Adding a user that exists.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// A request without a user where auth requires one, or an empty user name.
    #[error("user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("user name not found")]
    UserNotFound,
    /// Adding a role that exists.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// A wrong user name or password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user's roles do not grant what the request needs.
    #[error("permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticating while auth is disabled.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// A token that no member issued, or that lapsed.
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// Removing `root`, or its `root` role, while auth is enabled.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// A change this rskv does not know (from a newer version).
    #[error("unknown auth change")]
    UnknownChange,
}

/// Users, roles and the flag, as stored.
#[derive(Debug, Default, Clone)]
struct State {
    meta: pb::AuthMeta,
    users: BTreeMap<String, pb::AuthUser>,
    roles: BTreeMap<String, pb::AuthRole>,
    /// What each user may do, derived from the above whenever they change: every request reads
    /// it, so it is merged ahead of time (etcd keeps such a cache per user too).
    access: HashMap<String, Access>,
    /// Record keys changed since the last [`AuthStore::take_changes`].
    dirty: Vec<Vec<u8>>,
}

/// One user's permissions, merged: the key ranges it may read and those it may write, each
/// sorted and disjoint, so a check is one binary search and allocates nothing.
#[derive(Debug, Default, Clone)]
struct Access {
    /// The `root` role: everything.
    root: bool,
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl Access {
    fn of(user: &pb::AuthUser, roles: &BTreeMap<String, pb::AuthRole>) -> Access {
        let merged = |perm: Perm| {
            let mut granted: Vec<Interval> = user
                .roles
                .iter()
                .filter_map(|r| roles.get(r))
                .flat_map(|r| r.permissions.iter())
                .filter(|p| grants(p.kind, perm))
                .map(|p| Interval::of(&p.key, &p.range_end))
                .collect();
            granted.sort_by(|a, b| a.start.cmp(&b.start));
            let mut merged: Vec<Interval> = Vec::with_capacity(granted.len());
            for g in granted {
                match merged.last_mut() {
                    // Overlapping or adjacent: one range.
                    Some(last) if last.end.as_ref().is_none_or(|end| g.start <= *end) => {
                        if let Some(end) = &last.end {
                            if g.end.as_ref().is_none_or(|g_end| g_end > end) {
                                last.end = g.end;
                            }
                        }
                    }
                    _ => merged.push(g),
                }
            }
            merged
        };
        Access {
            root: user.roles.iter().any(|r| r == ROOT),
            read: merged(Perm::Read),
            write: merged(Perm::Write),
        }
    }

    /// Whether `key`..`range_end` (etcd's conventions) lies within one granted range.
    fn allows(&self, key: &[u8], range_end: &[u8], perm: Perm) -> bool {
        if self.root {
            return true;
        }
        let ranges = match perm {
            Perm::Read => &self.read,
            Perm::Write => &self.write,
        };
        // The ranges are disjoint and not adjacent: only the last one starting at or before
        // `key` can hold it.
        let at = ranges.partition_point(|r| r.start.as_slice() <= key);
        let Some(range) = at.checked_sub(1).map(|i| &ranges[i]) else {
            return false;
        };
        match (&range.end, range_end) {
            (None, _) => true,
            // Every key from `key` on.
            (Some(_), [0]) => false,
            // The key alone.
            (Some(end), []) => key < end.as_slice(),
            (Some(end), wanted_end) => wanted_end <= end.as_slice(),
        }
    }
}

impl State {
    fn load(records: &[(Bytes, Bytes)]) -> io::Result<State> {
        let mut state = State::default();
        let bad = |what: &str, e: prost::DecodeError| io_err(format!("auth {what}: {e}"));
        for (key, value) in records {
            if key.as_ref() == META_KEY {
                state.meta = pb::AuthMeta::decode(value.clone()).map_err(|e| bad("meta", e))?;
            } else if key.starts_with(USER_PREFIX) {
                let user = pb::AuthUser::decode(value.clone()).map_err(|e| bad("user", e))?;
                state.users.insert(user.name.clone(), user);
            } else if key.starts_with(ROLE_PREFIX) {
                let role = pb::AuthRole::decode(value.clone()).map_err(|e| bad("role", e))?;
                state.roles.insert(role.name.clone(), role);
            }
        }
        state.derive_access();
        Ok(state)
    }

    /// Recomputes [`State::access`] from the users and roles.
    fn derive_access(&mut self) {
        self.access = self
            .users
            .values()
            .map(|u| (u.name.clone(), Access::of(u, &self.roles)))
            .collect();
    }

    fn user_key(name: &str) -> Vec<u8> {
        [USER_PREFIX, name.as_bytes()].concat()
    }

    fn role_key(name: &str) -> Vec<u8> {
        [ROLE_PREFIX, name.as_bytes()].concat()
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut pb::AuthUser, AuthError> {
        self.dirty.push(State::user_key(name));
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut pb::AuthRole, AuthError> {
        self.dirty.push(State::role_key(name));
        self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)
    }

    fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Applies `change` as etcd's auth store does; `Ok(true)` when it changed users, roles or
    /// the flag (the revision moves), `Ok(false)` for a change that found its effect in place.
    fn apply(&mut self, change: &pb::AuthChange) -> Result<bool, AuthError> {
        let enabled = self.meta.enabled;
        let (user, role) = (change.user.as_str(), change.role.as_str());
        match change.op() {
            Op::Unknown => return Err(AuthError::UnknownChange),
            Op::Enable => {
                if enabled {
                    return Ok(false);
                }
                if !self.users.contains_key(ROOT) {
                    return Err(AuthError::RootUserNotExist);
                }
                if !self.has_root_role(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.meta.enabled = true;
            }
            Op::Disable => {
                if !enabled {
                    return Ok(false);
                }
                self.meta.enabled = false;
            }
            Op::UserAdd => {
                if user.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(user) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.dirty.push(State::user_key(user));
                self.users.insert(
                    user.to_string(),
                    pb::AuthUser {
                        name: user.to_string(),
                        password_hash: change.password_hash.clone(),
                        roles: Vec::new(),
                        no_password: change.no_password,
                    },
                );
            }
            Op::UserDelete => {
                if enabled && user == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.user_mut(user)?;
                self.users.remove(user);
            }
            Op::UserChangePassword => {
                let u = self.user_mut(user)?;
                u.password_hash = change.password_hash.clone();
                u.no_password = false;
            }
            Op::UserGrantRole => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.user_mut(user)?;
                if u.roles.iter().any(|r| r == role) {
                    return Ok(false);
                }
                u.roles.push(role.to_string());
                u.roles.sort();
            }
            Op::UserRevokeRole => {
                if enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.user_mut(user)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            Op::RoleAdd => {
                if role.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(role) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.dirty.push(State::role_key(role));
                self.roles.insert(
                    role.to_string(),
                    pb::AuthRole {
                        name: role.to_string(),
                        permissions: Vec::new(),
                    },
                );
            }
            Op::RoleDelete => {
                if enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.role_mut(role)?;
                self.roles.remove(role);
                // As etcd: the role is revoked from every user that had it.
                let holders: Vec<String> = self
                    .users
                    .values()
                    .filter(|u| u.roles.iter().any(|r| r == role))
                    .map(|u| u.name.clone())
                    .collect();
                for name in holders {
                    self.user_mut(&name)?.roles.retain(|r| r != role);
                }
            }
            Op::RoleGrantPermission => {
                let granted = change.permission.clone().unwrap_or_default();
                let r = self.role_mut(role)?;
                match r
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == granted.key && p.range_end == granted.range_end)
                {
                    Some(existing) => existing.kind = granted.kind,
                    None => r.permissions.push(granted),
                }
                r.permissions
                    .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            }
            Op::RoleRevokePermission => {
                let revoked = change.permission.clone().unwrap_or_default();
                let r = self.role_mut(role)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == revoked.key && p.range_end == revoked.range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
            Op::IssueToken => return Ok(false),
        }
        self.meta.revision += 1;
        Ok(true)
    }

    /// Whether `user` may do `perm` on `key`..`range_end` (etcd's range conventions).
    fn check(&self, user: &str, key: &[u8], range_end: &[u8], perm: Perm) -> Result<(), AuthError> {
        if !self.meta.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        match self.access.get(user) {
            Some(access) if access.allows(key, range_end, perm) => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }
}

/// [`AuthStore::check_txn`] over `state`.
fn check_txn(state: &State, user: &str, txn: &TxnRequest) -> Result<(), AuthError> {
    use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
    for compare in &txn.compare {
        state.check(user, &compare.key, &compare.range_end, Perm::Read)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => state.check(user, &r.key, &r.range_end, Perm::Read)?,
            Some(Op::RequestPut(p)) => {
                state.check(user, &p.key, b"", Perm::Write)?;
                if p.prev_kv {
                    state.check(user, &p.key, b"", Perm::Read)?;
                }
            }
            Some(Op::RequestDeleteRange(d)) => {
                state.check(user, &d.key, &d.range_end, Perm::Write)?;
                if d.prev_kv {
                    state.check(user, &d.key, &d.range_end, Perm::Read)?;
                }
            }
            Some(Op::RequestTxn(t)) => check_txn(state, user, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Whether a permission of `kind` (etcd's: 0 read, 1 write, 2 both) grants `perm`.
fn grants(kind: i32, perm: Perm) -> bool {
    matches!((kind, perm), (0 | 2, Perm::Read) | (1 | 2, Perm::Write))
}

/// A key range `[start, end)`; `end` `None`: to the end of the keyspace.
#[derive(Debug, Clone)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// etcd's conventions: an empty `range_end` is the key alone, `"\0"` every key from `key` on.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => Some([key, &[0u8][..]].concat()),
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }
}

/// A simple token's holder and when it was last used.
struct Token {
    user: String,
    /// When it was last used, in milliseconds since [`AuthStore::epoch`]: updated by readers
    /// under the map's read lock.
    used_ms: AtomicU64,
}

/// The auth store of one member: what apply changes and what the services check.
pub struct AuthStore {
    state: RwLock<State>,
    /// Simple tokens: read by every request (a read lock), written when one is issued or
    /// dropped, when lapsed ones are swept too.
    tokens: RwLock<HashMap<String, Token>>,
    /// The token TTL in milliseconds.
    token_ttl_ms: AtomicU64,
    /// The origin of [`Token::used_ms`].
    epoch: Instant,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore {
            state: RwLock::new(State::default()),
            tokens: RwLock::new(HashMap::new()),
            token_ttl_ms: AtomicU64::new(millis(DEFAULT_TOKEN_TTL)),
            epoch: Instant::now(),
        }
    }
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("enabled", &self.enabled())
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl AuthStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn tokens(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Token>> {
        self.tokens.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds since [`AuthStore::epoch`].
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn lapsed(&self, token: &Token, now_ms: u64) -> bool {
        now_ms.saturating_sub(token.used_ms.load(Ordering::Relaxed))
            >= self.token_ttl_ms.load(Ordering::Relaxed)
    }

    /// Replaces the store with what the system keyspace `records` hold (at start, after a
    /// snapshot install, after a failed commit). Tokens are kept: they name users, who are
    /// checked again on every use.
    ///
    /// # Errors
    /// When an auth record cannot be decoded.
    pub fn load(&self, records: &[(Bytes, Bytes)]) -> io::Result<()> {
        *self.write() = State::load(records)?;
        Ok(())
    }

    /// How long a simple token stays valid without use (etcd's `--auth-token-ttl`).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.token_ttl_ms.store(millis(ttl), Ordering::Relaxed);
    }

    /// Applies a replicated change (apply thread only).
    ///
    /// # Errors
    /// etcd's refusal; nothing changed then.
    pub fn apply(&self, change: &pb::AuthChange) -> Result<(), AuthError> {
        let mut state = self.write();
        let mut tried = state.clone();
        tried.dirty.clear();
        let changed = tried.apply(change)?;
        let mut dirty = std::mem::take(&mut state.dirty);
        dirty.append(&mut tried.dirty);
        if changed {
            tried.derive_access();
        }
        *state = tried;
        state.dirty = dirty;
        if changed {
            state.dirty.push(META_KEY.to_vec());
        }
        let user = change.user.as_str();
        let mut tokens = self.tokens();
        match change.op() {
            Op::IssueToken => {
                let now_ms = self.now_ms();
                tokens.retain(|_, t| !self.lapsed(t, now_ms));
                tokens.insert(
                    change.token.clone(),
                    Token {
                        user: user.to_string(),
                        used_ms: AtomicU64::new(now_ms),
                    },
                );
            }
            Op::Disable => tokens.clear(),
            Op::UserDelete | Op::UserChangePassword => tokens.retain(|_, t| t.user != user),
            _ => {}
        }
        Ok(())
    }

    /// The system-keyspace writes (`None` deletes) since the last call.
    pub fn take_changes(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let mut state = self.write();
        let mut keys = std::mem::take(&mut state.dirty);
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let value = if key == META_KEY {
                    Some(Bytes::from(state.meta.encode_to_vec()))
                } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
                    let name = String::from_utf8_lossy(name);
                    state
                        .users
                        .get(name.as_ref())
                        .map(|u| u.encode_to_vec().into())
                } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
                    let name = String::from_utf8_lossy(name);
                    state
                        .roles
                        .get(name.as_ref())
                        .map(|r| r.encode_to_vec().into())
                } else {
                    None
                };
                (Bytes::from(key), value)
            })
            .collect()
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.read().meta.enabled
    }

    /// The auth revision (bumped by every change).
    pub fn revision(&self) -> u64 {
        self.read().meta.revision
    }

    /// A user as stored.
    pub fn user(&self, name: &str) -> Option<pb::AuthUser> {
        self.read().users.get(name).cloned()
    }

    /// Whether user `name` exists.
    pub fn has_user(&self, name: &str) -> bool {
        self.read().users.contains_key(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.read().users.keys().cloned().collect()
    }

    /// A role as stored (`root` exists implicitly once granted).
    pub fn role(&self, name: &str) -> Option<pb::AuthRole> {
        self.read().roles.get(name).cloned()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.read().roles.keys().cloned().collect()
    }

    /// Whether `user` has the `root` role (may administer: members, compaction, auth).
    pub fn is_root(&self, user: &str) -> bool {
        self.read().has_root_role(user)
    }

    /// Whether `user` may do `perm` on `key`..`range_end` (etcd's range conventions); always
    /// when auth is disabled.
    ///
    /// Answers the auth revision the check saw: a write proposed on the strength of it is
    /// checked again at apply only if the revision has moved ([`Command::Authorized`]).
    ///
    /// # Errors
    /// [`AuthError::UserEmpty`] without a user, [`AuthError::PermissionDenied`] otherwise.
    pub fn check(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        perm: Perm,
    ) -> Result<u64, AuthError> {
        let state = self.read();
        state.check(user, key, range_end, perm)?;
        Ok(state.meta.revision)
    }

    /// Whether `user` may run the etcd transaction `txn`: read every key compared and ranged,
    /// write every key put or deleted (and read it when the previous value is asked for), in
    /// both branches and nested transactions, as etcd checks.
    ///
    /// # Errors
    /// As [`AuthStore::check`], whose answer this is too.
    pub fn check_txn(&self, user: &str, txn: &TxnRequest) -> Result<u64, AuthError> {
        let state = self.read();
        check_txn(&state, user, txn)?;
        Ok(state.meta.revision)
    }

    /// Whether `user` may make the write `command` (an etcd transaction or one of rskv's own
    /// writes; other commands are not a user's writes and pass).
    ///
    /// # Errors
    /// As [`AuthStore::check`].
    pub fn check_command(&self, user: &str, command: &Command) -> Result<(), AuthError> {
        let state = self.read();
        let check = |key: &[u8], perm| state.check(user, key, b"", perm);
        match command {
            Command::Put {
                key, return_prev, ..
            } => {
                check(key, Perm::Write)?;
                if *return_prev {
                    check(key, Perm::Read)?;
                }
                Ok(())
            }
            Command::Delete { key, .. } => check(key, Perm::Write),
            Command::BatchPut { pairs, .. } => pairs
                .iter()
                .try_for_each(|(key, _)| check(key, Perm::Write)),
            Command::CompareAndSwap { key, .. } => {
                check(key, Perm::Read)?;
                check(key, Perm::Write)
            }
            Command::Txn(txn) => check_txn(&state, user, txn),
            _ => Ok(()),
        }
    }

    /// The user a simple token was issued to, if it is valid (and refreshes it).
    pub fn token_user(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let t = tokens.get(token)?;
        let now_ms = self.now_ms();
        if self.lapsed(t, now_ms) {
            // Swept when the next token is issued.
            return None;
        }
        t.used_ms.fetch_max(now_ms, Ordering::Relaxed);
        Some(t.user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, user: &str, role: &str) -> pb::AuthChange {
        let mut c = pb::AuthChange {
            user: user.into(),
            role: role.into(),
            password_hash: "$2b$04$hash".into(),
            ..Default::default()
        };
        c.set_op(op);
        c
    }

    fn grant(role: &str, kind: i32, key: &str, end: &str) -> pb::AuthChange {
        pb::AuthChange {
            permission: Some(pb::AuthPermission {
                kind,
                key: key.as_bytes().to_vec().into(),
                range_end: end.as_bytes().to_vec().into(),
            }),
            ..change(Op::RoleGrantPermission, "", role)
        }
    }

    #[test]
    fn enabling_should_need_root_with_the_root_role_as_etcd() {
        let store = AuthStore::default();
        assert_eq!(
            store.apply(&change(Op::Enable, "", "")),
            Err(AuthError::RootUserNotExist)
        );
        store
            .apply(&change(Op::UserAdd, ROOT, ""))
            .expect("add root");
        assert_eq!(
            store.apply(&change(Op::Enable, "", "")),
            Err(AuthError::RootRoleNotExist)
        );
        store
            .apply(&change(Op::UserGrantRole, ROOT, ROOT))
            .expect("the root role needs no RoleAdd");
        store.apply(&change(Op::Enable, "", "")).expect("enable");
        assert!(store.enabled());
        assert_eq!(
            store.apply(&change(Op::UserDelete, ROOT, "")),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            store.apply(&change(Op::UserRevokeRole, ROOT, ROOT)),
            Err(AuthError::InvalidAuthMgmt)
        );
    }

    #[test]
    fn permissions_should_cover_the_whole_range_asked() {
        let store = AuthStore::default();
        for c in [
            change(Op::UserAdd, ROOT, ""),
            change(Op::UserGrantRole, ROOT, ROOT),
            change(Op::UserAdd, "alice", ""),
            change(Op::RoleAdd, "", "reader"),
            grant("reader", 0, "a/", "a0"),
            grant("reader", 2, "c", ""),
            grant("reader", 1, "w/", "\0"),
            change(Op::UserGrantRole, "alice", "reader"),
        ] {
            store.apply(&c).expect("set up");
        }
        // Disabled: everything is allowed, even without a user.
        assert_eq!(store.check("", b"b", b"", Perm::Write).map(drop), Ok(()));
        store.apply(&change(Op::Enable, "", "")).expect("enable");
        let check = |user: &str, key: &str, end: &str, perm| {
            store
                .check(user, key.as_bytes(), end.as_bytes(), perm)
                .map(drop)
        };
        assert_eq!(check("", "a/x", "", Perm::Read), Err(AuthError::UserEmpty));
        assert_eq!(check("root", "anything", "\0", Perm::Write), Ok(()));
        assert_eq!(check("alice", "a/x", "", Perm::Read), Ok(()));
        assert_eq!(check("alice", "a/", "a0", Perm::Read), Ok(()), "the prefix");
        assert_eq!(
            check("alice", "a/", "b", Perm::Read),
            Err(AuthError::PermissionDenied),
            "wider than granted"
        );
        assert_eq!(
            check("alice", "a/x", "", Perm::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            check("alice", "b/x", "", Perm::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(check("alice", "c", "", Perm::Write), Ok(()), "readwrite");
        assert_eq!(
            check("alice", "w/zzz", "\0", Perm::Write),
            Ok(()),
            "open-ended"
        );
        assert_eq!(
            check("nobody", "a/x", "", Perm::Read),
            Err(AuthError::PermissionDenied)
        );
        // Revoking the permission takes it away.
        let mut revoke = grant("reader", 0, "a/", "a0");
        revoke.set_op(Op::RoleRevokePermission);
        store.apply(&revoke).expect("revoke");
        assert_eq!(
            check("alice", "a/x", "", Perm::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(store.apply(&revoke), Err(AuthError::PermissionNotGranted));
    }

    #[test]
    fn ranges_granted_by_several_roles_should_join_up() {
        let store = AuthStore::default();
        for c in [
            change(Op::UserAdd, ROOT, ""),
            change(Op::UserGrantRole, ROOT, ROOT),
            change(Op::UserAdd, "bob", ""),
            change(Op::RoleAdd, "", "one"),
            change(Op::RoleAdd, "", "two"),
            grant("one", 0, "a/", "a0"),
            grant("two", 0, "a0", "b"),
            grant("one", 0, "m", "p"),
            grant("two", 2, "n", "q"),
            grant("one", 0, "x", ""),
            grant("two", 0, "x\0", "y"),
            change(Op::UserGrantRole, "bob", "one"),
            change(Op::UserGrantRole, "bob", "two"),
            change(Op::Enable, "", ""),
        ] {
            store.apply(&c).expect("set up");
        }
        let records: Vec<(Bytes, Bytes)> = store
            .take_changes()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let loaded = AuthStore::default();
        loaded.load(&records).expect("load");
        for store in [&store, &loaded] {
            let read = |key: &str, end: &str| {
                store
                    .check("bob", key.as_bytes(), end.as_bytes(), Perm::Read)
                    .map(drop)
            };
            let denied = Err(AuthError::PermissionDenied);
            assert_eq!(read("a/", "b"), Ok(()), "adjacent ranges of two roles");
            assert_eq!(read("a/", "b\0"), denied, "one key past them");
            assert_eq!(read("m", "q"), Ok(()), "overlapping ranges");
            assert_eq!(read("m", "r"), denied);
            assert_eq!(read("o", ""), Ok(()));
            assert_eq!(read("x", "y"), Ok(()), "a key and the range right after it");
            assert_eq!(read("0", ""), denied, "below every range");
            assert_eq!(read("z", ""), denied, "above every range");
            assert_eq!(read("a/", "\0"), denied, "to the end of the keyspace");
            let write = |key: &str, end: &str| {
                store
                    .check("bob", key.as_bytes(), end.as_bytes(), Perm::Write)
                    .map(drop)
            };
            assert_eq!(write("n", "q"), Ok(()));
            assert_eq!(write("m", ""), denied, "read only there");
        }
    }

    #[test]
    fn the_store_should_come_back_from_its_records_and_tokens_lapse_with_their_user() {
        let store = AuthStore::default();
        for c in [
            change(Op::UserAdd, ROOT, ""),
            change(Op::UserGrantRole, ROOT, ROOT),
            change(Op::RoleAdd, "", "r"),
            grant("r", 2, "k", ""),
            change(Op::Enable, "", ""),
        ] {
            store.apply(&c).expect("apply");
        }
        let records: Vec<(Bytes, Bytes)> = store
            .take_changes()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let again = AuthStore::default();
        again.load(&records).expect("load");
        assert!(again.enabled());
        assert_eq!(again.revision(), store.revision());
        assert_eq!(again.role("r"), store.role("r"));
        assert!(again.is_root(ROOT));

        let mut issue = change(Op::IssueToken, ROOT, "");
        issue.token = "t1".into();
        store.apply(&issue).expect("issue");
        assert_eq!(store.token_user("t1").as_deref(), Some(ROOT));
        assert_eq!(store.token_user("t2"), None);
        store
            .apply(&change(Op::UserChangePassword, ROOT, ""))
            .expect("change password");
        assert_eq!(
            store.token_user("t1"),
            None,
            "a new password ends the token"
        );
        let mut issue = change(Op::IssueToken, ROOT, "");
        issue.token = "t3".into();
        store.apply(&issue).expect("issue");
        store.set_token_ttl(Duration::ZERO);
        assert_eq!(store.token_user("t3"), None, "lapsed");
    }

    #[test]
    fn a_refused_change_should_leave_nothing_behind() {
        let store = AuthStore::default();
        store.apply(&change(Op::UserAdd, "u", "")).expect("add");
        store.take_changes();
        let revision = store.revision();
        assert_eq!(
            store.apply(&change(Op::UserGrantRole, "u", "missing")),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(
            store.apply(&change(Op::UserAdd, "u", "")),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(store.revision(), revision);
        assert!(store.take_changes().is_empty());
    }
}
