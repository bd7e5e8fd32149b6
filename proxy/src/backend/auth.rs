//! The credentials the proxy presents to Redis nodes, and the random secrets memlog makes.

use std::sync::Arc;

use bytes::Bytes;

use crate::resp::encode_command;

/// The credentials the proxy presents to Redis nodes (`[backend]` in the configuration). The
/// password comes from a file or the environment, never from a command line, and is never shown:
/// `Debug` leaves it out.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendAuth {
    /// The ACL user; `None` is Redis's `default` user (`requirepass`).
    pub user: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAuth").field("user", &self.user).field("password", &"<hidden>").finish()
    }
}

/// The environment variable that may hold the password instead of `[backend] password_file`.
const PASSWORD_ENV: &str = "MEMLOG_BACKEND_PASSWORD";

/// Why the backend credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read [backend] password_file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("[backend] password_file {path} is empty")]
    Empty { path: String },
    #[error("[backend] user is set but there is no password: set password_file or {PASSWORD_ENV}")]
    NoPassword,
}

impl BackendAuth {
    /// The credentials `[backend]` names: the password from `password_file` (its first line),
    /// else from `MEMLOG_BACKEND_PASSWORD`; `None` when neither is set (nodes without a password).
    pub fn from_config(cfg: &crate::config::BackendConfig) -> Result<Option<Arc<BackendAuth>>, AuthConfigError> {
        let password = match &cfg.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| AuthConfigError::File { path: path.clone(), source })?;
                let line = text.lines().next().unwrap_or_default().trim_end().to_string();
                if line.is_empty() {
                    return Err(AuthConfigError::Empty { path: path.clone() });
                }
                Some(line)
            }
            None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        };
        match password {
            Some(password) => Ok(Some(Arc::new(BackendAuth { user: cfg.user.clone(), password }))),
            None if cfg.user.is_some() => Err(AuthConfigError::NoPassword),
            None => Ok(None),
        }
    }

    /// `AUTH [user] password`.
    pub(crate) fn auth_command(&self) -> Bytes {
        match &self.user {
            Some(user) => encode_command(&["AUTH", user, &self.password]),
            None => encode_command(&["AUTH", &self.password]),
        }
    }

    /// `HELLO 3 AUTH user password` (`default` when no user is set).
    pub(super) fn hello3_command(&self) -> Bytes {
        encode_command(&["HELLO", "3", "AUTH", self.user.as_deref().unwrap_or("default"), &self.password])
    }
}

/// A fresh random secret (192 bits from the system's RNG, hex): node passwords and the one-time
/// credential of a snapshot load.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
