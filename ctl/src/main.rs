//! `meridianctl`: apply, get, delete and inspect resources through the
//! HTTP API of a global or zone control plane, issue zone, dataplane and
//! user tokens, read the audit log, and remember control planes as contexts
//! (DESIGN §5, §12).
//!
//! Start at [`run`]: it resolves the control plane and the token
//! ([`auth`], from flags, environment and the [`contexts`] file) and builds
//! the [`client::Client`] every command uses.

mod audit;
mod auth;
mod client;
mod contexts;
mod inspect;
mod output;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use meridian_core::decode::{decode_value, parse_values, Format};
use meridian_core::{ResourceKey, ResourceType};
use serde_json::Value;

use crate::audit::AuditFilter;
use crate::client::Client;
use crate::contexts::{Config, ControlPlane};
use crate::output::{print_items, print_table, Column};

#[derive(Parser)]
#[command(name = "meridianctl", version, about = "Manage Meridian meshes and policies")]
struct Cli {
    /// Address of the control plane's HTTP API [default: the current
    /// context's, else http://127.0.0.1:5681].
    #[arg(long, global = true, env = "MERIDIAN_API")]
    api: Option<String>,
    /// A file holding the API token (give it before the command: after
    /// `revoke …`, `--token-file` names the token to revoke). Without it:
    /// MERIDIAN_API_TOKEN, the current context's token file, and for a local
    /// control plane ./meridian-data/admin-token or
    /// ./meridian-zone-data/admin-token.
    #[arg(long = "token-file", env = "MERIDIAN_API_TOKEN_FILE", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// PEM CA certificates to verify an https:// API with, instead of the
    /// public roots (give it before the command) [default: the current
    /// context's caFile].
    #[arg(long = "ca-file", env = "MERIDIAN_API_CA_FILE", value_name = "FILE")]
    api_ca_file: Option<PathBuf>,
    /// The context file [default: $XDG_CONFIG_HOME/meridian/config.yaml,
    /// else ~/.config/meridian/config.yaml].
    #[arg(long = "config", global = true, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update resources from YAML/JSON files.
    Apply {
        /// Files, directories (every .yaml/.yml/.json below them, recursively) or `-` for stdin;
        /// `-f a.yaml b.yaml` and `-f a.yaml -f b.yaml` both work.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<String>,
        /// Check every document and show what would change, without writing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// This meridianctl's version and the control plane's.
    Version,
    /// A shell completion script: `meridianctl completion bash > /etc/bash_completion.d/meridianctl`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show resources: `get meshes`, `get zones`, `get meshtimeouts -m default`, `get mesh default`;
    /// the audit log of writes: `get audit [--type T] [-m MESH] [--user U] [--action A] [--result R]`.
    Get {
        /// A type: plural (`meshtimeouts`) or singular (`meshtimeout`, `MeshTimeout`), or `audit`.
        kind: String,
        /// Show only this resource.
        name: Option<String>,
        /// The mesh of mesh-scoped types [default: default]; for `get audit`, only entries of this mesh.
        #[arg(short = 'm', long)]
        mesh: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// `get audit`: only entries about this resource type (`MeshTimeout`).
        #[arg(long = "type", value_name = "TYPE")]
        audit_type: Option<String>,
        /// `get audit`: only entries of this user.
        #[arg(long)]
        user: Option<String>,
        /// `get audit`: only entries of this action (CREATE, UPDATE, DELETE, GENERATE_USER_TOKEN…).
        #[arg(long)]
        action: Option<String>,
        /// `get audit`: only entries with this result.
        #[arg(long, value_parser = ["succeeded", "denied", "failed"])]
        result: Option<String>,
        /// `get dataplanes`: only dataplanes with this tag on an inbound (or
        /// gateway); repeat for all of several.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Delete a resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// Overviews with live state: `inspect zones`, `inspect meshes`,
    /// `inspect services -m default`, `inspect dataplanes -m default [--tag
    /// KEY=VALUE]`, `inspect zone-ingresses`; one dataplane's configuration
    /// (zone API): `inspect dataplane NAME --type config-dump|policies|rules`.
    Inspect {
        #[arg(value_parser = ["zones", "meshes", "services", "dataplanes", "dataplane", "zone-ingresses", "zoneingresses"])]
        what: String,
        /// `inspect dataplanes`: only dataplanes with this tag on an inbound
        /// (or gateway), its value matching as a substring as in Kuma;
        /// repeat for all of several.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The dataplane, for `inspect dataplane`.
        name: Option<String>,
        /// What to show of one dataplane: `config-dump` (its xDS resources as
        /// Envoy's admin /config_dump, in proto3 JSON; `xds` is the same),
        /// `policies` (the policies matched per inbound and destination) or
        /// `rules` (per policy type, the merged rules and the policies each
        /// came from, with what of them has no effect).
        #[arg(long = "type", value_parser = ["config-dump", "xds", "policies", "rules"], default_value = "config-dump")]
        view: String,
        /// With `--type config-dump`: include the endpoints (EDS), as Envoy's
        /// `?include_eds`.
        #[arg(long)]
        include_eds: bool,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Issue credentials: `generate zone-token`, `zone-join` and
    /// `dataplane-token` on the global (dataplane tokens also on a standalone
    /// zone), `zone-ingress-token` on a zone, `user-token` for the HTTP API.
    #[command(subcommand)]
    Generate(Generate),
    /// Revoke credentials: `revoke zone-token`, `revoke dataplane-token`,
    /// `revoke zone-ingress-token`, `revoke user-token`.
    #[command(subcommand)]
    Revoke(Revoke),
    /// Rotate signing keys: `rotate dataplane-token-key --mesh M`.
    #[command(subcommand)]
    Rotate(Rotate),
    /// meridianctl's own settings: `config control-planes add|list|use|remove`.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The control planes meridianctl knows (contexts): address, token file
    /// and CA file, and which one commands talk to.
    #[command(subcommand)]
    ControlPlanes(ControlPlanesCmd),
}

#[derive(Subcommand)]
enum ControlPlanesCmd {
    /// Remember a control plane; the first one becomes current.
    Add {
        /// What `list`, `use` and `remove` call it.
        #[arg(long)]
        name: String,
        /// Its API: http://HOST:PORT or https://HOST:PORT.
        #[arg(long)]
        address: String,
        /// The file holding its token (the path is kept, read on each use;
        /// never the token).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM CA certificates its https:// address is verified with.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Replace a control plane of that name.
        #[arg(long)]
        overwrite: bool,
    },
    /// List the control planes; `*` marks the current one.
    List,
    /// Make commands talk to this control plane.
    Use { name: String },
    /// Forget a control plane.
    Remove { name: String },
}

#[derive(Subcommand)]
enum Rotate {
    /// Add a mesh's next dataplane token signing key: tokens issued from now
    /// on are signed with it; the older keys keep verifying their tokens
    /// until `meridianctl delete dataplane-token-key key-N -m MESH` retires
    /// them.
    DataplaneTokenKey {
        #[arg(long, short = 'm')]
        mesh: String,
    },
}

#[derive(Subcommand)]
enum Generate {
    /// Print a token a zone control plane authenticates to the global with.
    ZoneToken {
        /// The zone's name (an RFC 1035 label).
        #[arg(long)]
        zone: String,
        /// How long the token is accepted (Go duration: 720h, 30m…).
        #[arg(long, default_value = "720h")]
        valid_for: String,
    },
    /// Print a dataplane token: what `meridian-dp --dataplane-token-file`
    /// presents to its zone.
    DataplaneToken {
        /// The mesh the proxy belongs to.
        #[arg(long, short = 'm')]
        mesh: String,
        /// The only dataplane name the token allows (any when not given).
        #[arg(long)]
        name: Option<String>,
        /// A tag every inbound of the dataplane must carry, KEY=VALUE; repeat
        /// for several values (`--tag kuma.io/service=web`).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How long the token is accepted (24h, 30m, 1y…).
        #[arg(long, default_value = "24h")]
        valid_for: String,
    },
    /// Print a token a person or a program uses the HTTP API with, as user
    /// `--name` in the groups `--group` (what AccessRoleBindings grant).
    UserToken {
        /// The user's name.
        #[arg(long)]
        name: String,
        /// A group the user belongs to; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is accepted (24h, 30m, 1y…).
        #[arg(long, default_value = "24h")]
        valid_for: String,
    },
    /// Print a zone ingress token (ask the zone: `--api` names its API).
    ZoneIngressToken {
        /// The only ingress the token allows (any of the zone's when not given).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "8760h")]
        valid_for: String,
    },
    /// Issue a token, fetch the global's KDS address and CA, write
    /// `DIR/zone-NAME.token` and `DIR/global-ca.pem`, and print the
    /// `meridian-zone run …` command that joins the zone.
    ZoneJoin {
        /// The zone's name (an RFC 1035 label).
        #[arg(long)]
        zone: String,
        /// How long the token is accepted (Go duration: 720h, 30m…).
        #[arg(long, default_value = "720h")]
        valid_for: String,
        /// Where to write the token and the CA certificate.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
    },
}

// The variants are the subcommands' words (`revoke zone-token`, …).
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum Revoke {
    /// Make every zone refuse a dataplane token (and close the streams that
    /// present it). Name it by its id or give the token itself.
    DataplaneToken {
        #[arg(long, short = 'm')]
        mesh: Option<String>,
        #[arg(long, required_unless_present_any = ["token", "token_file"], conflicts_with_all = ["token", "token_file"])]
        id: Option<String>,
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Make the zone refuse a zone ingress token (ask the zone: `--api`).
    ZoneIngressToken {
        #[arg(long, required_unless_present_any = ["token", "token_file"], conflicts_with_all = ["token", "token_file"])]
        id: Option<String>,
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Make the control plane refuse a user token from now on.
    UserToken {
        /// The token's id (the `jti` claim, printed by `generate user-token`).
        #[arg(long)]
        id: String,
    },
    /// Make the global refuse a zone token from now on. Name it by its id
    /// (the `jti` claim, printed by `generate`) or give the token itself.
    ZoneToken {
        /// The token's id.
        #[arg(long, required_unless_present_any = ["token", "token_file"], conflicts_with_all = ["token", "token_file"])]
        id: Option<String>,
        /// The token itself.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file holding the token.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    /// A table with more columns (labels, last change, tags).
    Wide,
    Yaml,
    Json,
}

fn main() -> ExitCode {
    // `meridianctl get … | head` closes the pipe early: end quietly as other
    // command-line tools do, not with a panic.
    sigpipe::reset();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The environment and working directory, read once here: everything
/// below takes them as values.
struct Env {
    api_token: Option<String>,
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    cwd: PathBuf,
}

impl Env {
    fn read() -> anyhow::Result<Env> {
        let api_token = match std::env::var("MERIDIAN_API_TOKEN") {
            Ok(t) => Some(t),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("MERIDIAN_API_TOKEN is not valid UTF-8"),
        };
        Ok(Env {
            api_token,
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME"),
            home: std::env::var_os("HOME"),
            cwd: std::env::current_dir().context("finding the working directory")?,
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let env = Env::read()?;
    let config_path = contexts::config_path(
        cli.config_file.as_deref(),
        env.xdg_config_home.clone(),
        env.home.clone(),
    );
    if let Cmd::Config(ConfigCmd::ControlPlanes(cmd)) = cli.cmd {
        return control_planes(&config_path?, &env.cwd, cmd);
    }
    if let Cmd::Completion { shell } = cli.cmd {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "meridianctl", &mut std::io::stdout());
        return Ok(());
    }
    // Without a place for a context file (no HOME) there are no contexts.
    let config = match config_path {
        Ok(path) => Config::load(&path)?,
        Err(_) => Config::default(),
    };
    let client = connect(&cli, &env, &config)?;
    match cli.cmd {
        Cmd::Apply { files, dry_run } => apply(&client, &files, dry_run),
        Cmd::Version => version(&client),
        Cmd::Get {
            kind,
            name,
            mesh,
            output,
            audit_type,
            user,
            action,
            result,
            tags,
        } => {
            let filter = AuditFilter {
                kind: audit_type,
                mesh,
                user,
                action,
                result,
            };
            get(&client, &kind, name.as_deref(), filter, &tags, output)
        }
        Cmd::Delete { kind, name, mesh } => delete(&client, &kind, &name, &mesh),
        Cmd::Generate(Generate::UserToken {
            name,
            groups,
            valid_for,
        }) => issue_user_token(&client, &name, &groups, &valid_for).map(|t| println!("{t}")),
        Cmd::Revoke(Revoke::UserToken { id }) => client
            .expect_ok("POST", "/tokens/user/revoke", Some(&serde_json::json!({"id": id})))
            .map(|_| println!("revoked user token {id}")),
        Cmd::Inspect {
            what,
            tags,
            name,
            view,
            include_eds,
            mesh,
            output,
        } => match (what.as_str(), name) {
            ("dataplane", Some(name)) => inspect::inspect_dataplane(&client, &mesh, &name, &view, include_eds, output),
            ("dataplane", None) => Err(anyhow!("inspect dataplane needs a NAME")),
            _ => inspect::inspect(&client, &what, &mesh, &tags, output),
        },
        Cmd::Generate(Generate::ZoneToken { zone, valid_for }) => {
            issue_zone_token(&client, &zone, &valid_for).map(|token| println!("{token}"))
        }
        Cmd::Generate(Generate::ZoneJoin {
            zone,
            valid_for,
            output_dir,
        }) => zone_join(&client, &zone, &valid_for, &output_dir),
        Cmd::Revoke(Revoke::ZoneToken { id, token, token_file }) => {
            revoke_zone_token(&client, id, token, token_file.as_deref())
        }
        Cmd::Generate(Generate::DataplaneToken {
            mesh,
            name,
            tags,
            valid_for,
        }) => issue_dataplane_token(&client, &mesh, name.as_deref(), &tags, &valid_for).map(|t| println!("{t}")),
        Cmd::Generate(Generate::ZoneIngressToken { name, valid_for }) => {
            issue_ingress_token(&client, name.as_deref(), &valid_for).map(|t| println!("{t}"))
        }
        Cmd::Revoke(Revoke::DataplaneToken {
            mesh,
            id,
            token,
            token_file,
        }) => revoke_dataplane_token(&client, mesh, id, token, token_file.as_deref()),
        Cmd::Revoke(Revoke::ZoneIngressToken { id, token, token_file }) => {
            named_token(id, token, token_file.as_deref()).and_then(|(id, _)| {
                client
                    .expect_ok("POST", "/tokens/zone-ingress/revoke", Some(&serde_json::json!({"id": id})))
                    .map(|_| println!("revoked zone ingress token {id}"))
            })
        }
        Cmd::Rotate(Rotate::DataplaneTokenKey { mesh }) => client
            .expect_ok("POST", "/tokens/dataplane/rotate", Some(&serde_json::json!({"mesh": mesh})))
            .map(|(_, v)| {
                let key = v.get("key").and_then(Value::as_str).unwrap_or("?");
                println!("mesh {mesh:?} signs new dataplane tokens with {key}; retire an older key with: meridianctl delete dataplane-token-key KEY -m {mesh}");
            }),
        Cmd::Config(_) | Cmd::Completion { .. } => unreachable!("handled above"),
    }
}

/// The client for the control plane the flags, environment and current
/// context name, with its token and CA (see [`auth`] for the precedence).
fn connect(cli: &Cli, env: &Env, config: &Config) -> anyhow::Result<Client> {
    let target = auth::target(cli.api.as_deref(), config.current())?;
    let loopback = auth::api_host(&target.address).is_ok_and(|h| auth::is_loopback(&h));
    let token = auth::resolve_token(&auth::TokenInputs {
        flag_file: cli.api_token_file.as_deref(),
        env_token: env.api_token.as_deref(),
        context: target.context,
        loopback,
        cwd: &env.cwd,
    })?;
    let ca = match (&cli.api_ca_file, target.context.and_then(|c| c.ca_file.as_ref())) {
        (Some(file), _) => Some(client::load_ca(
            &env.cwd.join(file),
            "--ca-file (MERIDIAN_API_CA_FILE)",
        )?),
        (None, Some(file)) => {
            let what = format!(
                "the caFile of control plane {:?}",
                target.context.map_or("", |c| c.name.as_str())
            );
            Some(client::load_ca(file, &what)?)
        }
        (None, None) => None,
    };
    Ok(Client::new(&target.address, token, ca))
}

// ---- contexts -----------------------------------------------------------------

fn control_planes(config_path: &Path, cwd: &Path, cmd: ControlPlanesCmd) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    match cmd {
        ControlPlanesCmd::List => {
            print_table(&contexts::TABLE_HEADERS, &config.table());
            return Ok(());
        }
        ControlPlanesCmd::Add {
            name,
            address,
            token_file,
            ca_file,
            overwrite,
        } => {
            let absolute = |flag: &str, p: PathBuf| -> anyhow::Result<PathBuf> {
                std::path::absolute(cwd.join(&p)).with_context(|| format!("{flag} {}", p.display()))
            };
            let token_file = token_file.map(|p| absolute("--token-file", p)).transpose()?;
            let ca_file = ca_file.map(|p| absolute("--ca-file", p)).transpose()?;
            // Both are read on every use; say now if they cannot be, but keep
            // them: the control plane may not have written its token yet.
            if let Some(f) = &token_file {
                if let Err(e) = auth::read_token_file(f) {
                    eprintln!("warning: --token-file: {e:#}");
                }
            }
            if let Some(f) = &ca_file {
                if let Err(e) = client::load_ca(f, "--ca-file") {
                    eprintln!("warning: {e:#}");
                }
            }
            let became_current = config.add(
                ControlPlane {
                    name: name.clone(),
                    address: address.trim().trim_end_matches('/').to_string(),
                    token_file,
                    ca_file,
                },
                overwrite,
            )?;
            config.save(config_path)?;
            let current = if became_current { " (current)" } else { "" };
            println!("added control plane {name:?}{current} to {}", config_path.display());
        }
        ControlPlanesCmd::Use { name } => {
            config.use_context(&name)?;
            config.save(config_path)?;
            println!("now using control plane {name:?}");
        }
        ControlPlanesCmd::Remove { name } => {
            let was_current = config.remove(&name)?;
            config.save(config_path)?;
            println!("removed control plane {name:?}");
            if was_current {
                eprintln!("no control plane is current now; choose one: meridianctl config control-planes use NAME");
            }
        }
    }
    Ok(())
}

fn resolve_kind(name: &str) -> anyhow::Result<ResourceType> {
    // `zone-ingresses` as well as `zoneingresses`.
    let lower = name.to_ascii_lowercase().replace('-', "");
    ResourceType::ALL
        .into_iter()
        .find(|t| {
            t.plural() == lower
                || t.plural().strip_suffix('s') == Some(&lower)
                || t.name().to_ascii_lowercase() == lower
        })
        .ok_or_else(|| anyhow!("unknown resource type {name:?}"))
}

fn resource_path(key: &ResourceKey) -> String {
    match &key.mesh {
        _ if key.kind == ResourceType::Mesh => format!("/meshes/{}", key.name),
        Some(m) => format!("/meshes/{m}/{}/{}", key.kind.plural(), key.name),
        None => format!("/{}/{}", key.kind.plural(), key.name),
    }
}

fn collection_path(kind: ResourceType, mesh: &str) -> String {
    if kind == ResourceType::Mesh {
        "/meshes".into()
    } else if kind.is_mesh_scoped() {
        format!("/meshes/{mesh}/{}", kind.plural())
    } else {
        format!("/{}", kind.plural())
    }
}

// ---- apply ----------------------------------------------------------------

fn read_inputs(spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    if spec == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        return Ok(vec![("<stdin>".into(), s)]);
    }
    let path = PathBuf::from(spec);
    let mut files = Vec::new();
    if path.is_dir() {
        collect_documents(&path, &mut files)?;
    } else {
        files.push(path);
    }
    files
        .into_iter()
        .map(|p: PathBuf| {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

/// Every .yaml/.yml/.json file below `dir`, in path order (directories
/// recursively; symbolic links to directories are not followed).
fn collect_documents(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let path = e.path();
        let file_type = e.file_type().with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_dir() {
            collect_documents(&path, out)?;
        } else if matches!(path.extension().and_then(|x| x.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

fn format_of(name: &str) -> Format {
    if Path::new(name).extension().and_then(|e| e.to_str()) == Some("json") {
        Format::Json
    } else {
        Format::Yaml
    }
}

fn apply(client: &Client, specs: &[String], dry_run: bool) -> anyhow::Result<()> {
    // Validate everything first, so a bad document applies nothing.
    let mut docs = Vec::new();
    for spec in specs {
        for (name, text) in read_inputs(spec)? {
            let values = parse_values(&text, format_of(&name)).map_err(|e| anyhow!("{name}: {e}"))?;
            for (i, v) in values.into_iter().enumerate() {
                let doc = decode_value(v.clone()).map_err(|e| anyhow!("{name}: document {i}: {e}"))?;
                docs.push((doc.key, v));
            }
        }
    }
    // Meshes first, so policies in the same input can land in a new mesh.
    docs.sort_by_key(|(k, _)| k.kind != ResourceType::Mesh);
    for (key, body) in &docs {
        // An identical resource is not written again (no audit entry, no
        // new version for the zones).
        let (status, current) = client.call("GET", &resource_path(key), None)?;
        let exists = status == 200;
        if exists && same_content(&current, body) {
            println!("{} unchanged", describe_key(key));
            continue;
        }
        if dry_run {
            let verb = if exists { "would be updated" } else { "would be created" };
            println!("{} {verb} (dry run)", describe_key(key));
            continue;
        }
        let (status, reply) = client.expect_ok("PUT", &resource_path(key), Some(body))?;
        let verb = if status == 201 { "created" } else { "updated" };
        println!("{} {verb}", describe_key(key));
        for w in reply["warnings"].as_array().into_iter().flatten() {
            eprintln!(
                "warning: {} {}: {}",
                describe_key(key),
                w["field"].as_str().unwrap_or_default(),
                w["message"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Whether the stored resource `current` (API form) already holds what
/// `doc` (as applied: universal or Kubernetes form) says.
fn same_content(current: &Value, doc: &Value) -> bool {
    let Ok(want) = decode_value(doc.clone()) else {
        return false;
    };
    let Ok(have) = decode_value(strip_server_fields(current.clone())) else {
        return false;
    };
    want.key == have.key && want.labels == have.labels && want.spec == have.spec
}

/// The API form without what the server adds (times, version).
fn strip_server_fields(mut v: Value) -> Value {
    if let Value::Object(obj) = &mut v {
        for field in ["creationTime", "modificationTime", "version", "warnings"] {
            obj.remove(field);
        }
    }
    v
}

/// `meridianctl version`: this build, and the control plane's (from `GET /`).
fn version(client: &Client) -> anyhow::Result<()> {
    println!("meridianctl: {}", env!("CARGO_PKG_VERSION"));
    match client.call("GET", "/", None) {
        Ok((200, v)) => {
            let server = v.get("version").and_then(Value::as_str).unwrap_or("unknown");
            let mode = v.get("mode").and_then(Value::as_str).unwrap_or("unknown");
            println!("control plane ({mode}): {server}");
        }
        Ok((status, v)) => println!("control plane: answered {status}: {}", client::describe_error(&v)),
        Err(e) => println!("control plane: unreachable: {e:#}"),
    }
    Ok(())
}

fn describe_key(key: &ResourceKey) -> String {
    match &key.mesh {
        Some(m) => format!("{} {:?} in mesh {:?}", key.kind, key.name, m),
        None => format!("{} {:?}", key.kind, key.name),
    }
}

// ---- get / delete / inspect -------------------------------------------------

fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    filter: AuditFilter,
    tags: &[String],
    output: Output,
) -> anyhow::Result<()> {
    // The audit log is no resource type: it comes before type resolution.
    if kind.eq_ignore_ascii_case("audit") {
        if let Some(name) = name {
            bail!("get audit takes no NAME (got {name:?}): filter with --type, -m, --user, --action, --result");
        }
        return audit::get_audit(client, &filter, output);
    }
    let only_audit = [
        ("--type", &filter.kind),
        ("--user", &filter.user),
        ("--action", &filter.action),
        ("--result", &filter.result),
    ];
    if let Some((flag, _)) = only_audit.iter().find(|(_, v)| v.is_some()) {
        bail!("{flag} filters `get audit` only");
    }
    let mesh = filter.mesh.as_deref().unwrap_or("default");
    let kind = resolve_kind(kind)?;
    if !tags.is_empty() && (kind != ResourceType::Dataplane || name.is_some()) {
        bail!("--tag filters lists of dataplanes only");
    }
    match name {
        Some(name) => {
            let key = if kind.is_mesh_scoped() {
                ResourceKey::in_mesh(kind, mesh, name)
            } else {
                ResourceKey::global(kind, name)
            };
            let (_, item) = client.expect_ok("GET", &resource_path(&key), None)?;
            print_items(&[item], output, &default_columns(kind))
        }
        None => {
            let path = format!("{}{}", collection_path(kind, mesh), inspect::tag_query(tags)?);
            let items = list_all(client, &path)?;
            print_items(&items, output, &default_columns(kind))
        }
    }
}

/// Follows `next` links until the list is complete. `path` may carry a
/// query of its own.
fn list_all(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut offset = 0usize;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let (_, page) = client.expect_ok("GET", &format!("{path}{sep}offset={offset}&size=1000"), None)?;
        let batch = page.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        let n = batch.len();
        items.extend(batch);
        if page.get("next").is_none_or(Value::is_null) || n == 0 {
            return Ok(items);
        }
        offset += n;
    }
}

/// The table columns of `get`: mesh, name and age; with `-o wide` also the
/// labels, the last change and, for a policy, its top-level target (for a
/// dataplane, its tags).
fn default_columns(kind: ResourceType) -> Vec<Column> {
    use crate::output::{col, wide};
    let mut cols = Vec::new();
    if kind.is_mesh_scoped() {
        cols.push(col("MESH", "mesh"));
    }
    cols.extend([col("NAME", "name"), col("AGE", "creationTime")]);
    if kind.is_policy() {
        cols.push(wide("TARGETREF", "spec.targetRef"));
    }
    if kind == ResourceType::Dataplane {
        cols.push(wide("TAGS", "@tags"));
    }
    cols.extend([wide("LABELS", "labels"), wide("MODIFIED", "modificationTime")]);
    cols
}

fn delete(client: &Client, kind: &str, name: &str, mesh: &str) -> anyhow::Result<()> {
    let kind = resolve_kind(kind)?;
    let key = if kind.is_mesh_scoped() {
        ResourceKey::in_mesh(kind, mesh, name)
    } else {
        ResourceKey::global(kind, name)
    };
    client.expect_ok("DELETE", &resource_path(&key), None)?;
    println!("deleted {}", describe_key(&key));
    Ok(())
}

// ---- zone tokens and joining ------------------------------------------------

/// POSTs `body` to a token endpoint; the answer is the token as text.
fn post_for_token(client: &Client, path: &str, body: &Value) -> anyhow::Result<String> {
    let (_, answer) = client.expect_ok("POST", path, Some(body))?;
    let token = answer
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("{path} answered without a token: {answer}"))?;
    Ok(token.to_string())
}

/// `POST /tokens/zone`.
fn issue_zone_token(client: &Client, zone: &str, valid_for: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"zone": zone, "validFor": valid_for});
    let token = post_for_token(client, "/tokens/zone", &body)?;
    if let Some(id) = token_id(&token) {
        eprintln!("issued zone token {id} for zone {zone:?}, valid for {valid_for} (revoke: meridianctl revoke zone-token --id {id})");
    }
    Ok(token)
}

/// The id (`jti` claim) of a token, read without checking the signature.
fn token_id(token: &str) -> Option<String> {
    token_claims(token)?.get("jti")?.as_str().map(str::to_string)
}

fn zone_join(client: &Client, zone: &str, valid_for: &str, output_dir: &Path) -> anyhow::Result<()> {
    // Ask for the KDS information first: a zone control plane refuses it, and
    // then no token is issued for nothing.
    let (_, info) = client.expect_ok("GET", "/kds-info", None)?;
    let address = info
        .get("kdsAddress")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the global's /kds-info has no kdsAddress: {info}"))?;
    let ca = info
        .get("caCert")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the global's /kds-info has no caCert"))?;
    let token = issue_zone_token(client, zone, valid_for)?;

    std::fs::create_dir_all(output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
    let dir = std::fs::canonicalize(output_dir).with_context(|| format!("resolving {}", output_dir.display()))?;
    let token_file = dir.join(format!("zone-{zone}.token"));
    let ca_file = dir.join("global-ca.pem");
    write_private(&token_file, &format!("{token}\n"))?;
    std::fs::write(&ca_file, ca).with_context(|| format!("writing {}", ca_file.display()))?;
    eprintln!("wrote {} and {}", token_file.display(), ca_file.display());
    let mut line = format!(
        "meridian-zone run --zone {} --global-address {} --token-file {} --ca-file {}",
        shell_quote(zone),
        shell_quote(address),
        shell_quote(&token_file.display().to_string()),
        shell_quote(&ca_file.display().to_string()),
    );
    // On the global's own host the zone's default ports (API 5681, the
    // global's too; xDS 5678, another zone's) and data directory would
    // collide: give it free ones and a directory next to its token.
    if is_loopback_address(address) || is_loopback_address(client.base()) {
        let api = free_local_port(5682, &[]).ok_or_else(|| anyhow!("no free local port for the zone's API"))?;
        let xds = free_local_port(5678, &[api]).ok_or_else(|| anyhow!("no free local port for the zone's xDS"))?;
        let data = dir.join(format!("zone-{zone}-data"));
        line.push_str(&format!(
            " --api-addr 127.0.0.1:{api} --xds-addr 127.0.0.1:{xds} --data-dir {}",
            shell_quote(&data.display().to_string())
        ));
        eprintln!(
            "the global is on this host: the zone gets API 127.0.0.1:{api}, xDS 127.0.0.1:{xds} and {}",
            data.display()
        );
    }
    println!("{line}");
    Ok(())
}

/// Whether a URL or `host:port` names this host by a loopback address.
fn is_loopback_address(address: &str) -> bool {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The first port from `from` up that nothing listens on at 127.0.0.1 (and
/// that is not in `taken`).
fn free_local_port(from: u16, taken: &[u16]) -> Option<u16> {
    (from..from.saturating_add(200))
        .filter(|p| !taken.contains(p))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Quotes `s` for a POSIX shell when it holds anything but safe characters.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+[]".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A token's claims, read without checking the signature.
fn token_claims(token: &str) -> Option<Value> {
    use base64::Engine;
    let claims = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The id (and claims, when the token is given) of a token named by
/// `--id`, `--token` or `--token-file`.
fn named_token(
    id: Option<String>,
    token: Option<String>,
    token_file: Option<&Path>,
) -> anyhow::Result<(String, Option<Value>)> {
    let token = match (id, token, token_file) {
        (Some(id), _, _) => return Ok((id, None)),
        (None, Some(token), _) => token,
        (None, None, Some(file)) => {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        }
        (None, None, None) => bail!("name the token: --id, --token or --token-file"),
    };
    let claims = token_claims(&token).ok_or_else(|| anyhow!("not a token: its claims do not decode"))?;
    let id = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the token has no id (jti)"))?
        .to_string();
    Ok((id, Some(claims)))
}

/// `POST /tokens/dataplane`.
fn issue_dataplane_token(
    client: &Client,
    mesh: &str,
    name: Option<&str>,
    tags: &[String],
    valid_for: &str,
) -> anyhow::Result<String> {
    let mut tag_map = serde_json::Map::new();
    for t in tags {
        let (k, v) = t
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| anyhow!("--tag {t:?}: expected KEY=VALUE"))?;
        let values = tag_map.entry(k.to_string()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = values {
            a.push(Value::String(v.to_string()));
        }
    }
    let mut body = serde_json::json!({"mesh": mesh, "validFor": valid_for, "tags": tag_map});
    if let (Some(n), Value::Object(m)) = (name, &mut body) {
        m.insert("name".into(), Value::String(n.to_string()));
    }
    let token = post_for_token(client, "/tokens/dataplane", &body)?;
    if let Some(id) = token_id(&token) {
        eprintln!(
            "issued dataplane token {id} for mesh {mesh:?}, valid for {valid_for} (revoke: meridianctl revoke dataplane-token --mesh {mesh} --id {id})"
        );
    }
    Ok(token)
}

/// `POST /tokens/user`.
fn issue_user_token(client: &Client, name: &str, groups: &[String], valid_for: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"name": name, "groups": groups, "validFor": valid_for});
    let token = post_for_token(client, "/tokens/user", &body)?;
    if let Some(id) = token_id(&token) {
        eprintln!("issued user token {id} for user {name:?}, valid for {valid_for} (revoke: meridianctl revoke user-token --id {id})");
    }
    Ok(token)
}

/// `POST /tokens/zone-ingress`, on a zone.
fn issue_ingress_token(client: &Client, name: Option<&str>, valid_for: &str) -> anyhow::Result<String> {
    let mut body = serde_json::json!({"validFor": valid_for});
    if let (Some(n), Value::Object(m)) = (name, &mut body) {
        m.insert("name".into(), Value::String(n.to_string()));
    }
    let token = post_for_token(client, "/tokens/zone-ingress", &body)?;
    if let Some(id) = token_id(&token) {
        eprintln!("issued zone ingress token {id} (revoke: meridianctl revoke zone-ingress-token --id {id})");
    }
    Ok(token)
}

fn revoke_dataplane_token(
    client: &Client,
    mesh: Option<String>,
    id: Option<String>,
    token: Option<String>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let (id, claims) = named_token(id, token, token_file)?;
    let mesh = mesh
        .or_else(|| claims.as_ref()?.get("mesh")?.as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("--mesh is required with --id"))?;
    client.expect_ok(
        "POST",
        "/tokens/dataplane/revoke",
        Some(&serde_json::json!({"mesh": mesh, "id": id})),
    )?;
    println!("revoked dataplane token {id} of mesh {mesh:?}; zones close its streams");
    Ok(())
}

fn revoke_zone_token(
    client: &Client,
    id: Option<String>,
    token: Option<String>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let id = match (id, token, token_file) {
        (Some(id), _, _) => id,
        (None, Some(token), _) => token_id(&token).ok_or_else(|| anyhow!("--token is not a zone token"))?,
        (None, None, Some(file)) => {
            let token = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            token_id(&token).ok_or_else(|| anyhow!("{} does not hold a zone token", file.display()))?
        }
        (None, None, None) => bail!("name the token: --id, --token or --token-file"),
    };
    client.expect_ok("POST", "/tokens/zone/revoke", Some(&serde_json::json!({"id": id})))?;
    println!("revoked zone token {id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn loopback_addresses_are_this_host() {
        for a in [
            "grpcs://127.0.0.1:5685",
            "http://localhost:5681",
            "grpcs://[::1]:5685",
            "127.0.0.2:80",
        ] {
            assert!(is_loopback_address(a), "{a}");
        }
        for a in [
            "grpcs://global.example.com:5685",
            "http://10.0.0.1:5681",
            "grpcs://[2001:db8::1]:5685",
        ] {
            assert!(!is_loopback_address(a), "{a}");
        }
    }

    #[test]
    fn a_free_port_skips_listening_and_taken_ones() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let got = free_local_port(port, &[port.saturating_add(1)]).unwrap();
        assert!(got > port.saturating_add(1), "{got} after {port}");
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("meridianctl").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_api_token_file_is_not_the_token_revoke_names() {
        let cli = parse(&[
            "--token-file",
            "admin",
            "revoke",
            "zone-token",
            "--token-file",
            "zone.token",
        ]);
        assert_eq!(cli.api_token_file, Some(PathBuf::from("admin")));
        match cli.cmd {
            Cmd::Revoke(Revoke::ZoneToken { token_file, .. }) => assert_eq!(token_file, Some("zone.token".into())),
            _ => panic!("not revoke zone-token"),
        }
        let cli = parse(&["revoke", "dataplane-token", "--token-file", "dp.token"]);
        assert_eq!(cli.api_token_file, None);
    }

    #[test]
    fn get_audit_takes_its_filters_and_an_optional_mesh() {
        let cli = parse(&[
            "get",
            "audit",
            "--type",
            "MeshTimeout",
            "--user",
            "alice",
            "--result",
            "denied",
        ]);
        match cli.cmd {
            Cmd::Get {
                kind,
                mesh,
                audit_type,
                user,
                result,
                ..
            } => {
                assert_eq!(kind, "audit");
                assert_eq!(mesh, None);
                assert_eq!(audit_type.as_deref(), Some("MeshTimeout"));
                assert_eq!(user.as_deref(), Some("alice"));
                assert_eq!(result.as_deref(), Some("denied"));
            }
            _ => panic!("not get"),
        }
        assert!(Cli::try_parse_from(["meridianctl", "get", "audit", "--result", "maybe"]).is_err());
    }

    #[test]
    fn user_tokens_take_repeated_groups_and_a_default_validity() {
        let cli = parse(&[
            "generate",
            "user-token",
            "--name",
            "alice",
            "--group",
            "team-a",
            "--group",
            "ops",
        ]);
        match cli.cmd {
            Cmd::Generate(Generate::UserToken {
                name,
                groups,
                valid_for,
            }) => {
                assert_eq!(name, "alice");
                assert_eq!(groups, ["team-a", "ops"]);
                assert_eq!(valid_for, "24h");
            }
            _ => panic!("not generate user-token"),
        }
    }
}
