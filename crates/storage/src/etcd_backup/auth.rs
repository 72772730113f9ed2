//! Users, roles and the auth flag in a backup of etcd's format: etcd's `auth` bucket
//! (`authEnabled`, one byte; `authRevision`, 8 bytes big-endian), `authUsers` and `authRoles`
//! (`authpb.User` and `authpb.Role` by name), to and from the auth store's records in rskv's
//! system keyspace ([`crate::state_machine::auth`]). Both keep bcrypt hashes of the passwords
//! and etcd's permission types, so a user logs in with the same password on either side.

use std::io;

use bytes::Bytes;
use prost::Message;
use rskv_proto::etcd::authpb;
use rskv_proto::storage as pb;

use super::bbolt::Bolt;
use crate::error::io_err;
use crate::mvcc::decode;
use crate::state_machine::auth::from_etcd_permission;
use crate::state_machine::auth::to_etcd_permission;
use crate::state_machine::auth::META_KEY;
use crate::state_machine::auth::ROLE_PREFIX;
use crate::state_machine::auth::USER_PREFIX;
use crate::state_machine::Keyspace;
use crate::state_machine::Record;

/// etcd's bucket of the flag and revision.
pub const AUTH_BUCKET: &[u8] = b"auth";
/// etcd's bucket of users.
pub const USERS_BUCKET: &[u8] = b"authUsers";
/// etcd's bucket of roles.
pub const ROLES_BUCKET: &[u8] = b"authRoles";

fn text(bytes: &[u8], what: &str) -> io::Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| io_err(format!("etcd backup: {what} {bytes:?} is not UTF-8")))
}

/// The auth store's records for the users, roles and flag in etcd's buckets of `db` (none when
/// it has none).
///
/// # Errors
/// When a record is damaged.
pub fn from_etcd(db: &Bolt) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let record = |key: Vec<u8>, value: Vec<u8>| Record {
        space: Keyspace::System,
        key: Bytes::from(key),
        value: Bytes::from(value),
    };
    if let Some(flags) = db.bucket(AUTH_BUCKET)? {
        let value = |key: &[u8]| flags.iter().find(|p| p.key == key).map(|p| p.value);
        let revision = match value(b"authRevision") {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| io_err("etcd backup: authRevision is not 8 bytes"))?,
            ),
            None => 0,
        };
        let meta = pb::AuthMeta {
            enabled: value(b"authEnabled") == Some(&[1u8][..]),
            revision,
        };
        out.push(record(META_KEY.to_vec(), meta.encode_to_vec()));
    }
    for pair in db.bucket(USERS_BUCKET)?.unwrap_or_default() {
        let user: authpb::User = decode(pair.value, "etcd user")?;
        let name = text(&user.name, "user name")?;
        let converted = pb::AuthUser {
            password_hash: text(&user.password, "password hash")?,
            roles: user.roles,
            no_password: user.options.is_some_and(|o| o.no_password),
            name: name.clone(),
        };
        let key = [USER_PREFIX, name.as_bytes()].concat();
        out.push(record(key, converted.encode_to_vec()));
    }
    for pair in db.bucket(ROLES_BUCKET)?.unwrap_or_default() {
        let role: authpb::Role = decode(pair.value, "etcd role")?;
        let name = text(&role.name, "role name")?;
        let permissions = role
            .key_permission
            .into_iter()
            .map(from_etcd_permission)
            .collect();
        let converted = pb::AuthRole {
            name: name.clone(),
            permissions,
        };
        let key = [ROLE_PREFIX, name.as_bytes()].concat();
        out.push(record(key, converted.encode_to_vec()));
    }
    Ok(out)
}

/// A pair of one of etcd's buckets: the bucket, the key and the value.
pub type BucketPair = (&'static [u8], Vec<u8>, Vec<u8>);

/// The pairs of etcd's buckets for one record of rskv's system keyspace; none for a record that
/// is not the auth store's.
///
/// # Errors
/// When the record is damaged.
pub fn to_etcd(key: &[u8], value: &[u8]) -> io::Result<Vec<BucketPair>> {
    if key == META_KEY {
        let meta: pb::AuthMeta = decode(value, "auth meta")?;
        return Ok(vec![
            (
                AUTH_BUCKET,
                b"authEnabled".to_vec(),
                vec![u8::from(meta.enabled)],
            ),
            (
                AUTH_BUCKET,
                b"authRevision".to_vec(),
                meta.revision.to_be_bytes().to_vec(),
            ),
        ]);
    }
    if key.starts_with(USER_PREFIX) {
        let user: pb::AuthUser = decode(value, "user")?;
        let etcd = authpb::User {
            name: Bytes::from(user.name.clone()),
            password: Bytes::from(user.password_hash),
            roles: user.roles,
            options: Some(authpb::UserAddOptions {
                no_password: user.no_password,
            }),
        };
        return Ok(vec![(
            USERS_BUCKET,
            user.name.into_bytes(),
            etcd.encode_to_vec(),
        )]);
    }
    if key.starts_with(ROLE_PREFIX) {
        let role: pb::AuthRole = decode(value, "role")?;
        let etcd = authpb::Role {
            name: Bytes::from(role.name.clone()),
            key_permission: role
                .permissions
                .into_iter()
                .map(to_etcd_permission)
                .collect(),
        };
        return Ok(vec![(
            ROLES_BUCKET,
            role.name.into_bytes(),
            etcd.encode_to_vec(),
        )]);
    }
    Ok(Vec::new())
}
