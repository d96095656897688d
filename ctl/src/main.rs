//! `meridianctl`: apply, get, delete and inspect resources through the
//! HTTP API of a global or zone control plane, and issue zone tokens and
//! join commands on the global (DESIGN §5).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use meridian_core::decode::{decode_value, parse_values, Format};
use meridian_core::{ResourceKey, ResourceType};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "meridianctl", version, about = "Manage Meridian meshes and policies")]
struct Cli {
    /// Address of the control plane's HTTP API.
    #[arg(long, global = true, env = "MERIDIAN_API", default_value = "http://127.0.0.1:5681")]
    api: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update resources from YAML/JSON files.
    Apply {
        /// A file, a directory (every .yaml/.yml/.json in it) or `-` for stdin.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<String>,
    },
    /// Show resources: `get meshes`, `get zones`, `get meshtimeouts -m default`, `get mesh default`.
    Get {
        /// A type: plural (`meshtimeouts`) or singular (`meshtimeout`, `MeshTimeout`).
        kind: String,
        /// Show only this resource.
        name: Option<String>,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// Overviews with live state: `inspect zones`, `inspect dataplanes -m default`;
    /// one dataplane's generated xDS or matched policies (zone API):
    /// `inspect dataplane NAME --type xds|policies -m default`.
    Inspect {
        #[arg(value_parser = ["zones", "dataplanes", "dataplane"])]
        what: String,
        /// The dataplane, for `inspect dataplane`.
        name: Option<String>,
        /// What to show of one dataplane: its xDS resources or its policies.
        #[arg(long = "type", value_parser = ["xds", "policies"], default_value = "xds")]
        view: String,
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Issue credentials: `generate zone-token`, `zone-join` and
    /// `dataplane-token` on the global (dataplane tokens also on a standalone
    /// zone), `zone-ingress-token` on a zone.
    #[command(subcommand)]
    Generate(Generate),
    /// Revoke credentials: `revoke zone-token`, `revoke dataplane-token`,
    /// `revoke zone-ingress-token`.
    #[command(subcommand)]
    Revoke(Revoke),
    /// Rotate signing keys: `rotate dataplane-token-key --mesh M`.
    #[command(subcommand)]
    Rotate(Rotate),
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
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.api);
    let result = match cli.cmd {
        Cmd::Apply { files } => apply(&client, &files),
        Cmd::Get {
            kind,
            name,
            mesh,
            output,
        } => get(&client, &kind, name.as_deref(), &mesh, output),
        Cmd::Delete { kind, name, mesh } => delete(&client, &kind, &name, &mesh),
        Cmd::Inspect {
            what,
            name,
            view,
            mesh,
            output,
        } => match (what.as_str(), name) {
            ("dataplane", Some(name)) => inspect_dataplane(&client, &mesh, &name, &view, output),
            ("dataplane", None) => Err(anyhow!("inspect dataplane needs a NAME")),
            _ => inspect(&client, &what, &mesh, output),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A thin client over the HTTP API.
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder().http_status_as_error(false).build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("PUT", Some(b)) => self.agent.put(&url).send_json(b),
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            _ => return Err(anyhow!("unsupported request {method} {path}")),
        };
        let mut resp = resp.with_context(|| format!("cannot reach the control plane at {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Calls and turns an error status into an error that shows the causes.
    fn expect_ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let (status, value) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            Ok((status, value))
        } else {
            Err(anyhow!("{method} {path}: {status}: {}", describe_error(&value)))
        }
    }
}

fn describe_error(v: &Value) -> String {
    let mut out = v
        .get("details")
        .or_else(|| v.get("title"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    if let Some(causes) = v.get("causes").and_then(Value::as_array) {
        for c in causes {
            let field = c.get("field").and_then(Value::as_str).unwrap_or("");
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            out.push_str(&format!("\n  {field}: {msg}"));
        }
    }
    out
}

fn resolve_kind(name: &str) -> anyhow::Result<ResourceType> {
    let lower = name.to_ascii_lowercase();
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
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
            .with_context(|| format!("reading directory {spec}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        entries.sort();
        files.extend(entries);
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

fn format_of(name: &str) -> Format {
    if Path::new(name).extension().and_then(|e| e.to_str()) == Some("json") {
        Format::Json
    } else {
        Format::Yaml
    }
}

fn apply(client: &Client, specs: &[String]) -> anyhow::Result<()> {
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
        let (status, _) = client.expect_ok("PUT", &resource_path(key), Some(body))?;
        let verb = if status == 201 { "created" } else { "updated" };
        println!("{} {verb}", describe_key(key));
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

fn get(client: &Client, kind: &str, name: Option<&str>, mesh: &str, output: Output) -> anyhow::Result<()> {
    let kind = resolve_kind(kind)?;
    match name {
        Some(name) => {
            let key = if kind.is_mesh_scoped() {
                ResourceKey::in_mesh(kind, mesh, name)
            } else {
                ResourceKey::global(kind, name)
            };
            let (_, item) = client.expect_ok("GET", &resource_path(&key), None)?;
            print_items(kind, &[item], output, None)
        }
        None => {
            let items = list_all(client, &collection_path(kind, mesh))?;
            print_items(kind, &items, output, None)
        }
    }
}

/// Follows `next` links until the list is complete.
fn list_all(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut offset = 0usize;
    loop {
        let (_, page) = client.expect_ok("GET", &format!("{path}?offset={offset}&size=1000"), None)?;
        let batch = page.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        let n = batch.len();
        items.extend(batch);
        if page.get("next").is_none_or(Value::is_null) || n == 0 {
            return Ok(items);
        }
        offset += n;
    }
}

fn print_items(
    kind: ResourceType,
    items: &[Value],
    output: Output,
    columns: Option<&[(&str, &str)]>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let v = if items.len() == 1 {
                items[0].clone()
            } else {
                Value::Array(items.to_vec())
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml_ng::to_string(item)?);
            }
        }
        Output::Table => {
            let default_cols: Vec<(&str, &str)> = if kind.is_mesh_scoped() {
                vec![("MESH", "mesh"), ("NAME", "name"), ("AGE", "creationTime")]
            } else {
                vec![("NAME", "name"), ("AGE", "creationTime")]
            };
            let cols = columns.unwrap_or(&default_cols);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|it| cols.iter().map(|(_, ptr)| cell(it, ptr)).collect())
                .collect();
            print_table(&cols.iter().map(|(h, _)| *h).collect::<Vec<_>>(), &rows);
        }
    }
    Ok(())
}

fn cell(item: &Value, field: &str) -> String {
    let v = item
        .pointer(&format!("/{}", field.replace('.', "/")))
        .unwrap_or(&Value::Null);
    match v {
        Value::String(s) if field.ends_with("creationTime") => age(s),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn age(rfc3339: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:width$}", c, width = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
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

fn inspect(client: &Client, what: &str, mesh: &str, output: Output) -> anyhow::Result<()> {
    match what {
        "zones" => {
            let items = list_all(client, "/zones+insights")?;
            print_items(
                ResourceType::Zone,
                &items,
                output,
                Some(&[("NAME", "name"), ("ONLINE", "online"), ("AGE", "creationTime")]),
            )
        }
        "dataplanes" => {
            let items = list_all(client, &format!("/meshes/{mesh}/dataplanes+insights"))?;
            print_items(
                ResourceType::Dataplane,
                &items,
                output,
                Some(&[
                    ("MESH", "mesh"),
                    ("NAME", "name"),
                    ("ONLINE", "online"),
                    ("ADDRESS", "dataplane.networking.address"),
                    ("CERT BACKEND", "dataplaneInsight.mTLS.issuedBackend"),
                    ("CERT EXPIRES", "dataplaneInsight.mTLS.certificateExpirationTime"),
                    ("AGE", "creationTime"),
                ]),
            )
        }
        other => bail!("cannot inspect {other:?}"),
    }
}

/// One dataplane's generated configuration or matched policies, from the
/// zone that serves it (YAML unless JSON is asked for: neither is a table).
fn inspect_dataplane(client: &Client, mesh: &str, name: &str, view: &str, output: Output) -> anyhow::Result<()> {
    let (_, body) = client.expect_ok("GET", &format!("/meshes/{mesh}/dataplanes/{name}/{view}"), None)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        Output::Yaml | Output::Table => print!("{}", serde_yaml_ng::to_string(&body)?),
    }
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
    println!(
        "meridian-zone run --zone {} --global-address {} --token-file {} --ca-file {}",
        shell_quote(zone),
        shell_quote(address),
        shell_quote(&token_file.display().to_string()),
        shell_quote(&ca_file.display().to_string()),
    );
    Ok(())
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
