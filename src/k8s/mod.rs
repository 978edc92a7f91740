//! The one place that talks to the Kubernetes API.

mod bound;
mod connection;
pub mod discovery;
pub mod objects;
pub mod rollout;
mod snapshot;
pub mod watch;

pub use bound::DEFAULT_REQUEST_TIMEOUT;
pub use connection::{Connection, KubeconfigSource};
pub use snapshot::{
    APISERVER_SECRET, AUTH_CONFIGMAP, ApiServiceState, ClusterSnapshot, WEBHOOK_CONFIG,
    WEBHOOK_SECRET, snapshot,
};
