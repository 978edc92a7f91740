//! Test-only stand-in for the `hashicorp/null` Terraform provider 3.0.0: serves
//! `null_resource`, which Lokomotive's platform modules use for
//! `copy-controller-secrets` (the etcd certificates copied to each controller
//! by Terraform's `file` and `remote-exec` provisioners over SSH; the
//! provisioners are Terraform's own, not the provider's).
//!
//! Behaviour copied from the real provider: `triggers` is a map of strings
//! whose every change forces a replacement (and so runs the provisioners
//! again); the id is a random decimal number chosen at create; nothing else.

use std::collections::BTreeMap;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use testenv::provider::ResourcesOnly;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource, map, serve};

type Str = Value<String>;

#[derive(Serialize, Deserialize, Clone, Default, PartialEq)]
struct NullState {
    id: Str,
    triggers: Value<BTreeMap<String, Str>>,
}

/// A random non-negative 63-bit decimal, as Go's `rand.Int()` the real provider prints.
fn random_id() -> String {
    let mut bytes = [0u8; 8];
    openssl::rand::rand_bytes(&mut bytes).expect("openssl's random generator");
    (u64::from_be_bytes(bytes) >> 1).to_string()
}

struct NullResource;

#[async_trait]
impl Resource for NullResource {
    type State<'a> = NullState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        use AttributeConstraint::{Computed, Optional};
        Some(Schema {
            version: 0,
            block: Block {
                version: 0,
                description: Description::plain("null resource (test-only stand-in)"),
                attributes: map! {
                    "id" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::plain("random decimal chosen at create"),
                        constraint: Computed,
                        ..Default::default()
                    },
                    "triggers" => Attribute {
                        attr_type: AttributeType::Map(Box::new(AttributeType::String)),
                        description: Description::plain("any change replaces the resource"),
                        constraint: Optional,
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
        })
    }

    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: NullState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(NullState, ValueEmpty)> {
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut planned: NullState,
        _: NullState,
        _: ValueEmpty,
    ) -> Option<(NullState, ValueEmpty)> {
        planned.id = Value::Unknown;
        Some((planned, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        _: &mut Diagnostics,
        prior: NullState,
        mut planned: NullState,
        _: NullState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(NullState, ValueEmpty, Vec<AttributePath>)> {
        let replace = if prior.triggers != planned.triggers {
            planned.id = Value::Unknown;
            vec![AttributePath::new("triggers")]
        } else {
            planned.id = prior.id;
            Vec::new()
        };
        Some((planned, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: NullState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        _: &mut Diagnostics,
        mut planned: NullState,
        _: NullState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(NullState, ValueEmpty)> {
        planned.id = Value::Value(random_id());
        Some((planned, private))
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: NullState,
        planned: NullState,
        _: NullState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(NullState, ValueEmpty)> {
        Some((planned, private))
    }

    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: NullState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        Some(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let provider = ResourcesOnly {
        description: "null (test-only stand-in)",
        resources: || map! { "resource" => NullResource },
    };
    serve("null", provider).await
}
