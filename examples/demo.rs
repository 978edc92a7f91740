//! The README's demo against a real cluster: a Lokomotive asset dir made by real Terraform, a
//! real etcd + kube-apiserver + kube-controller-manager running on its PKI, the control-plane
//! charts installed by real helm (through the lokoctl test double), an extension API server
//! behind an APIService, and what `kubectl certrotate` shows and does there.
//!
//! Run through `scripts/demo.sh`, which provisions the programs first.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{Cmd, ExtApiServer, Helm, TestEnv};

/// Runs the plugin as an operator of this cluster would, printing what they would see.
fn show(env: &TestEnv, args: &[&str]) {
    println!("\n$ kubectl certrotate {}", args.join(" "));
    let out = env.certrotate().args(args).run();
    // Progress goes to stderr while the command runs, the report to stdout at its end.
    eprint!("{}", out.stderr);
    print!("{}", out.stdout);
    println!("(exit code {})", out.code().map_or("killed".into(), |c| c.to_string()));
}

fn quiet(cmd: Cmd) {
    cmd.ok();
}

fn main() {
    let env = TestEnv::start("demo");
    env.step("lokoctl cluster apply (the test double): terraform apply, then helm upgrade --install of kube-apiserver and lokomotive");
    quiet(env.lokoctl().args(["cluster", "apply", "--confirm"]));
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.step("waiting for APIService v1beta1.metrics.k8s.io to be Available (the aggregator checks every ~30 s)");
    env.wait_apiservice(&metrics.apiservice(), true, Duration::from_secs(180));
    println!("\nasset dir: {}", env.assets.dir.display());

    show(&env, &["status"]);
    show(&env, &["extension-servers"]);
    let ca = env.assets.tls("aggregation-ca.crt");
    show(&env, &["extension-servers", "--check-ca", ca.to_str().unwrap()]);

    env.step("the aggregation CA rotation, planned, then run end to end with the cleanup");
    show(&env, &["aggregation", "--cleanup", "--dry-run"]);
    show(&env, &["aggregation", "--cleanup", "-y"]);
    show(&env, &["aggregation"]);
    println!(
        "\n$ kubectl get --raw /apis/metrics.k8s.io/v1beta1   # through the aggregator, with the new client certificate"
    );
    let raw = env.kubectl().args(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).run();
    println!("{}{}", raw.stdout.trim(), raw.stderr.trim());

    env.step("the admission webhook certificate rotation: plan, then the real run (it ends with a real admission call)");
    show(&env, &["webhook", "--dry-run"]);
    show(&env, &["webhook", "-y"]);

    env.step("the rest of the control plane as lokoctl installs it: the kubernetes chart (kube-controller-manager) and the kubelet chart (its ca-syncer)");
    env.install_kubernetes_chart(Helm::V3);
    env.install_kubelet_chart(Helm::V3);
    env.step("every other certificate renewed, CA keys kept: plan, then the real run (etcd is reached on this machine's ports)");
    let etcd = env.renew_etcd_flags();
    let etcd: Vec<&str> = etcd.iter().map(String::as_str).collect();
    show(&env, &[&["renew"], &etcd[..], &["--dry-run"]].concat());
    show(&env, &[&["renew"], &etcd[..], &["-y"]].concat());
    show(&env, &["status"]);
}
