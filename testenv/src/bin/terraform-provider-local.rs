//! Test-only stand-in for the `hashicorp/local` Terraform provider 2.1.0:
//! serves `local_file`, which Lokomotive's bootkube module uses to write every
//! certificate, key, kubeconfig and chart values file of the asset dir.
//!
//! Behaviour copied from the real provider: the id is the SHA-1 of the
//! content; a refresh that finds the file missing or changed drops the
//! resource from the state so that the next plan re-creates it; every
//! argument forces a replacement; permissions default to "0777" (the umask
//! applies, as with Go's `os.WriteFile`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use testenv::provider::ResourcesOnly;
use testenv::sha1_hex;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource, map, serve};

type Str = Value<String>;

#[derive(Serialize, Deserialize, Clone, Default)]
struct FileState {
    id: Str,
    content: Str,
    sensitive_content: Str,
    filename: Str,
    file_permission: Str,
    directory_permission: Str,
}

impl FileState {
    /// `content` or `sensitive_content`, whichever is set.
    fn body(&self) -> Value<&String> {
        match (&self.content, &self.sensitive_content) {
            (Value::Value(c), _) | (Value::Null, Value::Value(c)) => Value::Value(c),
            (Value::Unknown, _) | (_, Value::Unknown) => Value::Unknown,
            _ => Value::Null,
        }
    }

    fn write(&self) -> Result<()> {
        let Value::Value(body) = self.body() else {
            bail!("exactly one of content or sensitive_content must be set");
        };
        let Value::Value(filename) = &self.filename else {
            bail!("filename is not known");
        };
        let mode = |v: &Str| -> Result<u32> {
            let s = v.as_ref_option().map_or("0777", String::as_str);
            u32::from_str_radix(s, 8).with_context(|| format!("bad permission {s:?}"))
        };
        let path = Path::new(filename);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode(&self.directory_permission)?)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode(&self.file_permission)?)
            .open(path)
            .with_context(|| format!("writing {filename}"))?;
        f.write_all(body.as_bytes())?;
        Ok(())
    }
}

struct LocalFile;

#[async_trait]
impl Resource for LocalFile {
    type State<'a> = FileState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        use AttributeConstraint::{Computed, Optional, OptionalComputed, Required};
        let s = |c, d: &str| Attribute {
            attr_type: AttributeType::String,
            description: Description::plain(d),
            constraint: c,
            ..Default::default()
        };
        let mut sensitive = s(Optional, "file content, hidden from plan output");
        sensitive.sensitive = true;
        Some(Schema {
            version: 0,
            block: Block {
                version: 0,
                description: Description::plain("local file (test-only stand-in)"),
                attributes: map! {
                    "id" => s(Computed, "SHA-1 of the content"),
                    "content" => s(Optional, "file content"),
                    "sensitive_content" => sensitive,
                    "filename" => s(Required, "path of the file"),
                    "file_permission" => s(OptionalComputed, "octal, default 0777"),
                    "directory_permission" => s(OptionalComputed, "octal, default 0777"),
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: FileState) -> Option<()> {
        if config.content.is_value() && config.sensitive_content.is_value() {
            diags.root_error_short("only one of content and sensitive_content may be set");
        }
        Some(())
    }

    /// Like the real provider: a missing file, or one whose content no longer
    /// hashes to the id, is gone from Terraform's point of view.
    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: FileState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(FileState, ValueEmpty)> {
        let filename = state.filename.as_ref_option()?;
        let data = fs::read(filename).ok()?;
        if state.id.as_ref_option() != Some(&sha1_hex(&data)) {
            return None;
        }
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut s: FileState,
        _: FileState,
        _: ValueEmpty,
    ) -> Option<(FileState, ValueEmpty)> {
        for perm in [&mut s.file_permission, &mut s.directory_permission] {
            if perm.is_null() {
                *perm = Value::Value("0777".into());
            }
        }
        // The id is the content's hash: known at plan time when the content is.
        s.id = match s.body() {
            Value::Value(body) => Value::Value(sha1_hex(body.as_bytes())),
            _ => Value::Unknown,
        };
        Some((s, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        _: &mut Diagnostics,
        prior: FileState,
        planned: FileState,
        _: FileState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(FileState, ValueEmpty, Vec<AttributePath>)> {
        let mut replace = Vec::new();
        for (name, a, b) in [
            ("content", &prior.content, &planned.content),
            ("sensitive_content", &prior.sensitive_content, &planned.sensitive_content),
            ("filename", &prior.filename, &planned.filename),
            ("file_permission", &prior.file_permission, &planned.file_permission),
            ("directory_permission", &prior.directory_permission, &planned.directory_permission),
        ] {
            if a != b {
                replace.push(AttributePath::new(name));
            }
        }
        Some((planned, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: FileState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: FileState,
        _: FileState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(FileState, ValueEmpty)> {
        if let Err(e) = planned.write() {
            diags.root_error("local_file failed", format!("{e:#}"));
            return None;
        }
        if let Value::Value(body) = planned.body() {
            planned.id = Value::Value(sha1_hex(body.as_bytes()));
        }
        Some((planned, private))
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: FileState,
        planned: FileState,
        _: FileState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(FileState, ValueEmpty)> {
        Some((planned, private))
    }

    /// The real provider removes the file on destroy.
    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        state: FileState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        if let Value::Value(f) = &state.filename {
            let _ = fs::remove_file(f);
        }
        Some(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let provider = ResourcesOnly {
        description: "local (test-only stand-in)",
        resources: || map! { "file" => LocalFile },
    };
    serve("local", provider).await
}
