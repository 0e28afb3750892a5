//! The flow against a small fake provider on loopback (discovery, JWKS, token, userinfo), the
//! configuration checks and the identity mapping. The ID token's own checks are in `jwt`.

use super::jwt::tests::{rsa, rsa_jwks, sign_rs256, OTHER_RSA_PKCS8, RSA_PKCS8};
use super::*;
use axum::extract::{Form, State as AxState};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

const CLIENT: &str = "tally";
const SECRET: &str = "s3cret:with&odd=chars";

#[derive(Default)]
struct Op {
    issuer: String,
    /// The JWKS served now, and how many times it was read.
    jwks: String,
    jwks_reads: usize,
    /// What the next token answer holds: claims (nonce filled in from the sign-in), kid, key.
    claims: Value,
    kid: String,
    other_key: bool,
    /// The code handed out and the PKCE challenge and nonce it was issued for.
    code: String,
    challenge: String,
    nonce: String,
    redirect_uri: String,
    token_error: bool,
    userinfo: Value,
}

type Shared = Arc<Mutex<Op>>;

async fn discovery(AxState(op): AxState<Shared>) -> Json<Value> {
    let iss = op.lock().expect("op").issuer.clone();
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
}

async fn jwks(AxState(op): AxState<Shared>) -> String {
    let mut op = op.lock().expect("op");
    op.jwks_reads += 1;
    op.jwks.clone()
}

async fn token(
    AxState(op): AxState<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let op = op.lock().expect("op");
    let refuse = |e: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": e})),
        )
            .into_response()
    };
    if op.token_error {
        return refuse("invalid_grant");
    }
    // client_secret_basic: each part form-encoded first (RFC 6749 2.3.1).
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("tally:s3cret%3Awith%26odd%3Dchars")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return refuse("invalid_client");
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("authorization_code")
        || form.get("code") != Some(&op.code)
        || form.get("redirect_uri") != Some(&op.redirect_uri)
        || b64url(&sha2_digest(verifier.as_bytes())) != op.challenge
    {
        return refuse("invalid_grant");
    }
    let mut claims = op.claims.clone();
    if let Value::Object(m) = &mut claims {
        if !m.contains_key("nonce") {
            m.insert("nonce".into(), json!(op.nonce));
        }
    }
    let key = rsa(if op.other_key {
        OTHER_RSA_PKCS8
    } else {
        RSA_PKCS8
    });
    let id_token = sign_rs256(&key, &json!({"alg": "RS256", "kid": op.kid}), &claims);
    Json(json!({"id_token": id_token, "access_token": "at-1", "token_type": "Bearer"}))
        .into_response()
}

async fn userinfo(AxState(op): AxState<Shared>, headers: HeaderMap) -> Json<Value> {
    let op = op.lock().expect("op");
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer at-1")
    );
    Json(op.userinfo.clone())
}

fn now_s() -> i64 {
    crate::api::now_ms() / 1000
}

/// A fake provider on a free loopback port, and an Sso configured for it.
async fn setup() -> (Shared, Sso) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let key = rsa(RSA_PKCS8);
    let op: Shared = Arc::new(Mutex::new(Op {
        issuer: issuer.clone(),
        jwks: rsa_jwks(&key, "k1"),
        kid: "k1".into(),
        claims: json!({"iss": issuer, "aud": CLIENT, "sub": "u-1", "exp": now_s() + 300,
                       "iat": now_s(), "email": "Ann@Acme.test", "email_verified": true,
                       "groups": ["staff", "tally-admins"]}),
        ..Op::default()
    }));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(op.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = Config {
        issuer,
        client_id: CLIENT.into(),
        client_secret: Some(Secret(SECRET.into())),
        scopes: "openid email".into(),
        redirect_url: Some("http://127.0.0.1:9700/auth/callback".into()),
        org_domains: vec![("acme.test".into(), "acme".into())],
        org_claim: None,
        admin_emails: vec![],
        admin_claim: Some(("groups".into(), "tally-admins".into())),
        ca_file: None,
    };
    (op, Sso::new(config).expect("sso"))
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).expect("query");
    pairs
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Starts a sign-in as a browser would and has the provider issue a code for it: the
/// callback and the binding cookie's value.
async fn begin(op: &Shared, sso: &Sso) -> (Callback, String) {
    let started = sso.start().await.expect("start");
    let loc = &started.location;
    assert!(loc.starts_with(&format!("{}/authorize?", op.lock().expect("op").issuer)));
    assert_eq!(query_param(loc, "response_type"), "code");
    assert_eq!(query_param(loc, "client_id"), CLIENT);
    assert_eq!(query_param(loc, "code_challenge_method"), "S256");
    assert_eq!(query_param(loc, "scope"), "openid email");
    let state = query_param(loc, "state");
    let mut o = op.lock().expect("op");
    o.code = format!("code-{state}");
    o.challenge = query_param(loc, "code_challenge");
    o.nonce = query_param(loc, "nonce");
    o.redirect_uri = query_param(loc, "redirect_uri");
    (
        Callback {
            code: Some(o.code.clone()),
            state: Some(state),
            error: None,
        },
        started.binding,
    )
}

#[tokio::test]
async fn oidc_flow_signs_in_and_maps_org_and_role() {
    let (op, sso) = setup().await;
    let (cb, binding) = begin(&op, &sso).await;
    let user = sso.finish(&cb, Some(&binding)).await.expect("signed in");
    assert_eq!(user.email, "ann@acme.test");
    assert_eq!(user.org, "acme");
    assert_eq!(user.role, Role::Admin);
    assert_eq!(user.subject_hash.len(), 64);
    assert_eq!(sso.pending_count(), 0);
    // The same callback again (a replay): its record is gone.
    let again = sso.finish(&cb, Some(&binding)).await.unwrap_err();
    assert_eq!(again.0, SsoError::UnknownState);
    // Without the admin group: a viewer.
    op.lock().expect("op").claims["groups"] = json!(["staff"]);
    let (cb, binding) = begin(&op, &sso).await;
    let user = sso.finish(&cb, Some(&binding)).await.expect("signed in");
    assert_eq!(user.role, Role::Viewer);
}

#[tokio::test]
async fn oidc_flow_refuses_foreign_browser_and_denials() {
    let (op, sso) = setup().await;
    let (cb, _) = begin(&op, &sso).await;
    // Another browser (no cookie, or another one) cannot finish this sign-in.
    assert_eq!(
        sso.finish(&cb, None).await.unwrap_err().0,
        SsoError::UnknownState
    );
    let (cb, _) = begin(&op, &sso).await;
    assert_eq!(
        sso.finish(&cb, Some("not-the-binding"))
            .await
            .unwrap_err()
            .0,
        SsoError::UnknownState
    );
    // Consent refused at the provider.
    let (cb, binding) = begin(&op, &sso).await;
    let denied = Callback {
        code: None,
        error: Some("access_denied".into()),
        ..cb
    };
    assert_eq!(
        sso.finish(&denied, Some(&binding)).await.unwrap_err().0,
        SsoError::Denied("access_denied".into())
    );
    // The code refused by the token endpoint.
    op.lock().expect("op").token_error = true;
    let (cb, binding) = begin(&op, &sso).await;
    assert!(matches!(
        sso.finish(&cb, Some(&binding)).await.unwrap_err().0,
        SsoError::Exchange(e) if e.contains("invalid_grant")
    ));
    // A state never issued.
    let forged = Callback {
        code: Some("x".into()),
        state: Some("made-up".into()),
        error: None,
    };
    assert_eq!(
        sso.finish(&forged, Some("b")).await.unwrap_err().0,
        SsoError::UnknownState
    );
}

#[tokio::test]
async fn oidc_flow_refuses_bad_tokens() {
    let (op, sso) = setup().await;
    type Change = Box<dyn Fn(&mut Op)>;
    let cases: Vec<(Change, jwt::TokenError)> = vec![
        (
            Box::new(|o: &mut Op| o.other_key = true),
            jwt::TokenError::Signature,
        ),
        (
            Box::new(|o: &mut Op| o.claims["aud"] = json!("someone-else")),
            jwt::TokenError::Audience,
        ),
        (
            Box::new(|o: &mut Op| {
                o.claims["exp"] = json!(now_s() - 3600);
                o.claims["iat"] = json!(now_s() - 3700);
            }),
            jwt::TokenError::Expired,
        ),
        (
            Box::new(|o: &mut Op| o.claims["nonce"] = json!("replayed")),
            jwt::TokenError::Nonce,
        ),
        (
            Box::new(|o: &mut Op| o.claims["iss"] = json!("https://evil.test")),
            jwt::TokenError::Issuer,
        ),
    ];
    let good = op.lock().expect("op").claims.clone();
    for (change, want) in cases {
        {
            let mut o = op.lock().expect("op");
            o.claims = good.clone();
            o.other_key = false;
            change(&mut o);
        }
        let (cb, binding) = begin(&op, &sso).await;
        assert_eq!(
            sso.finish(&cb, Some(&binding)).await.unwrap_err().0,
            SsoError::Token(want)
        );
    }
}

#[tokio::test]
async fn oidc_unknown_kid_refreshes_jwks_rate_limited() {
    let (op, sso) = setup().await;
    let (cb, binding) = begin(&op, &sso).await;
    sso.finish(&cb, Some(&binding)).await.expect("signed in");
    assert_eq!(op.lock().expect("op").jwks_reads, 1);
    // The provider rotates to a new key: tokens name k2, which the cached set lacks. The last
    // read is too recent to read again, so the token is refused as signed by an unknown key.
    {
        let mut o = op.lock().expect("op");
        o.jwks = rsa_jwks(&rsa(OTHER_RSA_PKCS8), "k2");
        o.kid = "k2".into();
        o.other_key = true;
    }
    let (cb, binding) = begin(&op, &sso).await;
    assert_eq!(
        sso.finish(&cb, Some(&binding)).await.unwrap_err().0,
        SsoError::Token(jwt::TokenError::UnknownKey)
    );
    assert_eq!(op.lock().expect("op").jwks_reads, 1);
    // Once the last read is older than the minimum interval, an unknown kid reads the set again.
    sso.keys.lock().await.read_at = Instant::now().checked_sub(JWKS_MIN_REFRESH);
    let (cb, binding) = begin(&op, &sso).await;
    let user = sso.finish(&cb, Some(&binding)).await.expect("signed in");
    assert_eq!(user.org, "acme");
    assert_eq!(op.lock().expect("op").jwks_reads, 2);
}

#[tokio::test]
async fn oidc_claims_from_userinfo_when_the_token_lacks_them() {
    let (op, sso) = setup().await;
    {
        let mut o = op.lock().expect("op");
        for c in ["email", "email_verified", "groups"] {
            o.claims.as_object_mut().expect("claims").remove(c);
        }
        o.userinfo = json!({"sub": "u-1", "email": "bob@acme.test", "email_verified": true,
                            "groups": "tally-admins"});
    }
    let (cb, binding) = begin(&op, &sso).await;
    let user = sso.finish(&cb, Some(&binding)).await.expect("signed in");
    assert_eq!(
        (user.email.as_str(), user.org.as_str(), user.role),
        ("bob@acme.test", "acme", Role::Admin)
    );
    // Userinfo about someone else is not believed.
    op.lock().expect("op").userinfo["sub"] = json!("u-2");
    let (cb, binding) = begin(&op, &sso).await;
    assert!(matches!(
        sso.finish(&cb, Some(&binding)).await.unwrap_err().0,
        SsoError::Unavailable(_)
    ));
}

#[tokio::test]
async fn oidc_discovery_must_name_the_configured_issuer() {
    let (op, sso) = setup().await;
    op.lock().expect("op").issuer = "http://127.0.0.1:1/elsewhere".into();
    assert!(matches!(
        sso.start().await,
        Err(SsoError::Unavailable(e)) if e.contains("calls itself")
    ));
}

fn args() -> Args {
    Args {
        oidc_issuer: Some("https://id.example.com".into()),
        oidc_client_id: Some("tally".into()),
        oidc_scopes: "openid email profile".into(),
        oidc_org_domains: vec!["acme.test=acme".into()],
        ..Args::default()
    }
}

#[test]
fn oidc_config_checks() {
    assert!(Config::from_args(&Args::default(), None)
        .expect("none")
        .is_none());
    let c = Config::from_args(&args(), Some("from-env".into()))
        .expect("ok")
        .expect("configured");
    assert_eq!(c.org_domains, vec![("acme.test".into(), "acme".into())]);
    assert!(format!("{c:?}").contains("Secret(..)"));
    assert!(!format!("{c:?}").contains("from-env"));
    let bad: Vec<(Args, &str)> = vec![
        (
            Args {
                oidc_issuer: None,
                ..args()
            },
            "need --oidc-issuer",
        ),
        (
            Args {
                oidc_issuer: None,
                oidc_client_id: None,
                oidc_org_domains: vec![],
                no_local_login: true,
                ..args()
            },
            "no way to sign in",
        ),
        (
            Args {
                oidc_issuer: Some("http://id.example.com".into()),
                ..args()
            },
            "loopback",
        ),
        (
            Args {
                oidc_client_id: None,
                ..args()
            },
            "--oidc-client-id",
        ),
        (
            Args {
                oidc_scopes: "email profile".into(),
                ..args()
            },
            "must include openid",
        ),
        (
            Args {
                oidc_org_domains: vec![],
                ..args()
            },
            "map users to orgs",
        ),
        (
            Args {
                oidc_org_domains: vec!["acme.test".into()],
                ..args()
            },
            "NAME=VALUE",
        ),
        (
            Args {
                oidc_redirect_url: Some("https://tally.example.com/callback".into()),
                ..args()
            },
            "must end with /auth/callback",
        ),
        (
            Args {
                oidc_admin_claim: Some("groups".into()),
                ..args()
            },
            "NAME=VALUE",
        ),
        (
            Args {
                oidc_client_secret_file: Some("/nonexistent/secret".into()),
                ..args()
            },
            "/nonexistent/secret",
        ),
        // A claim alone would let its value name any org: it needs explicit mappings.
        (
            Args {
                oidc_org_claim: Some("tenant".into()),
                ..args()
            },
            "needs --oidc-org-claim-value VALUE=ORG",
        ),
        (
            Args {
                oidc_org_claim_values: vec!["t-1=acme".into()],
                ..args()
            },
            "--oidc-org-claim-value needs --oidc-org-claim",
        ),
        (
            Args {
                oidc_org_claim: Some("tenant".into()),
                oidc_org_claim_values: vec!["t-1".into()],
                ..args()
            },
            "expected VALUE=ORG",
        ),
        (
            Args {
                oidc_org_claim: Some("tenant".into()),
                oidc_org_claim_values: vec!["t-1=acme".into(), "t-1=globex".into()],
                ..args()
            },
            "mapped twice",
        ),
        (
            Args {
                oidc_issuer: None,
                oidc_client_id: None,
                oidc_org_domains: vec![],
                oidc_org_claim_values: vec!["t-1=acme".into()],
                ..args()
            },
            "need --oidc-issuer",
        ),
    ];
    for (a, want) in bad {
        let err = Config::from_args(&a, None).expect_err(want);
        assert!(err.contains(want), "{err:?} should say {want:?}");
    }
    let err = Config::from_args(
        &Args {
            oidc_client_secret_file: Some("/etc/hostname".into()),
            ..args()
        },
        Some("x".into()),
    )
    .expect_err("twice");
    assert!(err.contains("twice"));
    // The org is after the last '=': a value may hold some (an LDAP group's DN).
    let c = Config::from_args(
        &Args {
            oidc_org_domains: vec![],
            oidc_org_claim: Some(" groups ".into()),
            oidc_org_claim_values: vec!["cn=eng,ou=groups=acme".into(), " t-2 = globex ".into()],
            ..args()
        },
        None,
    )
    .expect("ok")
    .expect("configured");
    assert_eq!(
        c.org_claim,
        Some((
            "groups".into(),
            vec![
                ("cn=eng,ou=groups".into(), "acme".into()),
                ("t-2".into(), "globex".into())
            ]
        ))
    );
}

/// With an org claim, its values `t-acme` and `t-globex` map to acme and globex.
fn config(org_claim: Option<&str>) -> Config {
    let mut c = Config::from_args(
        &Args {
            oidc_org_claim: org_claim.map(str::to_string),
            oidc_org_claim_values: if org_claim.is_some() {
                vec!["t-acme=acme".into(), "t-globex=globex".into()]
            } else {
                vec![]
            },
            oidc_admin_emails: vec!["boss@acme.test".into()],
            oidc_admin_claim: Some("realm_access.roles=tally-admin".into()),
            ..args()
        },
        None,
    )
    .expect("ok")
    .expect("configured");
    c.org_domains.push(("globex.test".into(), "globex".into()));
    c
}

fn claims(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

#[test]
fn oidc_identity_mapping() {
    let c = config(None);
    let ok = |v: Value| map_identity(&c, &claims(v));
    assert_eq!(
        ok(json!({"email": "ann@acme.test", "email_verified": true})),
        Ok(("ann@acme.test".into(), "acme".into(), Role::Viewer))
    );
    assert_eq!(
        ok(json!({"email": "boss@acme.test", "email_verified": "true"})),
        Ok(("boss@acme.test".into(), "acme".into(), Role::Admin))
    );
    assert_eq!(
        ok(json!({"email": "x@globex.test", "email_verified": true,
                  "realm_access": {"roles": ["tally-admin"]}})),
        Ok(("x@globex.test".into(), "globex".into(), Role::Admin))
    );
    // Unverified, or unsaid: refused, whatever the domain.
    assert_eq!(
        ok(json!({"email": "ann@acme.test", "email_verified": false})),
        Err(SsoError::EmailUnverified)
    );
    assert_eq!(
        ok(json!({"email": "ann@acme.test"})),
        Err(SsoError::EmailUnverified)
    );
    assert_eq!(ok(json!({"email_verified": true})), Err(SsoError::NoEmail));
    // A subdomain is another domain.
    assert_eq!(
        ok(json!({"email": "ann@evil.acme.test", "email_verified": true})),
        Err(SsoError::NoOrg)
    );
    // A mapped value of the org claim wins over the domain, and needs a verified email too.
    let c = config(Some("tally_org"));
    let ok = |v: Value| map_identity(&c, &claims(v));
    assert_eq!(
        ok(json!({"email": "ann@acme.test", "email_verified": true, "tally_org": "t-globex"})),
        Ok(("ann@acme.test".into(), "globex".into(), Role::Viewer))
    );
    assert_eq!(
        ok(json!({"email": "ann@gmail.test", "email_verified": true, "tally_org": " t-acme "})),
        Ok(("ann@gmail.test".into(), "acme".into(), Role::Viewer))
    );
    assert_eq!(
        ok(json!({"email": "ann@gmail.test", "email_verified": false, "tally_org": "t-acme"})),
        Err(SsoError::EmailUnverified)
    );
    // A value that names an org but is not mapped (users may edit some claims at their
    // provider) is refused as an unmapped identity, even where the domain maps: never taken as
    // the org's name, never passed over for the domain.
    for value in [
        json!("globex"),
        json!("acme"),
        json!("T-ACME"),
        json!(7),
        json!(true),
        json!({"org": "t-acme"}),
        json!(["staff", "globex"]),
    ] {
        let got = ok(json!({"email": "ann@acme.test", "email_verified": true, "tally_org": value}));
        assert!(
            matches!(&got, Err(SsoError::UnmappedClaim(c, _)) if c == "tally_org"),
            "{value}: {got:?}"
        );
        let e = got.unwrap_err();
        assert!(e.to_string().contains("unmapped identity"), "{e}");
        assert!(e
            .log_reason()
            .starts_with("unmapped identity: claim tally_org is "));
    }
    // The log shows the value escaped and shortened.
    let long = format!("x\n{}", "y".repeat(500));
    match ok(json!({"email": "ann@acme.test", "email_verified": true, "tally_org": long})) {
        Err(SsoError::UnmappedClaim(_, shown)) => {
            assert!(shown.len() <= 64 && !shown.contains('\n'), "{shown}");
        }
        other => panic!("{other:?}"),
    }
    // Absent or empty: the domain decides.
    for value in [json!(null), json!(""), json!([])] {
        assert_eq!(
            ok(json!({"email": "ann@acme.test", "email_verified": true, "tally_org": value})),
            Ok(("ann@acme.test".into(), "acme".into(), Role::Viewer))
        );
    }
    assert_eq!(
        ok(json!({"email": "ann@gmail.test", "email_verified": true})),
        Err(SsoError::NoOrg)
    );
    // A list (groups) maps through its mapped members, which must name one org.
    assert_eq!(
        ok(json!({"email": "ann@gmail.test", "email_verified": true,
                  "tally_org": ["staff", "t-globex", "t-globex"]})),
        Ok(("ann@gmail.test".into(), "globex".into(), Role::Viewer))
    );
    assert_eq!(
        ok(json!({"email": "ann@gmail.test", "email_verified": true,
                  "tally_org": ["t-acme", "t-globex"]})),
        Err(SsoError::SeveralOrgs("tally_org".into()))
    );
}

#[tokio::test]
async fn oidc_pending_sign_ins_are_bounded() {
    let (_op, sso) = setup().await;
    {
        let mut pending = sso.pending.lock().expect("pending");
        for i in 0..MAX_PENDING {
            pending.insert(
                format!("s{i}"),
                Pending {
                    binding_hash: String::new(),
                    nonce: String::new(),
                    verifier: String::new(),
                    // s0 is the oldest.
                    expires: Instant::now() + PENDING_TTL + Duration::from_millis(i as u64),
                },
            );
        }
    }
    // A flood does not shut sign-in off: the oldest record makes room.
    sso.start().await.expect("start");
    assert_eq!(sso.pending_count(), MAX_PENDING);
    assert!(!sso.pending.lock().expect("pending").contains_key("s0"));
}

#[test]
fn oidc_identity_needs_a_real_address() {
    let c = config(Some("tally_org"));
    for email in ["x@localhost", "not-an-email", "two words@acme.test"] {
        assert_eq!(
            map_identity(
                &c,
                &claims(json!({"email": email, "email_verified": true, "tally_org": "t-acme"}))
            ),
            Err(SsoError::NoEmail),
            "{email}"
        );
    }
}
