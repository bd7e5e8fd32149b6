//! `memlog up --user NAME --password-file FILE`: a protected local cluster. The proxy's
//! configuration gets that user with every permission (`on #<sha256> ~* &* +@all`) and no
//! `default` (which the proxy then turns off), so every connection must authenticate; the
//! password itself is written nowhere, only its SHA-256 hash (as Redis keeps it).
//!
//! The configuration only seeds the metadata store while it holds no users (README,
//! "Security"): a `--dir` whose store already has users but not NAME is refused, since the flag
//! would otherwise be silently ignored.

use std::path::{Path, PathBuf};

use journal_service::meta::MetaStore;
use memlog_proxy::config::UserConfig;
use sha2::{Digest, Sha256};

use crate::cluster_file::AdminRecord;
use crate::deployment::read_password_file;

/// Why `--user` cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalUserError {
    #[error("--password-file: {0:#}")]
    Password(anyhow::Error),
    #[error("--user {0:?}: a user name may not be empty or hold spaces or control characters")]
    Name(String),
    #[error(
        "--user {user}: the metadata store {store} already holds users ({existing}) and the store, not the \
         configuration, is the truth once it has users: add {user} with ACL SETUSER, or use a fresh --dir"
    )]
    StoreHasOthers { user: String, store: String, existing: String },
    #[error(
        "--user {user}: the metadata store {store} holds {user} without this password (the store is the truth \
         once it has users): give the password it has, or change it with ACL SETUSER {user} >…"
    )]
    OtherPassword { user: String, store: String },
    #[error("metadata store {store}: {reason}")]
    Store { store: String, reason: String },
}

/// The user `memlog up` creates, with its password read from its file.
pub struct LocalUser {
    pub name: String,
    pub password: String,
    pub password_file: PathBuf,
}

impl LocalUser {
    pub fn read(name: &str, password_file: &Path) -> Result<LocalUser, LocalUserError> {
        if name.is_empty() || !name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(LocalUserError::Name(name.to_string()));
        }
        let password = read_password_file(password_file).map_err(LocalUserError::Password)?;
        let password_file = std::path::absolute(password_file)
            .map_err(|e| LocalUserError::Password(anyhow::anyhow!("{}: {e}", password_file.display())))?;
        Ok(LocalUser { name: name.to_string(), password, password_file })
    }

    /// The `[[users]]` entry: every permission, the password as its SHA-256 hash.
    pub fn config(&self) -> UserConfig {
        UserConfig {
            name: self.name.clone(),
            password: None,
            rules: Some(format!("on {} ~* &* +@all", self.hash_rule())),
        }
    }

    /// `#<sha256 hex>`: the password as a rule, as `ACL LIST` shows it.
    fn hash_rule(&self) -> String {
        Sha256::digest(self.password.as_bytes()).iter().fold(String::from("#"), |mut rule, b| {
            rule.push_str(&format!("{b:02x}"));
            rule
        })
    }

    /// What `cluster.json` records, for `memlog status --dir` to log in with.
    pub fn record(&self) -> AdminRecord {
        AdminRecord { user: self.name.clone(), password_file: self.password_file.clone() }
    }

    /// Refuses a store that already holds users other than this one, or this one without this
    /// password (the configuration would not be read, and the proxy would never let `up` in);
    /// a store without users, or one this user is in with this password, is fine.
    pub async fn check_store(&self, metadata_url: &str) -> Result<(), LocalUserError> {
        let store_error = |e: journal_service::meta::MetaError| LocalUserError::Store {
            store: metadata_url.to_string(),
            reason: e.to_string(),
        };
        let store = MetaStore::open(metadata_url).await.map_err(store_error)?;
        let users = store.list_users().await.map_err(store_error)?;
        if users.is_empty() {
            return Ok(());
        }
        if let Some((_, record)) = users.iter().find(|(name, _)| *name == self.name) {
            let rules = record.get("rules").and_then(|r| r.as_str()).unwrap_or_default();
            if rules.split_whitespace().any(|rule| rule == self.hash_rule()) {
                return Ok(());
            }
            return Err(LocalUserError::OtherPassword { user: self.name.clone(), store: metadata_url.to_string() });
        }
        Err(LocalUserError::StoreHasOthers {
            user: self.name.clone(),
            store: metadata_url.to_string(),
            existing: users.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_read_from_the_first_line_and_kept_only_as_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let user = LocalUser::read("admin", &file).unwrap();
        assert_eq!(user.password, "s3cret");
        let rules = user.config().rules.unwrap();
        // sha256("s3cret"), from sha256sum.
        assert_eq!(rules, "on #1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0 ~* &* +@all");
        assert!(!rules.contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(LocalUser::read("admin", &file), Err(LocalUserError::Password(_))));
        assert!(matches!(LocalUser::read("two words", &file), Err(LocalUserError::Name(_))));
    }

    #[tokio::test]
    async fn a_store_with_other_users_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "pw\n").unwrap();
        let url = format!("file:{}", dir.path().join("metadata.json").display());
        let user = LocalUser::read("admin", &file).unwrap();
        user.check_store(&url).await.unwrap();
        let store = MetaStore::open(&url).await.unwrap();
        store.put_user("default", &serde_json::json!({ "rules": "on nopass ~* &* +@all" })).await.unwrap();
        let refused = user.check_store(&url).await.unwrap_err().to_string();
        assert!(refused.contains("already holds users (default)"), "{refused}");
        store.put_user("admin", &serde_json::json!({ "rules": "on #00 ~* &* +@all" })).await.unwrap();
        let refused = user.check_store(&url).await.unwrap_err().to_string();
        assert!(refused.contains("holds admin without this password"), "{refused}");
        store.put_user("admin", &serde_json::json!({ "rules": user.config().rules.unwrap() })).await.unwrap();
        user.check_store(&url).await.unwrap();
    }
}
