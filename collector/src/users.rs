//! Dashboard users and their sessions: argon2id password hashes, session tokens stored as
//! SHA-256 hashes, a CSRF token per session, a role per user. Users who sign in by SSO
//! (`oidc`) are found by the hash of their issuer and subject and have no password.

use crate::db::Conn;
use crate::keys;
use crate::store::{Org, Store, StoreError};
use crate::values;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;

/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3_600_000;
pub const MIN_PASSWORD: usize = 12;

/// What a user may do: an admin may change budgets, webhooks and users; a viewer only reads.
/// Recorded and shown for now: those changes arrive with budgets and alerts, and with them the
/// first callers of `Session::require_admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: admin or viewer"))
    }
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub org: Org,
    pub email: String,
    pub csrf: String,
    pub role: Role,
}

/// 403 for a session that may only read.
#[derive(Debug)]
pub struct Forbidden;

impl axum::response::IntoResponse for Forbidden {
    fn into_response(self) -> axum::response::Response {
        (
            axum::http::StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "forbidden",
                "message": "only an admin of the org may change this",
            })),
        )
            .into_response()
    }
}

impl Session {
    /// For calls that change budgets, webhooks or users: `?` on it answers a viewer with 403.
    pub fn require_admin(&self) -> Result<(), Forbidden> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(Forbidden),
        }
    }
}

/// Who the identity provider says signed in, once mapped to an org and a role (`oidc`).
#[derive(Debug, Clone)]
pub struct SsoUser {
    /// SHA-256 (hex) of the issuer and the subject: stored, and logged in part.
    pub subject_hash: String,
    /// A verified email address.
    pub email: String,
    pub org: String,
    pub role: Role,
}

/// Why an SSO sign-in opened no session, though the identity provider vouched for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoRefusal {
    NoSuchOrg(String),
    OrgDisabled(String),
    /// The email belongs to a user of another org, or to another SSO identity.
    EmailTaken,
}

impl std::fmt::Display for SsoRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SsoRefusal::NoSuchOrg(o) => write!(f, "your identity maps to org {o:?}, which does not exist here"),
            SsoRefusal::OrgDisabled(o) => write!(f, "org {o:?} is disabled"),
            SsoRefusal::EmailTaken => write!(
                f,
                "a user with your email address already exists in another org or for another identity"
            ),
        }
    }
}

pub(crate) fn valid_email(email: &str) -> bool {
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

#[cfg(test)]
thread_local! {
    /// Verifications against the decoy on this thread (for tests; `login` runs on the caller's).
    static DECOY_VERIFICATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Checks a password against a user's stored hash. With no usable hash (no such user, or an SSO
/// user, whose hash is empty) the password is verified against the decoy instead and refused, so
/// that every answer costs one argon2 verification: the time taken says nothing of whether the
/// email is a user's, or an SSO user's. Only a real stored hash can succeed.
fn verify_password(stored: Option<&str>, password: &str) -> bool {
    // Made on the first call whichever way it goes, so that making it never marks one way.
    let decoy = decoy_hash();
    if let Some(hash) = stored.and_then(|s| PasswordHash::new(s).ok()) {
        return Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
    }
    #[cfg(test)]
    DECOY_VERIFICATIONS.with(|n| n.set(n.get() + 1));
    if let Ok(decoy) = PasswordHash::new(decoy) {
        // The decoy's password is never one a caller can know; refused whatever the outcome.
        let _ = Argon2::default().verify_password(password.as_bytes(), &decoy);
    }
    false
}

impl Store {
    pub fn add_user(
        &self,
        org_name: &str,
        email: &str,
        password: &str,
        role: Role,
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
        let mut conn = self.conn();
        let org_id = crate::store::org_id(&mut conn, org_name)?;
        let n = conn.execute(
            "INSERT INTO users (org_id, email, password_hash, created_ms, role)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(email) DO NOTHING",
            values![org_id, &email, hash, now_ms, role.as_str()],
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
        let found: Option<(i64, String, i64, String, bool, String)> = self.conn().query_row_opt(
            "SELECT u.id, u.password_hash, o.id, o.name, o.disabled, u.role FROM users u
             JOIN orgs o ON o.id = u.org_id WHERE u.email = ?1",
            values![&email],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        let ok = verify_password(found.as_ref().map(|f| f.1.as_str()), password);
        let Some((user_id, _, org_id, org_name, disabled, role)) = found else {
            return Ok(None);
        };
        if !ok || disabled {
            return Ok(None);
        }
        let (token, csrf) = open_session(&mut self.conn(), user_id, now_ms)?;
        Ok(Some((
            token,
            Session {
                org: Org {
                    id: org_id,
                    name: org_name,
                },
                email,
                csrf,
                role: Role::parse(&role).unwrap_or(Role::Viewer),
            },
        )))
    }

    /// Opens a session for someone the identity provider vouched for. The user is found by
    /// subject, or else by email (a local user of the same org, then linked to this identity),
    /// or else made now (just in time, with no password). The org and role come from the
    /// provider's claims at every sign-in, so a change there counts at the next one.
    pub fn sso_sign_in(
        &self,
        who: &SsoUser,
        now_ms: i64,
    ) -> Result<Result<(String, Session), SsoRefusal>, StoreError> {
        let email = who.email.trim().to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(StoreError::Invalid(
                "the identity provider gave no valid email address".into(),
            ));
        }
        let mut conn = self.conn();
        let mut tx = conn.begin()?;
        let org: Option<(i64, bool)> = tx.query_row_opt(
            "SELECT id, disabled FROM orgs WHERE name = ?1",
            values![&who.org],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let org_id = match org {
            None => return Ok(Err(SsoRefusal::NoSuchOrg(who.org.clone()))),
            Some((_, true)) => return Ok(Err(SsoRefusal::OrgDisabled(who.org.clone()))),
            Some((id, false)) => id,
        };
        let by_subject: Option<i64> = tx.query_row_opt(
            "SELECT id FROM users WHERE sso_subject = ?1",
            values![&who.subject_hash],
            |r| r.get(0),
        )?;
        let by_email: Option<(i64, i64, Option<String>)> = tx.query_row_opt(
            "SELECT id, org_id, sso_subject FROM users WHERE email = ?1",
            values![&email],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let role = who.role.as_str();
        let user_id = match (by_subject, by_email) {
            (Some(id), Some((other, _, _))) if other != id => {
                return Ok(Err(SsoRefusal::EmailTaken));
            }
            (Some(id), _) => {
                tx.execute(
                    "UPDATE users SET email = ?1, org_id = ?2, role = ?3 WHERE id = ?4",
                    values![&email, org_id, role, id],
                )?;
                id
            }
            (None, Some((id, user_org, subject))) => {
                if subject.is_some() || user_org != org_id {
                    return Ok(Err(SsoRefusal::EmailTaken));
                }
                tx.execute(
                    "UPDATE users SET sso_subject = ?1, role = ?2 WHERE id = ?3",
                    values![&who.subject_hash, role, id],
                )?;
                id
            }
            (None, None) => tx.query_row(
                "INSERT INTO users (org_id, email, password_hash, created_ms, role, sso_subject)
                 VALUES (?1, ?2, '', ?3, ?4, ?5) RETURNING id",
                values![org_id, &email, now_ms, role, &who.subject_hash],
                |r| r.get(0),
            )?,
        };
        let (token, csrf) = open_session(&mut tx, user_id, now_ms)?;
        tx.commit()?;
        Ok(Ok((
            token,
            Session {
                org: Org {
                    id: org_id,
                    name: who.org.clone(),
                },
                email,
                csrf,
                role: who.role,
            },
        )))
    }

    /// The live session a cookie token belongs to (not expired, org not disabled).
    pub fn session(&self, token: &str, now_ms: i64) -> Result<Option<Session>, StoreError> {
        Ok(self.reader().query_row_opt(
            "SELECT o.id, o.name, u.email, s.csrf, u.role FROM sessions s
             JOIN users u ON u.id = s.user_id JOIN orgs o ON o.id = u.org_id
             WHERE s.token_hash = ?1 AND s.expires_ms > ?2 AND o.disabled = 0",
            values![keys::hash(token), now_ms],
            |r| {
                Ok(Session {
                    org: Org {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    },
                    email: r.get(2)?,
                    csrf: r.get(3)?,
                    // Anything unexpected reads as the lesser role.
                    role: Role::parse(&r.get::<String>(4)?).unwrap_or(Role::Viewer),
                })
            },
        )?)
    }

    pub fn logout(&self, token: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            values![keys::hash(token)],
        )?;
        Ok(())
    }
}

/// A new session for a user: its cookie token (stored as a hash) and CSRF token.
fn open_session(
    conn: &mut Conn,
    user_id: i64,
    now_ms: i64,
) -> Result<(String, String), StoreError> {
    let token = keys::random_token();
    let csrf = keys::random_token();
    conn.execute(
        "DELETE FROM sessions WHERE expires_ms < ?1",
        values![now_ms],
    )?;
    conn.execute(
        "INSERT INTO sessions (token_hash, user_id, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)",
        values![keys::hash(&token), user_id, &csrf, now_ms + SESSION_MS],
    )?;
    Ok((token, csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store() -> (Store, Dir) {
        let dir = std::env::temp_dir().join(format!("tally-users-{}", keys::random_token()));
        let store = crate::store::tests::test_store(&dir);
        store.create_org("acme", 0).expect("acme");
        store.create_org("globex", 0).expect("globex");
        (store, Dir(dir))
    }

    fn sso(sub: &str, email: &str, org: &str, role: Role) -> SsoUser {
        SsoUser {
            subject_hash: keys::hash(sub),
            email: email.into(),
            org: org.into(),
            role,
        }
    }

    #[test]
    fn oidc_local_users_have_roles() {
        let (store, _dir) = store();
        let pw = "correct horse battery";
        store
            .add_user("acme", "ann@acme.test", pw, Role::Admin, 1)
            .expect("ann");
        store
            .add_user("acme", "vic@acme.test", pw, Role::Viewer, 1)
            .expect("vic");
        let (_, s) = store
            .login("ann@acme.test", pw, 2)
            .expect("db")
            .expect("ann");
        assert_eq!(s.role, Role::Admin);
        assert!(s.require_admin().is_ok());
        let (token, s) = store
            .login("vic@acme.test", pw, 2)
            .expect("db")
            .expect("vic");
        assert_eq!(s.role, Role::Viewer);
        assert!(s.require_admin().is_err());
        let again = store.session(&token, 3).expect("db").expect("live");
        assert_eq!(again.role, Role::Viewer);
    }

    #[test]
    fn oidc_sso_users_provisioned_and_updated() {
        let (store, _dir) = store();
        // First sign-in: made just in time, with no password.
        let (token, s) = store
            .sso_sign_in(&sso("s1", "Sam@Acme.test", "acme", Role::Viewer), 1)
            .expect("db")
            .expect("signed in");
        assert_eq!(
            (s.org.name.as_str(), s.email.as_str(), s.role),
            ("acme", "sam@acme.test", Role::Viewer)
        );
        assert_eq!(
            store.session(&token, 2).expect("db").expect("live").role,
            Role::Viewer
        );
        for pw in ["", "x"] {
            assert!(store.login("sam@acme.test", pw, 2).expect("db").is_none());
        }
        // The provider now says admin: the role follows, and the older session sees it too.
        let (_, s) = store
            .sso_sign_in(&sso("s1", "sam@acme.test", "acme", Role::Admin), 3)
            .expect("db")
            .expect("signed in");
        assert_eq!(s.role, Role::Admin);
        assert_eq!(
            store.session(&token, 4).expect("db").expect("live").role,
            Role::Admin
        );
        // A new email for the same subject: the same user, renamed.
        store
            .sso_sign_in(&sso("s1", "samuel@acme.test", "acme", Role::Admin), 5)
            .expect("db")
            .expect("signed in");
        let n: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM users", &[], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    #[test]
    fn oidc_sso_links_or_refuses_existing_users() {
        let (store, _dir) = store();
        let pw = "correct horse battery";
        store
            .add_user("acme", "ann@acme.test", pw, Role::Admin, 1)
            .expect("ann");
        store
            .add_user("globex", "gus@acme.test", pw, Role::Admin, 1)
            .expect("gus");
        // A local user of the same org is linked to the identity.
        let (_, s) = store
            .sso_sign_in(&sso("a", "ann@acme.test", "acme", Role::Viewer), 2)
            .expect("db")
            .expect("linked");
        assert_eq!(s.org.name, "acme");
        // Another identity with the same email: refused.
        assert_eq!(
            store
                .sso_sign_in(&sso("b", "ann@acme.test", "acme", Role::Viewer), 3)
                .expect("db")
                .unwrap_err(),
            SsoRefusal::EmailTaken
        );
        // A local user of another org: refused, not moved.
        assert_eq!(
            store
                .sso_sign_in(&sso("g", "gus@acme.test", "acme", Role::Viewer), 3)
                .expect("db")
                .unwrap_err(),
            SsoRefusal::EmailTaken
        );
        assert_eq!(
            store
                .sso_sign_in(&sso("n", "new@acme.test", "initech", Role::Viewer), 3)
                .expect("db")
                .unwrap_err(),
            SsoRefusal::NoSuchOrg("initech".into())
        );
        store.set_disabled("globex", true).expect("disable");
        assert_eq!(
            store
                .sso_sign_in(&sso("n", "new@globex.test", "globex", Role::Viewer), 3)
                .expect("db")
                .unwrap_err(),
            SsoRefusal::OrgDisabled("globex".into())
        );
    }

    fn decoy_verifications() -> u64 {
        DECOY_VERIFICATIONS.with(|n| n.get())
    }

    /// An SSO user has no password (an empty hash): no password opens a session, and the
    /// refusal goes through the same argon2 verification, against the decoy, as an unknown
    /// email's, so that its timing does not tell SSO users apart.
    #[test]
    fn oidc_sso_users_cannot_sign_in_by_password_and_cost_a_decoy_verification() {
        let (store, _dir) = store();
        store
            .sso_sign_in(&sso("s1", "sam@acme.test", "acme", Role::Admin), 1)
            .expect("db")
            .expect("signed in");
        let stored: String = store
            .conn()
            .query_row(
                "SELECT password_hash FROM users WHERE email = 'sam@acme.test'",
                &[],
                |r| r.get(0),
            )
            .expect("sam");
        assert_eq!(stored, "", "an SSO user is provisioned without a password");
        for pw in [
            "",
            " ",
            "x",
            "correct horse battery",
            // The decoy's own password: the decoy never lets anyone in.
            "decoy password, never valid",
        ] {
            for email in ["sam@acme.test", "nobody@acme.test"] {
                let before = decoy_verifications();
                assert!(
                    store.login(email, pw, 2).expect("db").is_none(),
                    "{email} signed in with {pw:?}"
                );
                assert_eq!(
                    decoy_verifications(),
                    before + 1,
                    "{email}: one verification against the decoy"
                );
            }
        }
        // A password user is verified against their own hash, never the decoy.
        let pw = "correct horse battery";
        store
            .add_user("acme", "ann@acme.test", pw, Role::Admin, 1)
            .expect("ann");
        let before = decoy_verifications();
        assert!(store
            .login("ann@acme.test", "wrong password!", 2)
            .expect("db")
            .is_none());
        assert!(store.login("ann@acme.test", pw, 2).expect("db").is_some());
        assert_eq!(decoy_verifications(), before);
        // A password user later linked to an SSO identity keeps their password.
        store
            .sso_sign_in(&sso("a1", "ann@acme.test", "acme", Role::Admin), 3)
            .expect("db")
            .expect("linked");
        assert!(store.login("ann@acme.test", pw, 4).expect("db").is_some());
        // Whatever the stored text, only a real hash verifies.
        for stored in [Some(""), Some("not a hash"), None] {
            assert!(!verify_password(stored, ""));
            assert!(!verify_password(stored, "decoy password, never valid"));
        }
    }
}
