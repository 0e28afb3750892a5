//! Mesh ingest tokens (`tlm_...`): what a filter serving several orgs sends its batches with,
//! each event naming its org in `org_id`. Made, listed and revoked by the CLI; stored only as
//! SHA-256 hashes, like org keys (see `keys`). A token sends for the orgs granted to it, or for
//! every enabled org (`--all-orgs`); it is never accepted by the read API.

use crate::db::Backend;
use crate::keys;
use crate::store::{valid_name, Org, Store, StoreError};
use crate::values;

/// A token that is not revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub all_orgs: bool,
}

/// A token as `token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    /// The orgs it may send for; `None` for every org.
    pub orgs: Option<Vec<String>>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// Why a token may not send an event for an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSuchOrg,
    Disabled,
    NotGranted,
}

impl Store {
    /// Make a token for the named orgs (or, with `all_orgs`, every org) and return it: the only
    /// time it exists outside the caller. An unknown org fails the whole command.
    pub fn create_token(
        &self,
        name: &str,
        orgs: &[String],
        all_orgs: bool,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(format!(
                "token name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if all_orgs != orgs.is_empty() {
            return Err(StoreError::Invalid(
                "name the orgs the token may send for (--org ORG, repeated) or give --all-orgs"
                    .into(),
            ));
        }
        let token = keys::generate_token();
        let mut conn = self.conn();
        let mut tx = conn.begin()?;
        // No row back: the name is taken.
        let id: i64 = tx
            .query_row_opt(
                "INSERT INTO tokens (name, token_hash, all_orgs, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO NOTHING RETURNING id",
                values![name, keys::hash(&token), all_orgs, now_ms],
                |r| r.get(0),
            )?
            .ok_or_else(|| StoreError::TokenExists(name.into()))?;
        for org in orgs {
            let org_id = crate::store::org_id(&mut tx, org)?;
            tx.execute(
                "INSERT INTO token_orgs (token_id, org_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                values![id, org_id],
            )?;
        }
        tx.commit()?;
        Ok(token)
    }

    /// Revoke a token: refused from now on. Revoking it again changes nothing.
    pub fn revoke_token(&self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE tokens SET revoked_ms = coalesce(revoked_ms, ?1) WHERE name = ?2",
            values![now_ms, name],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchToken(name.into()));
        }
        Ok(())
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut conn = self.conn();
        // The granted orgs by name, comma-separated: SQLite's group_concat keeps the order of
        // the subquery it reads; PostgreSQL's string_agg is told it.
        let sql = match conn.backend() {
            Backend::Sqlite => {
                "SELECT t.name, t.all_orgs, t.created_ms, t.revoked_ms,
                    (SELECT group_concat(name, ',') FROM
                        (SELECT o.name FROM token_orgs g JOIN orgs o ON o.id = g.org_id
                         WHERE g.token_id = t.id ORDER BY o.name))
                 FROM tokens t ORDER BY t.name"
            }
            Backend::Postgres => {
                "SELECT t.name, t.all_orgs, t.created_ms, t.revoked_ms,
                    (SELECT string_agg(o.name, ',' ORDER BY o.name)
                     FROM token_orgs g JOIN orgs o ON o.id = g.org_id WHERE g.token_id = t.id)
                 FROM tokens t ORDER BY t.name"
            }
        };
        Ok(conn.query_map(sql, &[], |r| {
            let all: bool = r.get(1)?;
            let orgs: Option<String> = r.get(4)?;
            Ok(TokenInfo {
                name: r.get(0)?,
                orgs: (!all).then(|| {
                    orgs.map(|o| o.split(',').map(str::to_string).collect())
                        .unwrap_or_default()
                }),
                created_ms: r.get(2)?,
                revoked_ms: r.get(3)?,
            })
        })?)
    }

    /// The token a secret is, unless revoked: looked up by its SHA-256, then compared again in
    /// constant time, like org keys.
    pub fn token_for_secret(&self, secret: &str) -> Result<Option<Token>, StoreError> {
        let hash = keys::hash(secret);
        let found: Option<(i64, String, bool, String)> = self.reader().query_row_opt(
            "SELECT id, name, all_orgs, token_hash FROM tokens
             WHERE token_hash = ?1 AND revoked_ms IS NULL",
            values![&hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        Ok(found
            .filter(|(.., stored)| keys::constant_time_eq(stored.as_bytes(), hash.as_bytes()))
            .map(|(id, name, all_orgs, _)| Token { id, name, all_orgs }))
    }

    /// The org named `org` if `token` may send events for it.
    pub fn org_for_token(
        &self,
        token: &Token,
        org: &str,
    ) -> Result<Result<Org, Refusal>, StoreError> {
        let found: Option<(i64, bool, bool)> = self.reader().query_row_opt(
            // EXISTS is an integer on SQLite, a boolean on PostgreSQL: both read as a bool.
            "SELECT o.id, o.disabled,
                EXISTS (SELECT 1 FROM token_orgs WHERE token_id = ?2 AND org_id = o.id)
             FROM orgs o WHERE o.name = ?1",
            values![org, token.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(match found {
            None => Err(Refusal::NoSuchOrg),
            Some((_, true, _)) => Err(Refusal::Disabled),
            Some((_, false, granted)) if !granted && !token.all_orgs => Err(Refusal::NotGranted),
            Some((id, ..)) => Ok(Org {
                id,
                name: org.to_string(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (Store, crate::store::tests::TempDir) {
        let dir = crate::store::tests::temp_dir(&format!("tokens-{name}"));
        (crate::store::tests::test_store(&dir), dir)
    }

    #[test]
    fn tokens_send_for_their_orgs_only_until_revoked() {
        let (s, _dir) = store("grants");
        for org in ["acme", "globex", "initech"] {
            s.create_org(org, 0).unwrap();
        }
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = s
            .create_token("mesh", &names(&["globex", "acme", "acme"]), false, 7)
            .unwrap();
        assert!(tally::config::is_mesh_token(&t), "{t}");
        let all = s.create_token("fleet", &[], true, 8).unwrap();
        // Unknown orgs, bad names, a taken name, neither or both of --org and --all-orgs.
        for (name, orgs, all_orgs) in [
            ("x", names(&["acme", "nobody"]), false),
            ("bad name", names(&["acme"]), false),
            ("mesh", names(&["acme"]), false),
            ("y", vec![], false),
            ("z", names(&["acme"]), true),
        ] {
            assert!(s.create_token(name, &orgs, all_orgs, 0).is_err(), "{name}");
        }
        assert!(s.token_for_secret("tlm_nope").unwrap().is_none());
        let mesh = s.token_for_secret(&t).unwrap().unwrap();
        assert_eq!((mesh.name.as_str(), mesh.all_orgs), ("mesh", false));
        assert_eq!(
            s.org_for_token(&mesh, "acme").unwrap().unwrap().name,
            "acme"
        );
        assert_eq!(
            s.org_for_token(&mesh, "initech").unwrap(),
            Err(Refusal::NotGranted)
        );
        assert_eq!(
            s.org_for_token(&mesh, "nobody").unwrap(),
            Err(Refusal::NoSuchOrg)
        );
        let fleet = s.token_for_secret(&all).unwrap().unwrap();
        assert!(s.org_for_token(&fleet, "initech").unwrap().is_ok());
        s.set_disabled("initech", true).unwrap();
        assert_eq!(
            s.org_for_token(&fleet, "initech").unwrap(),
            Err(Refusal::Disabled)
        );
        s.revoke_token("mesh", 9).unwrap();
        s.revoke_token("mesh", 10).unwrap();
        assert!(s.token_for_secret(&t).unwrap().is_none());
        assert!(matches!(
            s.revoke_token("nobody", 0),
            Err(StoreError::NoSuchToken(_))
        ));
        let list = s.list_tokens().unwrap();
        assert_eq!(
            list,
            [
                TokenInfo {
                    name: "fleet".into(),
                    orgs: None,
                    created_ms: 8,
                    revoked_ms: None
                },
                TokenInfo {
                    name: "mesh".into(),
                    orgs: Some(names(&["acme", "globex"])),
                    created_ms: 7,
                    revoked_ms: Some(9)
                },
            ]
        );
    }
}
