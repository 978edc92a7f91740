//! The cluster a config dir's `*.lokocfg` names, read as lokoctl reads it, so that
//! `lokoctl cluster apply` runs only where it changes the cluster of this asset dir.
//!
//! lokoctl (`pkg/config`) merges every `*.lokocfg` of the folder it runs in, takes `variable`
//! blocks with their defaults, overrides them from `lokocfg.vars` in that folder (the default
//! of `--lokocfg-vars`), and evaluates the one `cluster "<platform>"` block with the functions
//! `pathexpand` and `file`; it then expands a leading `~` of `asset_dir` and uses it relative to
//! the folder it runs in. The files may hold secrets (cloud tokens), so problems are reported
//! by file, line and column, never by quoting them.

use std::ffi::OsStr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hcl::edit::Span;
use hcl::edit::structure::{Block, Body, Structure};
use hcl::eval::{Context, Evaluate as _, FuncArgs, FuncDef, ParamType};

use crate::error::{Error, Result};

/// The file lokoctl reads the variables' values from, in the folder it runs in.
pub const VARS_FILE: &str = "lokocfg.vars";

/// What the config dir's lokocfg says about the cluster `lokoctl cluster apply` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `cluster "<platform>"`.
    pub platform: String,
    /// `asset_dir` as evaluated (variables and functions applied).
    pub asset_dir: String,
    /// Where lokoctl, run in the config dir, finds it: `~` expanded, relative to the config dir.
    pub resolved: PathBuf,
    /// Where `asset_dir` is set: `file, line L, column C`.
    pub at: String,
}

/// Reads the cluster of the `*.lokocfg` in `config_dir`.
pub fn read_cluster(config_dir: &Path) -> Result<ClusterConfig> {
    let files = lokocfg_files(config_dir)?;
    let sources: Vec<Source> = files.iter().map(|f| Source::read(f)).collect::<Result<_>>()?;
    let bodies: Vec<(&Source, Body)> =
        sources.iter().map(|s| s.parse().map(|b| (s, b))).collect::<Result<_>>()?;
    let mut clusters = Vec::new();
    let mut declared = Vec::new();
    for (source, body) in &bodies {
        for block in body.blocks() {
            match block.ident.as_str() {
                "cluster" => clusters.push((*source, block)),
                "variable" => declared.push((*source, block)),
                _ => {}
            }
        }
    }
    let (source, block) = match clusters.as_slice() {
        [one] => *one,
        [] => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(Error::Lokocfg {
                path: config_dir.to_path_buf(),
                reason: format!("has no cluster block in {}", names.join(", ")),
            });
        }
        [(first, a), (second, b), ..] => {
            return Err(second.problem(
                *b,
                &format!(
                    "a second cluster block (the first is at {}): lokoctl refuses more than one",
                    first.at(*a)
                ),
            ));
        }
    };
    let platform = match block.labels.as_slice() {
        [label] => label.as_str().to_string(),
        _ => return Err(source.problem(block, "the cluster block needs one label (the platform)")),
    };
    // The parser refuses an attribute set twice, as lokoctl's does.
    let attr = block
        .body
        .get_attribute("asset_dir")
        .ok_or_else(|| source.problem(block, "the cluster block has no asset_dir"))?;
    let ctx = context(config_dir, &declared)?;
    let value = hcl::Expression::from(attr.value.clone()).evaluate(&ctx).map_err(|e| {
        source.problem(attr, &format!("asset_dir cannot be evaluated: {}", eval_problem(&e)))
    })?;
    let hcl::Value::String(asset_dir) = value else {
        return Err(source.problem(attr, "asset_dir is not a string"));
    };
    let expanded = expand_home(&asset_dir, std::env::var_os("HOME").as_deref())
        .map_err(|why| source.problem(attr, &why))?;
    Ok(ClusterConfig {
        platform,
        // `components` drops the `.` of `./assets`, for messages.
        resolved: config_dir.join(expanded).components().collect(),
        asset_dir,
        at: source.at(attr),
    })
}

/// Refuses unless the lokocfg in `config_dir` names the asset dir `assets` (the same folder,
/// after symlinks). `from` says where the config dir came from, for the message.
pub fn check_names(config_dir: &Path, from: &'static str, assets: &Path) -> Result<ClusterConfig> {
    let cluster = read_cluster(config_dir)?;
    if same_folder(&cluster.resolved, assets) {
        return Ok(cluster);
    }
    let exists = if cluster.resolved.exists() { "" } else { ", which does not exist" };
    Err(Error::OtherCluster {
        config_dir: config_dir.to_path_buf(),
        from,
        at: cluster.at,
        named: format!("{:?} ({}{exists})", cluster.asset_dir, cluster.resolved.display()),
        assets: assets.to_path_buf(),
    })
}

/// Whether two paths are one folder: the same device and inode once symlinks are followed.
fn same_folder(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `config_dir/*.lokocfg`, sorted as lokoctl's glob returns them.
fn lokocfg_files(config_dir: &Path) -> Result<Vec<PathBuf>> {
    let unreadable = |reason: String| Error::Lokocfg { path: config_dir.to_path_buf(), reason };
    let entries = std::fs::read_dir(config_dir)
        .map_err(|e| unreadable(format!("cannot be read as the config dir ({e})")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("lokocfg")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(unreadable(
            "has no *.lokocfg file, so lokoctl there would have no cluster to apply".into(),
        ));
    }
    Ok(files)
}

/// One HCL file and its text, for positions.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Lokocfg {
            path: path.to_path_buf(),
            reason: format!("cannot be read ({})", e.kind()),
        })?;
        Ok(Self { path: path.to_path_buf(), text })
    }

    /// The parsed body; an error names the position and what the parser expected, never the
    /// text there (the parser's own message quotes the line).
    fn parse(&self) -> Result<Body> {
        hcl::edit::parser::parse_body(&self.text).map_err(|e| Error::Lokocfg {
            path: self.path.clone(),
            reason: format!(
                "is not valid HCL at line {}, column {} ({})",
                e.location().line(),
                e.location().column(),
                e.message()
            ),
        })
    }

    /// `file, line L, column C` of what `span` covers.
    fn at(&self, spanned: &impl Span) -> String {
        format!("{}, {}", self.path.display(), position(&self.text, spanned.span()))
    }

    fn problem(&self, spanned: &impl Span, what: &str) -> Error {
        Error::Lokocfg {
            path: self.path.clone(),
            reason: format!("{}: {what}", position(&self.text, spanned.span())),
        }
    }
}

/// `line L, column C` (from 1, as editors count) of the start of `span` in `text`.
fn position(text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else { return "somewhere".into() };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}")
}

/// lokoctl's evaluation context: `var.<name>` for each declared variable (its value from
/// `lokocfg.vars`, else its default; literals only, as lokoctl evaluates them without a
/// context), and `pathexpand`. `file` is not offered: a path is never read from a file.
fn context<'a>(config_dir: &Path, declared: &[(&Source, &Block)]) -> Result<Context<'a>> {
    let literal = Context::new();
    let given = vars_file(config_dir, &literal)?;
    let mut vars = hcl::Map::new();
    for (source, block) in declared {
        let [label] = block.labels.as_slice() else {
            return Err(source.problem(*block, "a variable block needs one label (its name)"));
        };
        let name = label.as_str();
        if let Some(value) = given.get(name) {
            vars.insert(name.to_string(), value.clone());
            continue;
        }
        let Some(default) = block.body.get_attribute("default") else { continue };
        let value =
            hcl::Expression::from(default.value.clone()).evaluate(&literal).map_err(|e| {
                source.problem(default, &format!("the default of {name}: {}", eval_problem(&e)))
            })?;
        vars.insert(name.to_string(), value);
    }
    let mut ctx = Context::new();
    ctx.declare_var("var", hcl::Value::Object(vars));
    ctx.declare_func("pathexpand", FuncDef::new(pathexpand, [ParamType::String]));
    Ok(ctx)
}

/// `lokocfg.vars` in the config dir (`name = value` lines), if there is one.
fn vars_file(config_dir: &Path, literal: &Context) -> Result<hcl::Map<String, hcl::Value>> {
    let path = config_dir.join(VARS_FILE);
    if !path.exists() {
        return Ok(hcl::Map::new());
    }
    let source = Source::read(&path)?;
    let body = source.parse()?;
    let mut values = hcl::Map::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let value =
                    hcl::Expression::from(attr.value.clone()).evaluate(literal).map_err(|e| {
                        source
                            .problem(attr, &format!("{}: {}", attr.key.as_str(), eval_problem(&e)))
                    })?;
                values.insert(attr.key.as_str().to_string(), value);
            }
            Structure::Block(block) => {
                return Err(source.problem(block, "only `name = value` lines may be here"));
            }
        }
    }
    Ok(values)
}

/// An evaluation error without the values involved (a variable may hold a token).
fn eval_problem(err: &hcl::eval::Error) -> String {
    use hcl::eval::ErrorKind as K;
    match err.kind() {
        K::UndefinedVar(name) => format!("undefined variable {name}"),
        K::UndefinedFunc(name) => format!(
            "{name}() is not evaluated here (only pathexpand is): write the path, or use \
             pathexpand"
        ),
        K::NoSuchKey(key) => format!(
            "no variable {key}: declare it with a variable block (and set it in {VARS_FILE})"
        ),
        K::FuncCall(name, why) => format!("{name}(): {why}"),
        K::Unexpected(_, expected) => format!("a value of the wrong type (expected {expected})"),
        _ => "an expression that does not evaluate to a path".into(),
    }
}

/// lokoctl's `pathexpand`: a leading `~` becomes the home folder.
fn pathexpand(args: FuncArgs) -> std::result::Result<hcl::Value, String> {
    let path = args[0].as_str().unwrap_or_default();
    expand_home(path, std::env::var_os("HOME").as_deref()).map(hcl::Value::String)
}

/// go-homedir's `Expand`, which lokoctl applies to `pathexpand`'s argument and to `asset_dir`:
/// `~` and `~/…` become the home folder; `~user` is an error.
fn expand_home(path: &str, home: Option<&OsStr>) -> std::result::Result<String, String> {
    let Some(rest) = path.strip_prefix('~') else { return Ok(path.to_string()) };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(format!("cannot expand a user-specific home dir ({path:?})"));
    }
    let home = home
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))?;
    Ok(format!("{}{rest}", home.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config dir with `files` (name, content) and an `assets/` folder.
    fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    fn resolved(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = config_dir(files);
        let cluster = read_cluster(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        (dir, cluster.resolved)
    }

    /// The refusal of a config dir made of `files`, its path shown as `<dir>`.
    fn error(files: &[(&str, &str)]) -> String {
        let dir = config_dir(files);
        let assets = dir.path().join("assets");
        let err = check_names(dir.path(), "--config-dir", &assets).unwrap_err();
        err.to_string().replace(&dir.path().display().to_string(), "<dir>")
    }

    const PLAIN: &str =
        "cluster \"aws\" {\n  asset_dir    = \"./assets\"\n  cluster_name = \"l8e-mat\"\n}\n";

    #[test]
    fn a_relative_asset_dir_is_taken_from_the_config_dir_not_the_working_dir() {
        let (dir, path) = resolved(&[("cluster.lokocfg", PLAIN)]);
        assert_eq!(path, dir.path().join("assets"));
        let assets = dir.path().join("assets");
        let checked = check_names(dir.path(), "--config-dir", &assets).unwrap();
        assert_eq!(checked.platform, "aws");
        assert_eq!(checked.asset_dir, "./assets");
        assert!(checked.at.ends_with("cluster.lokocfg, line 2, column 3"), "{}", checked.at);
    }

    #[test]
    fn lokocfg_vars_overrides_a_default_and_the_default_applies_without_it() {
        let cfg = "variable \"dir\" {\n  default = \"./default\"\n}\n\
                   variable \"base\" {\n  default = \"./b\"\n}\n\
                   cluster \"aws\" {\n  asset_dir = \"${var.base}/${var.dir}\"\n}\n";
        let (dir, path) = resolved(&[("c.lokocfg", cfg)]);
        assert_eq!(path, dir.path().join("b/default"));
        let (dir, path) = resolved(&[("c.lokocfg", cfg), (VARS_FILE, "dir = \"assets\"\n")]);
        assert_eq!(path, dir.path().join("b/assets"));
    }

    #[test]
    fn variables_declared_in_another_lokocfg_are_seen_and_undeclared_ones_are_not() {
        let vars = "variable \"asset_dir\" {}\n";
        let cluster = "cluster \"packet\" {\n  asset_dir = var.asset_dir\n}\n";
        let (dir, path) = resolved(&[
            ("a-vars.lokocfg", vars),
            ("cluster.lokocfg", cluster),
            (VARS_FILE, "asset_dir = \"./assets\"\nother = 1\n"),
        ]);
        assert_eq!(path, dir.path().join("assets"));
        // lokoctl puts only declared variables into `var`.
        let said = error(&[("cluster.lokocfg", cluster), (VARS_FILE, "asset_dir = \"./x\"\n")]);
        assert!(said.contains("<dir>/cluster.lokocfg: line 2, column 3"), "{said}");
        assert!(said.contains("no variable asset_dir"), "{said}");
    }

    #[test]
    fn pathexpand_and_a_bare_tilde_are_the_home_folder() {
        let op = Some(OsStr::new("/home/op"));
        assert_eq!(expand_home("~/c/assets", op), Ok("/home/op/c/assets".into()));
        assert_eq!(expand_home("~", op), Ok("/home/op".into()));
        assert_eq!(expand_home("./a~", None), Ok("./a~".into()));
        assert!(expand_home("~op/assets", op).unwrap_err().contains("user-specific"));
        assert!(expand_home("~/a", None).unwrap_err().contains("HOME is not set"));
        let home = std::env::var_os("HOME");
        for cfg in [
            "cluster \"aws\" {\n  asset_dir = pathexpand(\"~/clusters/a\")\n}\n",
            // lokoctl expands asset_dir itself too.
            "cluster \"aws\" {\n  asset_dir = \"~/clusters/a\"\n}\n",
        ] {
            let dir = config_dir(&[("c.lokocfg", cfg)]);
            let read = read_cluster(dir.path()).map(|c| c.resolved);
            match expand_home("~/clusters/a", home.as_deref()) {
                Ok(want) => assert_eq!(read.unwrap(), PathBuf::from(want), "{cfg}"),
                Err(_) => assert!(read.is_err(), "{cfg}"),
            }
        }
    }

    #[test]
    fn a_symlink_to_the_asset_dir_is_the_same_folder_and_a_copy_is_not() {
        let dir = config_dir(&[("c.lokocfg", "cluster \"aws\" {\n  asset_dir = \"./link\"\n}\n")]);
        let assets = dir.path().join("assets");
        std::os::unix::fs::symlink(&assets, dir.path().join("link")).unwrap();
        check_names(dir.path(), "--config-dir", &assets).unwrap();
        // The asset dir given through another symlink.
        std::os::unix::fs::symlink(&assets, dir.path().join("other-name")).unwrap();
        check_names(dir.path(), "$CONFIG_DIR", &dir.path().join("other-name")).unwrap();

        let said = error(&[("c.lokocfg", "cluster \"aws\" {\n  asset_dir = \"./copy\"\n}\n")]);
        assert!(said.contains("\"./copy\" (<dir>/copy, which does not exist)"), "{said}");
        assert!(said.contains("not <dir>/assets"), "{said}");
        assert!(said.contains("(from --config-dir)"), "{said}");
        assert!(said.contains("<dir>/c.lokocfg, line 2, column 3"), "{said}");
        assert!(said.contains("pass --config-dir DIR"), "{said}");
    }

    #[test]
    fn a_copy_of_the_asset_dir_is_another_asset_dir() {
        let dir = config_dir(&[("c.lokocfg", "cluster \"aws\" {\n  asset_dir = \"./copy\"\n}\n")]);
        std::fs::create_dir(dir.path().join("copy")).unwrap();
        let err = check_names(dir.path(), "$CONFIG_DIR", &dir.path().join("assets")).unwrap_err();
        let said = err.to_string().replace(&dir.path().display().to_string(), "<dir>");
        assert!(
            said.contains("names the asset dir \"./copy\" (<dir>/copy), not <dir>/assets"),
            "{said}"
        );
        assert!(said.contains("(from $CONFIG_DIR)"), "{said}");
    }

    #[test]
    fn no_lokocfg_is_an_error_naming_the_folder() {
        let said = error(&[("cluster.hcl", PLAIN)]);
        assert!(said.starts_with("lokocfg <dir>: has no *.lokocfg file"), "{said}");
        let said = error(&[("c.lokocfg", "component \"x\" {}\n")]);
        assert!(said.contains("has no cluster block in <dir>/c.lokocfg"), "{said}");
    }

    #[test]
    fn two_cluster_blocks_are_an_error_naming_both() {
        let said = error(&[("a.lokocfg", PLAIN), ("b.lokocfg", &format!("\n\n{PLAIN}"))]);
        let second = "lokocfg <dir>/b.lokocfg: line 3, column 1: a second cluster block";
        assert!(said.starts_with(second), "{said}");
        assert!(said.contains("the first is at <dir>/a.lokocfg, line 1, column 1"), "{said}");
    }

    #[test]
    fn unparsable_files_are_named_with_line_and_column_and_never_quoted() {
        let secret = "tok3nV4lueThatMustNotLeak";
        let broken = format!(
            "cluster \"aws\" {{\n  asset_dir = \"./assets\"\n  auth_token = {secret} {secret}\n}}\n"
        );
        let said = error(&[("c.lokocfg", &broken)]);
        let at = "lokocfg <dir>/c.lokocfg: is not valid HCL at line 3, column";
        assert!(said.starts_with(at), "{said}");
        assert!(!said.contains(&secret[..8]), "{said}");
        let said = error(&[("c.lokocfg", PLAIN), (VARS_FILE, &format!("token = \"{secret}\n"))]);
        let at = format!("lokocfg <dir>/{VARS_FILE}: is not valid HCL at line 1");
        assert!(said.starts_with(&at), "{said}");
        assert!(!said.contains(&secret[..8]), "{said}");
        let said = error(&[("c.lokocfg", PLAIN), (VARS_FILE, "block {\n}\n")]);
        let at = format!("{VARS_FILE}: line 1, column 1: only `name = value` lines");
        assert!(said.contains(&at), "{said}");
    }

    #[test]
    fn a_cluster_without_a_usable_asset_dir_is_an_error_at_its_place() {
        for (cfg, want) in [
            (
                "\ncluster \"aws\" {\n  cluster_name = \"x\"\n}\n",
                "line 2, column 1: the cluster block has no asset_dir",
            ),
            (
                "cluster \"aws\" {\n  asset_dir = 42\n}\n",
                "line 2, column 3: asset_dir is not a string",
            ),
            (
                "cluster \"aws\" {\n  asset_dir = file(\"x\")\n}\n",
                "line 2, column 3: asset_dir cannot be evaluated: file() is not evaluated here",
            ),
            (
                "cluster {\n  asset_dir = \"./assets\"\n}\n",
                "line 1, column 1: the cluster block needs one label",
            ),
            (
                "cluster \"aws\" {\n  asset_dir = \"./assets\"\n  asset_dir = \"./x\"\n}\n",
                "is not valid HCL at line 3, column 3 (invalid attribute; expected unique attribute key",
            ),
        ] {
            let said = error(&[("c.lokocfg", cfg)]);
            assert!(said.starts_with(&format!("lokocfg <dir>/c.lokocfg: {want}")), "{said}");
        }
    }
}
