//! The provider part every test-only Terraform provider shares: no configuration, no data
//! sources, only resources.

use std::collections::HashMap;

use async_trait::async_trait;
use tf_provider::schema::{Block, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{Diagnostics, DynamicDataSource, DynamicResource, Provider};

/// A provider that serves the resources `resources` makes (keys without the provider's name:
/// `"file"` served as `local` is `local_file`).
pub struct ResourcesOnly {
    pub description: &'static str,
    pub resources: fn() -> HashMap<String, Box<dyn DynamicResource>>,
}

#[async_trait]
impl Provider for ResourcesOnly {
    type Config<'a> = ValueEmpty;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 0,
            block: Block {
                description: Description::plain(self.description),
                ..Default::default()
            },
        })
    }

    fn get_resources(
        &self,
        _: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some((self.resources)())
    }

    fn get_data_sources(
        &self,
        _: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(HashMap::new())
    }
}
