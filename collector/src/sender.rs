//! Who sent an ingest batch, and whose events it holds. With an org key (`tly_`), every event
//! is that org's; an event may say so in `org_id`, never name another. With a mesh token
//! (`tlm_`), a filter serving several orgs, each event names its org in `org_id`, and that org
//! must be enabled and one the token may send for. One event that breaks this refuses the whole
//! batch (400, the field named): nothing of it is stored.

use crate::error::ApiError;
use crate::ingest::Batch;
use crate::keys::Credential;
use crate::store::{Org, Owners, Store, StoreError};
use crate::tokens::{Refusal, Token};

#[derive(Debug, Clone)]
pub enum Sender {
    Org(Org),
    Token(Token),
}

impl Sender {
    /// The sender of a credential, if it is a valid one. Looked up in the database on every
    /// batch (an index probe), so a rotation, a disabled org or a revoked token counts at once.
    pub fn find(store: &Store, credential: Credential<'_>) -> Result<Option<Sender>, StoreError> {
        Ok(match credential {
            Credential::OrgKey(k) => store.org_for_key(k)?.map(Sender::Org),
            Credential::Token(t) => store.token_for_secret(t)?.map(Sender::Token),
        })
    }

    /// For logs: `org acme` or `token mesh`.
    pub fn describe(&self) -> String {
        match self {
            Sender::Org(o) => format!("org {}", o.name),
            Sender::Token(t) => format!("token {}", t.name),
        }
    }

    /// Whose each event of `batch` is, or the 400 of the first event that may not be stored.
    pub fn owners(&self, store: &Store, batch: &Batch) -> Result<Owners, ApiError> {
        match self {
            Sender::Org(org) => {
                let other = batch
                    .iter()
                    .position(|(e, _)| e.org_id.as_ref().is_some_and(|n| *n != org.name));
                match other {
                    None => Ok(Owners::one(org.clone())),
                    Some(i) => Err(ApiError::field(
                        format!("[{i}].org_id"),
                        format!(
                            "this batch was sent with the key of org {:?}: an event's org_id \
                             must be null or that org; to send for several orgs, use a mesh \
                             token (tally-collector token create)",
                            org.name
                        ),
                    )),
                }
            }
            Sender::Token(token) => {
                // The few orgs a batch names, each looked up once.
                let mut known: Vec<Org> = Vec::new();
                let mut each = Vec::with_capacity(batch.len());
                for (i, (e, _)) in batch.iter().enumerate() {
                    let refuse = |why: String| ApiError::field(format!("[{i}].org_id"), why);
                    let Some(name) = e.org_id.as_deref() else {
                        return Err(refuse(format!(
                            "this batch was sent with the mesh token {:?}: each event must name \
                             its org in org_id",
                            token.name
                        )));
                    };
                    if let Some(org) = known.iter().find(|o| o.name == name) {
                        each.push(org.clone());
                        continue;
                    }
                    let org = store
                        .org_for_token(token, name)
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                        .map_err(|refusal| {
                            refuse(match refusal {
                                Refusal::NoSuchOrg => format!("no org named {name:?}"),
                                Refusal::Disabled => format!("org {name:?} is disabled"),
                                Refusal::NotGranted => format!(
                                    "the mesh token {:?} may not send for org {name:?}",
                                    token.name
                                ),
                            })
                        })?;
                    known.push(org.clone());
                    each.push(org);
                }
                Ok(Owners::each(each))
            }
        }
    }
}
