//! kube-apiserver's audit log, for tests that count the requests a client made: a policy that
//! records the requests of some users (level Metadata: who, what, when, the answer's code;
//! never a body) and nothing else, and a reader of the log it writes.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

/// The log's file name in the environment's `logs/`.
pub const AUDIT_LOG: &str = "kube-apiserver-audit.log";

/// An audit policy recording every request of `users` once it is answered (a watch: once its
/// stream has started) at level Metadata, and nothing of anyone else.
pub fn policy(users: &[String]) -> Value {
    json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": users}, {"level": "None"}],
    })
}

/// One request as the audit log saw it.
#[derive(Debug, Clone)]
pub struct AuditedRequest {
    pub user: String,
    /// `get`, `list`, `watch`, `patch`, …
    pub verb: String,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/kube-system/deployments?watch=true&…`.
    pub uri: String,
    /// The answer's HTTP code, when the log has it (a watch cut by a restart may not).
    pub code: Option<u64>,
    pub received: jiff::Timestamp,
}

impl std::fmt::Display for AuditedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code.map_or("-".to_string(), |c| c.to_string());
        write!(f, "{} {} {} {} {code}", self.received, self.user, self.verb, self.uri)
    }
}

/// Every request in the audit log at `path`, once each (a request has one line per stage), in
/// the order they were received; none when there is no log yet.
pub fn requests(path: &Path) -> Vec<AuditedRequest> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_id: BTreeMap<String, AuditedRequest> = BTreeMap::new();
    // The last line may be half written while the apiserver runs.
    for event in text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()) {
        let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
        let received = field("requestReceivedTimestamp")
            .parse()
            .unwrap_or_else(|e| panic!("{}: requestReceivedTimestamp: {e}", path.display()));
        let request = by_id.entry(field("auditID")).or_insert_with(|| AuditedRequest {
            user: event["user"]["username"].as_str().unwrap_or_default().to_string(),
            verb: field("verb"),
            uri: field("requestURI"),
            code: None,
            received,
        });
        request.code = event["responseStatus"]["code"].as_u64().or(request.code);
    }
    let mut requests: Vec<AuditedRequest> = by_id.into_values().collect();
    requests.sort_by_key(|r| r.received);
    requests
}
