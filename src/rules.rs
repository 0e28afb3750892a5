//! Rules and budgets at the proxy: what acts on a request (PRODUCT.md, "Rules and budgets").
//!
//! Rules come from the filter's configuration and budgets from the collector's
//! `GET /v1/controls`; both match a request on what is known of it. Most of that is known at
//! the request headers (attribution, mesh identity, provider, a model named in the path); a
//! model named in the body is known only once the body scanner has read it, so a rule or budget
//! that matches on it makes the decision wait (see `exchange`, "the hold"). [`decide`] is called
//! at the headers and again when the model is known (or known never to come): it either decides
//! or says how much of the body to hold meanwhile.
//!
//! Precedence, when several act: a rule's `block`, then a budget's `block`, then a rule's
//! `rewrite_model`, then a budget's `downgrade`; a rule's `route` applies beside a model change;
//! a budget in `shadow` marks only a request that nothing else changed.

use serde::Deserialize;
use std::collections::BTreeMap;

/// What a rule or a budget scope may match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Team,
    App,
    Feature,
    Task,
    User,
    Namespace,
    Workload,
    Principal,
    Provider,
    Model,
}

impl On {
    pub const NAMES: &'static str =
        "team, app, feature, task, user, namespace, workload, principal, provider or model";

    pub fn from_name(name: &str) -> Option<On> {
        Some(match name {
            "team" => On::Team,
            "app" => On::App,
            "feature" => On::Feature,
            "task" => On::Task,
            "user" => On::User,
            "namespace" => On::Namespace,
            "workload" => On::Workload,
            "principal" => On::Principal,
            "provider" => On::Provider,
            "model" => On::Model,
            _ => return None,
        })
    }
}

/// `*` matches any run of bytes (none included); everything else matches itself. Linear in
/// practice: one backtrack point, the last star.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&b| b == b'*')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub on: On,
    pub pattern: String,
}

/// The conditions of a rule or a budget's scope: every one must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matchers(pub Vec<Matcher>);

/// A match, as far as it can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Yes,
    No,
    /// Everything else holds; the model is not known yet.
    NeedsModel,
}

impl Matchers {
    /// From a JSON object of field -> pattern; `what` names it in errors.
    pub fn parse(fields: &BTreeMap<String, String>, what: &str) -> Result<Matchers, String> {
        let mut out = Vec::with_capacity(fields.len());
        for (name, pattern) in fields {
            let on = On::from_name(name).ok_or_else(|| {
                format!("{what}: cannot match on {name:?} (expected {})", On::NAMES)
            })?;
            if pattern.is_empty() || pattern.len() > 256 {
                return Err(format!(
                    "{what}: the pattern for {name} must be 1 to 256 bytes"
                ));
            }
            out.push(Matcher {
                on,
                pattern: pattern.clone(),
            });
        }
        Ok(Matchers(out))
    }

    /// Whether every condition holds (a model not known does not match).
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.fit(facts) == Fit::Yes
    }

    pub fn on_model(&self) -> bool {
        self.0.iter().any(|m| m.on == On::Model)
    }

    fn fit(&self, facts: &Facts<'_>) -> Fit {
        let mut needs_model = false;
        for m in &self.0 {
            if m.on == On::Model && facts.model == Model::Later {
                needs_model = true;
                continue;
            }
            match facts.get(m.on) {
                Some(v) if glob(&m.pattern, v) => {}
                _ => return Fit::No,
            }
        }
        if needs_model {
            Fit::NeedsModel
        } else {
            Fit::Yes
        }
    }
}

/// What is known of the model when a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model<'a> {
    Known(&'a str),
    /// The body may still name it.
    Later,
    /// The body ended without one.
    Never,
    /// It did not come within the hold's byte cap.
    PastCap,
}

/// What a request is matched on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub team: Option<&'a str>,
    pub app: Option<&'a str>,
    pub feature: Option<&'a str>,
    pub task: Option<&'a str>,
    pub user: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub workload: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub provider: &'a str,
    pub model: Model<'a>,
}

impl<'a> Facts<'a> {
    fn get(&self, on: On) -> Option<&'a str> {
        match on {
            On::Team => self.team,
            On::App => self.app,
            On::Feature => self.feature,
            On::Task => self.task,
            On::User => self.user,
            On::Namespace => self.namespace,
            On::Workload => self.workload,
            On::Principal => self.principal,
            On::Provider => Some(self.provider),
            On::Model => match self.model {
                Model::Known(m) => Some(m),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    RewriteModel(String),
    Block,
    Route(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `rule:<name>`, as events name it.
    pub label: String,
    pub matchers: Matchers,
    pub action: RuleAction,
    /// The model came later than the hold's cap: refuse rather than pass.
    pub refuse_over_cap: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    matches: BTreeMap<String, String>,
    rewrite_model: Option<String>,
    block: Option<bool>,
    route: Option<String>,
    over_cap: Option<String>,
}

/// Largest `model_hold_bytes`: the hold lives in the filter's memory, one per request waiting.
pub const MAX_HOLD_BYTES: usize = 16 << 20;
pub const DEFAULT_HOLD_BYTES: usize = 256 << 10;

/// A model name as a rule may send it.
pub fn valid_model(m: &str) -> bool {
    !m.is_empty() && m.len() <= 256 && !m.chars().any(|c| c.is_control())
}

/// A route value: it goes in a header (`x-tally-route`), so it must be a plain token.
fn valid_route(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 128
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
}

/// The configuration's `rules`, checked: each bad rule fails the load with its name and why.
pub fn parse_rules(raw: Vec<RawRule>) -> Result<Vec<Rule>, String> {
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let name = r.name.trim().to_string();
        let what = format!("rules[{i}] ({name:?})");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "{what}: a rule's name is 1 to 64 of a-z A-Z 0-9 - _ ."
            ));
        }
        if rules.iter().any(|x| x.label[5..] == name) {
            return Err(format!("{what}: two rules are named {name:?}"));
        }
        let matchers = Matchers::parse(&r.matches, &format!("{what} match"))?;
        let action = match (r.rewrite_model, r.block, r.route) {
            (Some(m), None, None) => {
                if !valid_model(&m) {
                    return Err(format!("{what}: rewrite_model {m:?} is not a model name"));
                }
                RuleAction::RewriteModel(m)
            }
            (None, Some(true), None) => RuleAction::Block,
            (None, Some(false), None) => {
                return Err(format!(
                    "{what}: block must be true (or leave the rule out)"
                ))
            }
            (None, None, Some(route)) => {
                if !valid_route(&route) {
                    return Err(format!(
                        "{what}: route {route:?} must be 1 to 128 of a-z A-Z 0-9 - _ . : /"
                    ));
                }
                RuleAction::Route(route)
            }
            (None, None, None) => {
                return Err(format!("{what}: no action (rewrite_model, block or route)"))
            }
            _ => {
                return Err(format!(
                    "{what}: exactly one action of rewrite_model, block and route"
                ))
            }
        };
        let refuse_over_cap = match r.over_cap.as_deref() {
            None | Some("pass") => false,
            Some("refuse") => true,
            Some(other) => {
                return Err(format!(
                    "{what}: over_cap must be \"pass\" or \"refuse\", got {other:?}"
                ))
            }
        };
        if let RuleAction::Route(_) = action {
            // The upstream is chosen at the request headers, before the body is read.
            if matchers.on_model() {
                return Err(format!(
                    "{what}: a route rule cannot match on the model: the upstream is chosen at \
                     the request headers, before the body names the model"
                ));
            }
            if let Some(before) = rules.iter().find(|x| x.matchers.on_model()) {
                return Err(format!(
                    "{what}: a route rule cannot come after {:?}, which matches on the model: \
                     the upstream is chosen at the request headers, before the body names the \
                     model (put route rules first)",
                    &before.label[5..]
                ));
            }
        }
        rules.push(Rule {
            label: format!("rule:{name}"),
            matchers,
            action,
            refuse_over_cap,
        });
    }
    Ok(rules)
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetAction {
    Alert,
    Block,
    Downgrade(String),
    Shadow,
}

impl BudgetAction {
    pub fn parse(s: &str) -> Option<BudgetAction> {
        Some(match s {
            "alert" => BudgetAction::Alert,
            "block" => BudgetAction::Block,
            "shadow" => BudgetAction::Shadow,
            _ => BudgetAction::Downgrade(
                s.strip_prefix("downgrade:")
                    .filter(|m| valid_model(m))?
                    .to_string(),
            ),
        })
    }
}

/// One budget as a filter enforces it (from `/v1/controls`).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// `budget:<name>`.
    pub label: String,
    pub org: String,
    pub matchers: Matchers,
    pub action: BudgetAction,
    /// The collector counts the limit reached.
    pub exceeded: bool,
    /// When the period ends (Unix ms): a block's `retry-after`; past it, the state no longer
    /// applies.
    pub period_end_ms: u64,
    /// What this filter may spend beyond what the collector has counted of it, before it acts
    /// as if the limit were reached (see `budgets` in the collector: the lease).
    pub share_usd: f64,
    /// This filter's requests the collector has counted this period.
    pub confirmed_requests: u64,
    /// What a request is reserved at until its cost is known.
    pub estimate_usd: f64,
    /// The period, so that a new one starts a new local count: `<name>@<period start ms>`.
    pub ledger_key: String,
}

/// Which budgets act now: the collector's word, or this filter's own count of its share.
pub trait Ledger {
    /// Whether budget `i` is to act on a request (its limit reached, here or at the collector).
    fn acting(&mut self, i: usize, b: &Budget) -> bool;
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule's `block`: 403.
    Rule(String),
    /// A budget's `block`: 429 until the period ends (Unix ms).
    Budget { label: String, period_end_ms: u64 },
    /// A model rule's `over_cap: refuse`: the model came past the hold's cap.
    OverCap(String),
}

/// What acts on a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub refuse: Option<Refusal>,
    /// The model to send instead of the one asked for.
    pub rewrite: Option<String>,
    /// `x-tally-route`.
    pub route: Option<String>,
    /// The event's `rule`.
    pub label: Option<String>,
    pub shadow: bool,
    /// Budgets (indexes) whose scope matched and which count this request's cost against
    /// this filter's share.
    pub charged: Vec<usize>,
    /// A model rule was passed over because the model came past the cap.
    pub passed_over_cap: bool,
}

/// A decision, or how to wait for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Decided(Verdict),
    /// Wait for the model. `hold_all`: a refusal may follow, so no byte of the body goes
    /// upstream before the decision; otherwise only the model's value is held. `route`: a rule
    /// already chose the upstream (route rules never wait), to set at the headers.
    Wait {
        hold_all: bool,
        route: Option<String>,
    },
}

/// Decide what acts on a request, as far as `facts` allow.
pub fn decide(
    rules: &[Rule],
    budgets: &[Budget],
    ledger: &mut dyn Ledger,
    facts: &Facts<'_>,
) -> Step {
    let past_cap = facts.model == Model::PastCap;
    let mut waiting = false;
    let mut hold_all = false;
    let mut passed_over_cap = false;
    let mut over_cap_refusal = None;
    let mut chosen: Option<&Rule> = None;
    for r in rules {
        match r.matchers.fit(facts) {
            Fit::No => {
                if past_cap && r.matchers.on_model() && matches_but_model(&r.matchers, facts) {
                    passed_over_cap = true;
                    // The first such rule with `over_cap: refuse` refuses, unless one before it
                    // matched (the loop stops there).
                    if r.refuse_over_cap && over_cap_refusal.is_none() {
                        over_cap_refusal = Some(r.label.clone());
                    }
                }
            }
            Fit::Yes => {
                if waiting && r.action == RuleAction::Block {
                    hold_all = true;
                }
                chosen = Some(r);
                break;
            }
            Fit::NeedsModel => {
                waiting = true;
                if r.action == RuleAction::Block || r.refuse_over_cap {
                    hold_all = true;
                }
            }
        }
    }
    if let Some(label) = over_cap_refusal {
        // An earlier over-cap `refuse` rule outranks any later rule.
        return Step::Decided(Verdict {
            refuse: Some(Refusal::OverCap(label)),
            label: None,
            passed_over_cap: true,
            ..Verdict::default()
        });
    }
    let route = match chosen.map(|r| &r.action) {
        Some(RuleAction::Route(route)) => Some(route.clone()),
        _ => None,
    };
    // Budgets: every one whose scope matches is charged; the first acting one of each kind acts.
    let mut charged = Vec::new();
    let (mut block, mut downgrade, mut shadow) = (None, None, None);
    for (i, b) in budgets.iter().enumerate() {
        if b.action == BudgetAction::Alert {
            continue;
        }
        match b.matchers.fit(facts) {
            Fit::No => {
                // A budget on the model, whose model came past the cap: passed over, and said so.
                if past_cap && b.matchers.on_model() && matches_but_model(&b.matchers, facts) {
                    passed_over_cap = true;
                }
            }
            Fit::NeedsModel => {
                waiting = true;
                if b.action == BudgetAction::Block {
                    hold_all = true;
                }
            }
            Fit::Yes => {
                charged.push(i);
                if !ledger.acting(i, b) {
                    continue;
                }
                match &b.action {
                    BudgetAction::Block if block.is_none() => block = Some(b),
                    BudgetAction::Downgrade(_) if downgrade.is_none() => downgrade = Some(b),
                    BudgetAction::Shadow if shadow.is_none() => shadow = Some(b),
                    _ => {}
                }
            }
        }
    }
    if waiting {
        // A block that already acts may stand once the model is known: nothing goes upstream
        // before then.
        return Step::Wait {
            hold_all: hold_all || block.is_some(),
            route,
        };
    }
    let mut v = Verdict {
        route,
        charged,
        passed_over_cap,
        ..Verdict::default()
    };
    if let Some(r) = chosen {
        v.label = Some(r.label.clone());
        match &r.action {
            RuleAction::Block => {
                v.refuse = Some(Refusal::Rule(r.label.clone()));
                return Step::Decided(v);
            }
            RuleAction::RewriteModel(m) => v.rewrite = Some(m.clone()),
            RuleAction::Route(_) => {}
        }
    }
    if let Some(b) = block {
        v.label = Some(b.label.clone());
        v.refuse = Some(Refusal::Budget {
            label: b.label.clone(),
            period_end_ms: b.period_end_ms,
        });
        v.rewrite = None;
        return Step::Decided(v);
    }
    if v.rewrite.is_none() {
        if let Some(BudgetAction::Downgrade(m)) = downgrade.map(|b| &b.action) {
            v.rewrite = Some(m.clone());
            v.label = downgrade.map(|b| b.label.clone());
        }
    }
    if v.label.is_none() {
        if let Some(b) = shadow {
            v.label = Some(b.label.clone());
            v.shadow = true;
        }
    }
    Step::Decided(v)
}

/// The status a refusal answers with: 403 for a rule, 429 for a budget.
pub fn refusal_status(why: &Refusal) -> u16 {
    match why {
        Refusal::Budget { .. } => 429,
        Refusal::Rule(_) | Refusal::OverCap(_) => 403,
    }
}

/// A refusal in the provider's own error format, so that the official SDKs raise their usual
/// errors (`PermissionDeniedError`, `RateLimitError`): (status, headers, body). A budget's 429
/// says when to come back (`retry-after`, the period's end) and that retrying sooner is
/// pointless (`x-should-retry: false`, which the OpenAI and Anthropic SDKs obey).
pub fn refusal_response(
    api: crate::provider::Api,
    why: &Refusal,
    now_ms: u64,
) -> (u16, Vec<(&'static str, String)>, String) {
    use crate::provider::Api;
    let status = refusal_status(why);
    let message = match why {
        Refusal::Rule(label) => format!("The proxy refused this request: {label} blocks it."),
        Refusal::OverCap(label) => format!(
            "The proxy refused this request: {label} needs the model, and the body named it \
             too late (send \"model\" earlier in the body)."
        ),
        Refusal::Budget { label, .. } => format!(
            "The proxy refused this request: {label} has reached its limit for this period."
        ),
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Refusal::Budget { period_end_ms, .. } = why {
        // Seconds to the period's end, as of now (not as of the state's arrival).
        let retry_after = period_end_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
        headers.push(("retry-after", retry_after.to_string()));
        headers.push(("x-should-retry", "false".to_string()));
    }
    let budget = matches!(why, Refusal::Budget { .. });
    let body = match api {
        Api::Messages => serde_json::json!({
            "type": "error",
            "error": {
                "type": if budget { "rate_limit_error" } else { "permission_error" },
                "message": message
            }
        }),
        Api::GenerateContent => serde_json::json!({
            "error": {
                "code": status,
                "message": message,
                "status": if budget { "RESOURCE_EXHAUSTED" } else { "PERMISSION_DENIED" }
            }
        }),
        Api::BedrockInvoke | Api::BedrockConverse => {
            headers.push((
                "x-amzn-errortype",
                if budget {
                    "ThrottlingException"
                } else {
                    "AccessDeniedException"
                }
                .to_string(),
            ));
            serde_json::json!({ "message": message })
        }
        Api::ChatCompletions | Api::Responses | Api::Completions | Api::Embeddings => {
            serde_json::json!({
                "error": {
                    "message": message,
                    "type": if budget { "insufficient_quota" } else { "permission_denied" },
                    "param": null,
                    "code": if budget { "budget_exceeded" } else { "blocked_by_rule" }
                }
            })
        }
    };
    (status, headers, body.to_string())
}

/// Whether every condition but the model's holds.
fn matches_but_model(m: &Matchers, facts: &Facts<'_>) -> bool {
    m.0.iter()
        .filter(|x| x.on != On::Model)
        .all(|x| facts.get(x.on).is_some_and(|v| glob(&x.pattern, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, ok) in [
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4*", "gpt-4o-mini", true),
            ("*mini", "gpt-4o-mini", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("claude-*-4*", "claude-sonnet-4-5", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, t), ok, "{p} {t}");
        }
    }

    fn rules(json: &str) -> Result<Vec<Rule>, String> {
        parse_rules(serde_json::from_str(json).map_err(|e| e.to_string())?)
    }

    struct Never;
    impl Ledger for Never {
        fn acting(&mut self, _: usize, b: &Budget) -> bool {
            b.exceeded
        }
    }

    fn facts(team: Option<&'static str>, model: Model<'static>) -> Facts<'static> {
        Facts {
            team,
            app: None,
            feature: None,
            task: None,
            user: None,
            namespace: None,
            workload: None,
            principal: None,
            provider: "openai",
            model,
        }
    }

    #[test]
    fn bad_rules_say_which_and_why() {
        for (json, says) in [
            (
                r#"[{"name":"a","block":true,"route":"x"}]"#,
                "exactly one action",
            ),
            (r#"[{"name":"a"}]"#, "no action"),
            (r#"[{"name":"a","block":false}]"#, "block must be true"),
            (r#"[{"name":"a b","block":true}]"#, "name is 1 to 64"),
            (
                r#"[{"name":"a","match":{"colour":"x"},"block":true}]"#,
                "cannot match on \"colour\"",
            ),
            (
                r#"[{"name":"a","match":{"model":"gpt-4o"},"route":"local"}]"#,
                "cannot match on the model",
            ),
            (
                r#"[{"name":"m","match":{"model":"gpt-4o"},"block":true},{"name":"r","match":{"team":"x"},"route":"local"}]"#,
                "cannot come after \"m\"",
            ),
            (
                r#"[{"name":"a","block":true},{"name":"a","block":true}]"#,
                "two rules are named",
            ),
            (
                r#"[{"name":"a","block":true,"over_cap":"drop"}]"#,
                "over_cap must be",
            ),
            (
                r#"[{"name":"a","route":"no spaces"}]"#,
                "route \"no spaces\"",
            ),
        ] {
            let e = rules(json).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
    }

    #[test]
    fn the_first_rule_that_matches_acts_and_model_rules_wait_for_the_model() {
        let rs = rules(
            r#"[
            {"name":"route-research","match":{"team":"research"},"route":"local-vllm"},
            {"name":"no-o1","match":{"model":"o1*"},"block":true},
            {"name":"cheap","match":{"model":"gpt-4o","team":"web"},"rewrite_model":"gpt-4o-mini"},
            {"name":"web-block","match":{"team":"web"},"block":true}
        ]"#,
        )
        .unwrap();
        let d = |team, model| decide(&rs, &[], &mut Never, &facts(team, model));
        // Route: decided at the headers.
        let Step::Decided(v) = d(Some("research"), Model::Later) else {
            panic!()
        };
        assert_eq!(v.route.as_deref(), Some("local-vllm"));
        assert_eq!(v.label.as_deref(), Some("rule:route-research"));
        // A block rule may follow: hold the whole body.
        assert_eq!(
            d(Some("web"), Model::Later),
            Step::Wait {
                hold_all: true,
                route: None
            }
        );
        let Step::Decided(v) = d(Some("web"), Model::Known("gpt-4o")) else {
            panic!()
        };
        assert_eq!(v.rewrite.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(v.label.as_deref(), Some("rule:cheap"));
        let Step::Decided(v) = d(Some("web"), Model::Known("gpt-4.1")) else {
            panic!()
        };
        assert_eq!(v.refuse, Some(Refusal::Rule("rule:web-block".into())));
        let Step::Decided(v) = d(None, Model::Known("o1-mini")) else {
            panic!()
        };
        assert_eq!(v.refuse, Some(Refusal::Rule("rule:no-o1".into())));
        // Nothing matches: no label, nothing changed.
        assert_eq!(
            d(None, Model::Known("gpt-4o")),
            Step::Decided(Verdict::default())
        );
        // Past the cap, a pass rule is passed over (and said so); the next rule acts.
        let Step::Decided(v) = d(Some("web"), Model::PastCap) else {
            panic!()
        };
        assert!(v.passed_over_cap);
        assert_eq!(v.refuse, Some(Refusal::Rule("rule:web-block".into())));
    }

    #[test]
    fn rewrite_only_rules_hold_only_the_model_and_refuse_rules_refuse_past_the_cap() {
        let rs = rules(
            r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"},
                {"name":"strict","match":{"model":"gpt-5*"},"rewrite_model":"gpt-5-mini","over_cap":"refuse"}]"#,
        )
        .unwrap();
        let only_rewrite = &rs[..1];
        assert_eq!(
            decide(only_rewrite, &[], &mut Never, &facts(None, Model::Later)),
            Step::Wait {
                hold_all: false,
                route: None
            }
        );
        assert_eq!(
            decide(&rs, &[], &mut Never, &facts(None, Model::Later)),
            Step::Wait {
                hold_all: true,
                route: None
            }
        );
        let Step::Decided(v) = decide(&rs, &[], &mut Never, &facts(None, Model::PastCap)) else {
            panic!()
        };
        assert_eq!(v.refuse, Some(Refusal::OverCap("rule:strict".into())));
        // The body ended with no model: nothing to match.
        assert_eq!(
            decide(&rs, &[], &mut Never, &facts(None, Model::Never)),
            Step::Decided(Verdict::default())
        );
    }

    fn budget(name: &str, scope: &[(&str, &str)], action: &str, exceeded: bool) -> Budget {
        let fields: BTreeMap<String, String> = scope
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Budget {
            label: format!("budget:{name}"),
            org: "acme".into(),
            matchers: Matchers::parse(&fields, "b").unwrap(),
            action: BudgetAction::parse(action).unwrap(),
            exceeded,
            period_end_ms: 3_600_000,
            share_usd: 1.0,
            confirmed_requests: 0,
            estimate_usd: 0.01,
            ledger_key: format!("{name}@0"),
        }
    }

    #[test]
    fn budgets_block_downgrade_and_shadow_in_their_order() {
        let rs =
            rules(r#"[{"name":"cheap","match":{"model":"gpt-4o"},"rewrite_model":"gpt-4o-mini"}]"#)
                .unwrap();
        let bs = vec![
            budget("web-shadow", &[("team", "web")], "shadow", true),
            budget(
                "web-down",
                &[("team", "web")],
                "downgrade:gpt-4.1-nano",
                true,
            ),
            budget("ml-block", &[("team", "ml")], "block", true),
            budget("ok", &[], "block", false),
        ];
        let Step::Decided(v) = decide(
            &rs,
            &bs,
            &mut Never,
            &facts(Some("ml"), Model::Known("gpt-4o")),
        ) else {
            panic!()
        };
        assert_eq!(
            v.refuse,
            Some(Refusal::Budget {
                label: "budget:ml-block".into(),
                period_end_ms: 3_600_000
            })
        );
        assert_eq!(v.label.as_deref(), Some("budget:ml-block"));
        assert_eq!(v.charged, vec![2, 3]);
        // A rule's rewrite outranks a budget's downgrade.
        let Step::Decided(v) = decide(
            &rs,
            &bs,
            &mut Never,
            &facts(Some("web"), Model::Known("gpt-4o")),
        ) else {
            panic!()
        };
        assert_eq!(
            (v.rewrite.as_deref(), v.label.as_deref(), v.shadow),
            (Some("gpt-4o-mini"), Some("rule:cheap"), false)
        );
        let Step::Decided(v) = decide(
            &rs,
            &bs,
            &mut Never,
            &facts(Some("web"), Model::Known("gpt-4.1")),
        ) else {
            panic!()
        };
        assert_eq!(
            (v.rewrite.as_deref(), v.label.as_deref()),
            (Some("gpt-4.1-nano"), Some("budget:web-down"))
        );
        // Shadow alone: marked, nothing changed.
        let Step::Decided(v) = decide(
            &[],
            &bs[..1],
            &mut Never,
            &facts(Some("web"), Model::Known("gpt-4.1")),
        ) else {
            panic!()
        };
        assert_eq!(
            (v.rewrite, v.label.as_deref(), v.shadow),
            (None, Some("budget:web-shadow"), true)
        );
        // A block budget on the model: hold everything until it is known.
        let model_block = vec![budget("o1", &[("model", "o1*")], "block", true)];
        assert_eq!(
            decide(&[], &model_block, &mut Never, &facts(None, Model::Later)),
            Step::Wait {
                hold_all: true,
                route: None
            }
        );
    }
}
