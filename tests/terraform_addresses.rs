//! The Terraform addresses of the asset dir model (`certrotate::assets::CREDENTIALS`: every key,
//! certificate and `local_file` the rotation commands taint or target) are checked against
//! real state: `terraform state list` of the Lokomotive-shaped fixture, made by real terraform.
//! A typo fails here, not in the middle of a rotation.

mod support;

use std::collections::BTreeSet;

use certrotate::assets::CREDENTIALS;
use support::{AssetOptions, Assets, free_port};

#[test]
fn every_address_of_the_model_is_in_the_fixture_state() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = Assets::make(&tmp.path().join("config"), free_port(), &AssetOptions::default());
    let listed = assets.terraform().args(["state", "list"]).ok().stdout;
    let state: BTreeSet<&str> = listed.lines().collect();
    let module = assets.bootkube_module();

    let mut model = BTreeSet::new();
    for credential in CREDENTIALS {
        let resources = &credential.terraform;
        let addresses = [resources.key]
            .into_iter()
            .chain(resources.cert)
            .chain(resources.files.iter().copied());
        for address in addresses {
            let full = format!("{module}.{address}");
            assert!(
                state.contains(full.as_str()),
                "{}: {full} is not in `terraform state list`:\n{listed}",
                credential.name
            );
            model.insert(full);
        }
    }
    // The other way round: every key and certificate the bootkube module makes is known to
    // the model, so none is left out of status and the rotations (certificate requests are
    // inputs of the certificates, never tainted or targeted themselves).
    let kinds = ["tls_private_key.", "tls_self_signed_cert.", "tls_locally_signed_cert."];
    let unknown: Vec<&str> = state
        .iter()
        .copied()
        .filter(|a| kinds.iter().any(|kind| a.starts_with(&format!("{module}.{kind}"))))
        .filter(|a| !model.contains(*a))
        .collect();
    assert!(unknown.is_empty(), "keys and certificates the model does not know: {unknown:?}");
    eprintln!("{} addresses of the model found in the state of {module}", model.len());
}
