//! Dashboard users and their sessions: argon2id password hashes, session tokens stored as
//! SHA-256 hashes, a CSRF token per session.

use crate::keys;
use crate::store::{Org, Store, StoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use rusqlite::{params, OptionalExtension};

/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3_600_000;
pub const MIN_PASSWORD: usize = 12;

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub org: Org,
    pub email: String,
    pub csrf: String,
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A hash to verify against when the user does not exist, so that a wrong email costs the
/// same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"decoy password, never valid", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl Store {
    pub fn add_user(
        &self,
        org_name: &str,
        email: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let email = email.trim().to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(StoreError::Io(format!("{email:?} is not an email address")));
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(StoreError::Io(format!(
                "the password must have at least {MIN_PASSWORD} characters"
            )));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| StoreError::Io(format!("hashing the password: {e}")))?
            .to_string();
        let conn = self.conn();
        let org_id: i64 = conn
            .query_row(
                "SELECT id FROM orgs WHERE name = ?1",
                params![org_name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchOrg(org_name.into()))?;
        let n = conn.execute(
            "INSERT INTO users (org_id, email, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(email) DO NOTHING",
            params![org_id, email, hash, now_ms],
        )?;
        if n == 0 {
            return Err(StoreError::Io(format!("a user {email} already exists")));
        }
        Ok(())
    }

    /// Check a password and open a session: returns the session token (for the cookie) and the
    /// session. `None` for a wrong email or password, a disabled org, alike.
    pub fn login(
        &self,
        email: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Option<(String, Session)>, StoreError> {
        let email = email.trim().to_ascii_lowercase();
        let found: Option<(i64, String, i64, String, bool)> = self
            .conn()
            .query_row(
                "SELECT u.id, u.password_hash, o.id, o.name, o.disabled FROM users u
                 JOIN orgs o ON o.id = u.org_id WHERE u.email = ?1",
                params![email],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let hash = found.as_ref().map_or(decoy_hash(), |f| f.1.as_str());
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let Some((user_id, _, org_id, org_name, disabled)) = found else {
            return Ok(None);
        };
        if !ok || disabled {
            return Ok(None);
        }
        let token = keys::random_token();
        let csrf = keys::random_token();
        let conn = self.conn();
        conn.execute(
            "DELETE FROM sessions WHERE expires_ms < ?1",
            params![now_ms],
        )?;
        conn.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![keys::hash(&token), user_id, csrf, now_ms + SESSION_MS],
        )?;
        Ok(Some((
            token,
            Session {
                org: Org {
                    id: org_id,
                    name: org_name,
                },
                email,
                csrf,
            },
        )))
    }

    /// The live session a cookie token belongs to (not expired, org not disabled).
    pub fn session(&self, token: &str, now_ms: i64) -> Result<Option<Session>, StoreError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT o.id, o.name, u.email, s.csrf FROM sessions s
                 JOIN users u ON u.id = s.user_id JOIN orgs o ON o.id = u.org_id
                 WHERE s.token_hash = ?1 AND s.expires_ms > ?2 AND o.disabled = 0",
                params![keys::hash(token), now_ms],
                |r| {
                    Ok(Session {
                        org: Org {
                            id: r.get(0)?,
                            name: r.get(1)?,
                        },
                        email: r.get(2)?,
                        csrf: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn logout(&self, token: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![keys::hash(token)],
        )?;
        Ok(())
    }
}
