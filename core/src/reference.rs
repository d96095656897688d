//! The configuration reference of a process (`deploy/reference/*.md`),
//! rendered from its flags and its defaults file, so that a test can keep
//! the committed reference equal to the code.

use serde_yaml_ng::Value;

/// One flag as clap knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagDoc {
    /// `--api-addr` without the dashes.
    pub long: String,
    /// `MERIDIAN_API_ADDR`, when the flag reads one.
    pub env: Option<String>,
    /// The flag's help text.
    pub help: String,
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// Markdown: a title, how settings combine, and a table of every flag with
/// its variable, file key, default (from `defaults_yaml`, the file a test
/// keeps equal to the built-in defaults) and description.
pub fn render(command: &str, defaults_file: &str, defaults_yaml: &str, flags: &[FlagDoc]) -> Result<String, String> {
    let defaults: Value = serde_yaml_ng::from_str(defaults_yaml).map_err(|e| format!("{defaults_file}: {e}"))?;
    let mut out = format!(
        "# `{command}` configuration reference\n\n\
         Generated from the code (a test keeps this file equal to it; \
         `MERIDIAN_BLESS=1 cargo test` rewrites it). Every setting is a flag, \
         an environment variable and a key of the YAML file given with \
         `--config`; a flag wins over the variable, the variable over the \
         file, the file over the default. The defaults are those of \
         `{defaults_file}`; \"—\" means none, or derived as the description \
         says.\n\n\
         | flag | environment | default | description |\n\
         |------|-------------|---------|-------------|\n"
    );
    for f in flags {
        let default = defaults
            .get(f.long.as_str())
            .map(show)
            .filter(|s| !s.is_empty())
            .map(|s| format!("`{s}`"))
            .unwrap_or_else(|| "—".into());
        let env = f.env.as_deref().map(|e| format!("`{e}`")).unwrap_or_else(|| "—".into());
        let help = f
            .help
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        out.push_str(&format!("| `--{}` | {env} | {default} | {help} |\n", f.long));
    }
    Ok(out)
}

/// Renders the reference of `process` (`deploy/reference/<process>.md`)
/// from `flags` and `deploy/<defaults>` under the workspace `root`, and
/// checks it with [`check_file`].
pub fn check_process(root: &std::path::Path, process: &str, defaults: &str, flags: &[FlagDoc]) -> Result<(), String> {
    let defaults_file = format!("deploy/{defaults}");
    let text = std::fs::read_to_string(root.join(&defaults_file)).map_err(|e| format!("{defaults_file}: {e}"))?;
    let md = render(&format!("{process} run"), &defaults_file, &text, flags)?;
    check_file(&root.join(format!("deploy/reference/{process}.md")), &md)
}

/// Compares the committed reference at `path` with `rendered`; with
/// `MERIDIAN_BLESS=1` in the environment writes it instead (tests only:
/// this is the one place a library reads the environment).
pub fn check_file(path: &std::path::Path, rendered: &str) -> Result<(), String> {
    if std::env::var_os("MERIDIAN_BLESS").is_some_and(|v| v == "1") {
        return std::fs::write(path, rendered).map_err(|e| format!("{}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if committed == rendered {
        Ok(())
    } else {
        Err(format!(
            "{} is not what the code says: rerun with MERIDIAN_BLESS=1 and commit it; the code renders:\n{rendered}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_defaults_and_lists() {
        let flags = vec![
            FlagDoc {
                long: "api-addr".into(),
                env: Some("MERIDIAN_API_ADDR".into()),
                help: "Address of\n the API | more".into(),
            },
            FlagDoc {
                long: "etcd-endpoints".into(),
                env: None,
                help: "etcd".into(),
            },
            FlagDoc {
                long: "token-file".into(),
                env: None,
                help: "token".into(),
            },
        ];
        let md = render(
            "x run",
            "d.yaml",
            "api-addr: 127.0.0.1:1\netcd-endpoints:\n  - a\n  - b\n# token-file: f\n",
            &flags,
        )
        .unwrap();
        assert!(
            md.contains("| `--api-addr` | `MERIDIAN_API_ADDR` | `127.0.0.1:1` | Address of the API \\| more |"),
            "{md}"
        );
        assert!(md.contains("| `--etcd-endpoints` | — | `a, b` | etcd |"), "{md}");
        assert!(md.contains("| `--token-file` | — | — | token |"), "{md}");
        assert!(render("x", "d", ": : :", &flags).is_err());
    }
}
