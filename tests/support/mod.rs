//! Test support: a real control plane on loopback for the integration tests.
//!
//! Use it from an integration test with `mod support;`. A [`TestEnv`] makes a real Lokomotive
//! asset dir (`testenv/make-assets.sh`, real terraform), starts etcd, kube-apiserver and
//! kube-controller-manager with that asset dir's PKI, a simulated kubelet and the
//! control-plane sync; one `#[test]` function owns one environment and runs its steps on it
//! (see docs/test-harness.md). Every external program comes from the variables written by
//! `scripts/provision.sh`; without them a test fails and says so.

// Each test crate compiles this module and uses only part of it (and of the re-exports).
#![allow(dead_code, unused_imports)]

pub mod assets;
pub mod audit;
pub mod cmd;
pub mod control_plane;
pub mod env;
pub mod kcm;
pub mod kubelet;
pub mod logserver;
pub mod node;
pub mod pki;
pub mod pods;
pub mod process;
pub mod renewal;
pub mod rotation;
pub mod service;
pub mod sync;
pub mod tools;
pub mod wait;

pub use assets::{AssetOptions, Assets, Lokomotive, NodeSsh, free_port};
pub use audit::AuditedRequest;
pub use cmd::{Cmd, Output, Spawned};
pub use env::{EnvOptions, ExtApiServer, Helm, TestEnv, helm_history_rows};
pub use kubelet::{KubeletConfig, NEVER_READY_LABEL, PodPredicate, READY_DELAY_ANNOTATION};
pub use pki::{file_fingerprints, fingerprints, mode};
pub use tools::Tools;
pub use wait::{wait_for, wait_for_async};
