//! Who is calling, as the mesh knows it: a sidecar's own workload from Istio's node metadata
//! (read once per VM), or at a gateway the downstream peer's SPIFFE ID from its mTLS
//! certificate (per request). Events carry it in `namespace`, `workload` and `principal`, and
//! the configuration can map it onto attribution fields a request left empty.

use crate::config::Field;

/// What the event gets, and what attribution may be taken from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service_account: Option<String>,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub principal: Option<String>,
    pub cluster: Option<String>,
    pub mesh: Option<String>,
    /// The workload's labels that the attribution mapping names (`label:<name>`).
    pub labels: Vec<(String, String)>,
}

/// Where an attribution field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Namespace,
    Workload,
    ServiceAccount,
    Principal,
    Cluster,
    Mesh,
    Label(String),
}

impl Source {
    pub fn parse(text: &str) -> Option<Source> {
        Some(match text {
            "namespace" => Source::Namespace,
            "workload" => Source::Workload,
            "service_account" => Source::ServiceAccount,
            "principal" => Source::Principal,
            "cluster" => Source::Cluster,
            "mesh" => Source::Mesh,
            _ => {
                let name = text.strip_prefix("label:")?;
                let ok = !name.is_empty()
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                return ok.then(|| Source::Label(name.to_string()));
            }
        })
    }
}

/// Node metadata keys Istio's injector writes, read with `get(key)` (`LABELS` by `label`).
pub const NODE_KEYS: [&str; 5] = [
    "NAMESPACE",
    "WORKLOAD_NAME",
    "SERVICE_ACCOUNT",
    "CLUSTER_ID",
    "MESH_ID",
];

/// Mesh identity values stay labels: printable, bounded.
fn value(v: Option<String>) -> Option<String> {
    let v = v?;
    let v = v.trim();
    (!v.is_empty() && v.len() <= 253 && v.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .then(|| v.to_string())
}

impl Identity {
    /// A sidecar's identity from its node metadata: `get(key)` reads `node.metadata.<key>`,
    /// `label(name)` reads `node.metadata.LABELS.<name>`. None when the node has no namespace
    /// (not an Istio proxy).
    pub fn from_node(
        get: impl Fn(&str) -> Option<String>,
        label: impl Fn(&str) -> Option<String>,
        trust_domain: &str,
        labels_wanted: &[String],
    ) -> Option<Identity> {
        let namespace = value(get("NAMESPACE"))?;
        let service_account = value(get("SERVICE_ACCOUNT"));
        let principal = service_account
            .as_ref()
            .map(|sa| format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}"));
        Some(Identity {
            workload: value(get("WORKLOAD_NAME")),
            cluster: value(get("CLUSTER_ID")),
            mesh: value(get("MESH_ID")),
            labels: labels_wanted
                .iter()
                .filter_map(|l| value(label(l)).map(|v| (l.clone(), v)))
                .collect(),
            namespace: Some(namespace),
            service_account,
            principal,
        })
    }

    /// A peer's identity from its certificate's URI SAN, if it is an Istio-style SPIFFE ID
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`) of our trust domain; other
    /// SPIFFE IDs (a federated domain could claim any namespace) give the principal alone.
    pub fn from_spiffe(uri: &str, trust_domain: &str) -> Option<Identity> {
        let uri = value(Some(uri.to_string()))?;
        let rest = uri.strip_prefix("spiffe://")?;
        let (domain, path) = rest.split_once('/')?;
        if domain.is_empty() {
            return None;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let mut id = Identity {
            principal: Some(uri.clone()),
            ..Identity::default()
        };
        if let ["ns", ns, "sa", sa] = parts.as_slice() {
            if !ns.is_empty() && !sa.is_empty() && domain.eq_ignore_ascii_case(trust_domain) {
                id.namespace = Some(ns.to_string());
                id.service_account = Some(sa.to_string());
            }
        }
        Some(id)
    }

    /// The value a source gives, if this identity has it.
    pub fn get(&self, source: &Source) -> Option<&str> {
        match source {
            Source::Namespace => self.namespace.as_deref(),
            Source::Workload => self.workload.as_deref(),
            Source::ServiceAccount => self.service_account.as_deref(),
            Source::Principal => self.principal.as_deref(),
            Source::Cluster => self.cluster.as_deref(),
            Source::Mesh => self.mesh.as_deref(),
            Source::Label(name) => self
                .labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// The fields the mapping may fill: attribution, never the provider or the key.
pub fn mappable(field: Field) -> bool {
    !matches!(field, Field::Provider | Field::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_metadata_as_istio_writes_it() {
        let meta = |k: &str| {
            Some(
                match k {
                    "NAMESPACE" => "payments",
                    "WORKLOAD_NAME" => "checkout-v2",
                    "SERVICE_ACCOUNT" => "checkout",
                    "CLUSTER_ID" => "Kubernetes",
                    "MESH_ID" => "cluster.local",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let labels = |k: &str| (k == "app").then(|| "checkout".to_string());
        let id = Identity::from_node(meta, labels, "corp.example", &["app".into(), "team".into()])
            .unwrap();
        assert_eq!(id.namespace.as_deref(), Some("payments"));
        assert_eq!(id.workload.as_deref(), Some("checkout-v2"));
        assert_eq!(
            id.principal.as_deref(),
            Some("spiffe://corp.example/ns/payments/sa/checkout")
        );
        assert_eq!(id.get(&Source::Label("app".into())), Some("checkout"));
        assert_eq!(id.get(&Source::Label("team".into())), None);
        assert_eq!(id.get(&Source::Cluster), Some("Kubernetes"));
        // Plain Envoy: no namespace, no identity.
        assert_eq!(
            Identity::from_node(|_| None, |_| None, "cluster.local", &[]),
            None
        );
    }

    #[test]
    fn spiffe_ids_from_peer_certificates() {
        let id = Identity::from_spiffe(
            "spiffe://cluster.local/ns/search/sa/indexer",
            "cluster.local",
        )
        .unwrap();
        assert_eq!(id.namespace.as_deref(), Some("search"));
        assert_eq!(id.service_account.as_deref(), Some("indexer"));
        assert_eq!(
            id.principal.as_deref(),
            Some("spiffe://cluster.local/ns/search/sa/indexer")
        );
        let other =
            Identity::from_spiffe("spiffe://example.org/workload/x", "cluster.local").unwrap();
        assert_eq!(other.namespace, None);
        assert!(other.principal.is_some());
        // Another trust domain cannot claim our namespaces.
        let foreign =
            Identity::from_spiffe("spiffe://partner.example/ns/payments/sa/x", "cluster.local")
                .unwrap();
        assert_eq!(foreign.namespace, None);
        assert_eq!(
            foreign.principal.as_deref(),
            Some("spiffe://partner.example/ns/payments/sa/x")
        );
        for bad in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://x",
            "spiffe://cluster.local/ns/a b/sa/c",
        ] {
            assert_eq!(Identity::from_spiffe(bad, "cluster.local"), None, "{bad:?}");
        }
    }

    #[test]
    fn sources_parse() {
        assert_eq!(Source::parse("namespace"), Some(Source::Namespace));
        assert_eq!(
            Source::parse("label:app.kubernetes.io/name"),
            Some(Source::Label("app.kubernetes.io/name".into()))
        );
        assert_eq!(Source::parse("label:"), None);
        assert_eq!(Source::parse("pod"), None);
    }
}
