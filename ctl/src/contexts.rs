//! Contexts: named control planes meridianctl remembers (DESIGN §12),
//! `meridianctl config control-planes add|list|use|remove`.
//!
//! The file is YAML at `--config` / `$MERIDIAN_CONFIG`, else
//! `$XDG_CONFIG_HOME/meridian/config.yaml`, else
//! `$HOME/.config/meridian/config.yaml`:
//!
//! ```yaml
//! currentControlPlane: prod
//! controlPlanes:
//!   - name: prod
//!     address: https://cp.example.com:5682
//!     tokenFile: /home/me/prod.token   # the file's path, never the token
//!     caFile: /home/me/prod-ca.pem
//! ```
//!
//! It is written whole to a temporary file (mode 0600, in a directory made
//! 0700) and renamed over the old one, so a crash leaves the old file or the
//! new one, never half of either. Reading rejects unknown fields: a misspelt
//! `tokenFile` must not silently mean "no token".

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::auth::api_host;

/// The context file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_control_plane: Option<String>,
    #[serde(default)]
    pub control_planes: Vec<ControlPlane>,
}

/// One control plane: its address and where its credentials are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    pub name: String,
    pub address: String,
    /// An absolute path; the token is read from it on every use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An absolute path to the PEM CA certificates an `https://` address is
    /// verified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Where the context file is: the explicit path (`--config` or
/// `MERIDIAN_CONFIG`), else under `XDG_CONFIG_HOME`, else under `HOME`.
/// A relative or empty `XDG_CONFIG_HOME` is ignored, as the XDG spec says.
pub fn config_path(
    explicit: Option<&Path>,
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(xdg) = xdg_config_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(xdg.join("meridian").join("config.yaml"));
    }
    match home.map(PathBuf::from).filter(|p| !p.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".config").join("meridian").join("config.yaml")),
        None => bail!("cannot place the context file: neither MERIDIAN_CONFIG, XDG_CONFIG_HOME nor HOME is set (give --config FILE)"),
    }
}

impl Config {
    /// Reads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading the context file {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("the context file {} is not valid", path.display()))?;
        if let Some(cur) = &config.current_control_plane {
            if config.find(cur).is_none() {
                bail!(
                    "the context file {}: the current control plane {cur:?} is not among its controlPlanes",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_yaml_ng::to_string(self).context("encoding the context file")?;
        write_atomic_private(path, text.as_bytes())
    }

    pub fn find(&self, name: &str) -> Option<&ControlPlane> {
        self.control_planes.iter().find(|c| c.name == name)
    }

    /// The current context, if any.
    pub fn current(&self) -> Option<&ControlPlane> {
        self.find(self.current_control_plane.as_deref()?)
    }

    /// Adds (or with `overwrite` replaces) a context; the first one, or any
    /// one while none is current, becomes current. Says whether it did.
    pub fn add(&mut self, cp: ControlPlane, overwrite: bool) -> anyhow::Result<bool> {
        check_name(&cp.name)?;
        api_host(&cp.address).with_context(|| format!("--address {:?}", cp.address))?;
        match self.control_planes.iter_mut().find(|c| c.name == cp.name) {
            Some(_) if !overwrite => bail!(
                "control plane {:?} already exists: give --overwrite to replace it",
                cp.name
            ),
            Some(old) => *old = cp.clone(),
            None => self.control_planes.push(cp.clone()),
        }
        if self.current().is_none() {
            self.current_control_plane = Some(cp.name);
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str) -> anyhow::Result<()> {
        if self.find(name).is_none() {
            bail!("{}", self.unknown(name));
        }
        self.current_control_plane = Some(name.to_string());
        Ok(())
    }

    /// Removes a context; removing the current one leaves none current.
    /// Says whether it was the current one.
    pub fn remove(&mut self, name: &str) -> anyhow::Result<bool> {
        let Some(i) = self.control_planes.iter().position(|c| c.name == name) else {
            bail!("{}", self.unknown(name));
        };
        self.control_planes.remove(i);
        if self.current_control_plane.as_deref() == Some(name) {
            self.current_control_plane = None;
            return Ok(true);
        }
        Ok(false)
    }

    fn unknown(&self, name: &str) -> String {
        if self.control_planes.is_empty() {
            format!("no control plane named {name:?}: none is configured (add one: meridianctl config control-planes add --name NAME --address URL)")
        } else {
            let names: Vec<&str> = self.control_planes.iter().map(|c| c.name.as_str()).collect();
            format!("no control plane named {name:?} (known: {})", names.join(", "))
        }
    }

    /// The rows of `config control-planes list`.
    pub fn table(&self) -> Vec<Vec<String>> {
        self.control_planes
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.address.clone(),
                    c.token_file
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |p| p.display().to_string()),
                    if self.current_control_plane.as_deref() == Some(c.name.as_str()) {
                        "*".to_string()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect()
    }
}

/// The headers of [`Config::table`].
pub const TABLE_HEADERS: [&str; 4] = ["NAME", "ADDRESS", "TOKEN-FILE", "CURRENT"];

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || !name.chars().all(ok) {
        bail!("--name {name:?}: a control plane's name is letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600) and renames
/// it over `path`; creates the directory (mode 0700) when missing.
fn write_atomic_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("the context file {} names no file", path.display()))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);

    // A leftover of a crashed run with this pid goes first: `create_new`
    // then guarantees the mode and never follows a link.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing the context file {}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = std::fs::File::open(&dir) {
        // Make the rename itself durable; a failure here loses nothing yet.
        let _ = d.sync_all();
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn cp(name: &str, address: &str) -> ControlPlane {
        ControlPlane {
            name: name.into(),
            address: address.into(),
            token_file: None,
            ca_file: None,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn config_path_precedence() {
        let explicit = Path::new("/etc/m.yaml");
        let got = config_path(Some(explicit), Some("/xdg".into()), Some("/home/u".into())).expect("explicit");
        assert_eq!(got, explicit);
        let got = config_path(None, Some("/xdg".into()), Some("/home/u".into())).expect("xdg");
        assert_eq!(got, Path::new("/xdg/meridian/config.yaml"));
        for xdg in [None, Some(OsString::new()), Some("relative".into())] {
            let got = config_path(None, xdg, Some("/home/u".into())).expect("home");
            assert_eq!(got, Path::new("/home/u/.config/meridian/config.yaml"));
        }
        let msg = format!("{:#}", config_path(None, None, None).expect_err("nothing"));
        assert!(msg.contains("HOME") && msg.contains("--config"), "{msg}");
    }

    #[test]
    fn the_file_round_trips_with_mode_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("new-dir/meridian/config.yaml");
        assert_eq!(Config::load(&path).expect("missing file"), Config::default());

        let mut config = Config::default();
        config
            .add(
                ControlPlane {
                    name: "prod".into(),
                    address: "https://cp.example.com:5682".into(),
                    token_file: Some("/secrets/prod.token".into()),
                    ca_file: Some("/secrets/ca.pem".into()),
                },
                false,
            )
            .expect("add");
        config.add(cp("local", "http://127.0.0.1:5681"), false).expect("add");
        config.save(&path).expect("save");

        assert_eq!(Config::load(&path).expect("load"), config);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("tokenFile: /secrets/prod.token"), "{text}");
        assert!(text.contains("currentControlPlane: prod"), "{text}");

        // Rewriting a file that was left readable to others makes it private
        // again, and leaves no temporary file behind.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        config.use_context("local").expect("use");
        config.save(&path).expect("save again");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            Config::load(&path).expect("load").current_control_plane.as_deref(),
            Some("local")
        );
        let entries: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![OsString::from("config.yaml")]);
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("config.yaml");
        for text in [
            "controlPlanes: [{name: a, address: 'http://h', tokenfile: /t}]\n",
            "controlPlanes: 3\n",
            "currentControlPlane: b\ncontrolPlanes: [{name: a, address: 'http://h'}]\n",
        ] {
            std::fs::write(&path, text).expect("write");
            let msg = format!("{:#}", Config::load(&path).expect_err(text));
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn add_makes_the_first_current_and_refuses_duplicates_without_overwrite() {
        let mut c = Config::default();
        assert!(c.add(cp("a", "http://127.0.0.1:5681"), false).expect("first"));
        assert!(!c.add(cp("b", "https://b.example.com"), false).expect("second"));
        assert_eq!(c.current().map(|c| c.name.as_str()), Some("a"));

        let msg = c.add(cp("b", "https://other"), false).expect_err("dup").to_string();
        assert!(msg.contains("--overwrite"), "{msg}");
        assert_eq!(c.find("b").map(|c| c.address.as_str()), Some("https://b.example.com"));

        c.add(cp("b", "https://other"), true).expect("overwrite");
        assert_eq!(c.find("b").map(|c| c.address.as_str()), Some("https://other"));
        assert_eq!(c.control_planes.len(), 2);
        assert_eq!(c.current_control_plane.as_deref(), Some("a"));
    }

    #[test]
    fn add_checks_the_name_and_address() {
        let mut c = Config::default();
        for address in ["127.0.0.1:5681", "grpcs://h:5685", "", "http://"] {
            let msg = format!("{:#}", c.add(cp("a", address), false).expect_err(address));
            assert!(msg.contains("--address"), "{msg}");
        }
        for name in ["", "a b", "a/b"] {
            let msg = c.add(cp(name, "http://h"), false).expect_err(name).to_string();
            assert!(msg.contains("--name"), "{msg}");
        }
        assert_eq!(c, Config::default());
    }

    #[test]
    fn use_and_remove() {
        let mut c = Config::default();
        let msg = c.use_context("x").expect_err("empty").to_string();
        assert!(msg.contains("none is configured"), "{msg}");

        c.add(cp("a", "http://h1"), false).expect("a");
        c.add(cp("b", "http://h2"), false).expect("b");
        c.use_context("b").expect("use b");
        assert_eq!(c.current().map(|c| c.name.as_str()), Some("b"));

        let msg = c.use_context("x").expect_err("unknown").to_string();
        assert!(msg.contains("\"x\"") && msg.contains("known: a, b"), "{msg}");
        assert!(c.remove("x").is_err());

        assert!(!c.remove("a").expect("remove a"));
        assert!(c.remove("b").expect("remove current"));
        assert_eq!(c.current(), None);
        assert!(c.control_planes.is_empty());

        // With none current, the next one added becomes current.
        c.add(cp("c", "http://h3"), false).expect("c");
        assert_eq!(c.current().map(|c| c.name.as_str()), Some("c"));
    }

    #[test]
    fn list_marks_the_current_one() {
        let mut c = Config::default();
        c.add(
            ControlPlane {
                token_file: Some("/t".into()),
                ..cp("a", "http://h1")
            },
            false,
        )
        .expect("a");
        c.add(cp("b", "http://h2"), false).expect("b");
        assert_eq!(
            c.table(),
            vec![
                vec!["a".to_string(), "http://h1".into(), "/t".into(), "*".into()],
                vec!["b".to_string(), "http://h2".into(), "-".into(), String::new()],
            ]
        );
    }
}
