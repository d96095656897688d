//! MeshProxyPatch: a sidecar's own changes to its generated configuration,
//! applied last, in the order of `appendModifications` (the policies that
//! select the proxy, least specific first, each one's list in order).
//!
//! - `cluster` / `listener`: `Add` (the `value` is a whole resource; one of
//!   the same name is replaced), `Remove`, `Patch` (the `value` is merged
//!   into each matching resource as protobuf merges messages: scalars
//!   replaced, messages merged, lists appended; then the `jsonPatches`,
//!   RFC 6902, apply to its proto3 JSON).
//! - `networkFilter` / `httpFilter`: in every filter chain (every HTTP
//!   connection manager) of the matching listeners: `AddFirst`, `AddLast`,
//!   `AddBefore`/`AddAfter` the filter the match names, `Remove`, `Patch`
//!   (the `value`'s typed config merged into the filter's, then the
//!   `jsonPatches` on the typed config's JSON).
//! - `virtualHost`: in route configurations (sent by RDS, or inline in an
//!   inbound's connection manager): `Add`, `Remove`, `Patch`.
//!
//! Matches: `name`, `origin` (`inbound`, `outbound`, `transparent`,
//! `prometheus`, `observability`: what generated the resource, from its
//! name), listener `tags` (an inbound's tags), a filter's `listenerName`,
//! `listenerTags` and `origin`, a virtual host's `routeConfigurationName`.
//!
//! Values are the YAML (or JSON) of the Envoy message in proto3 JSON,
//! camelCase or snake_case, `Any`s with `@type`. A value that is not such a
//! message, a patch whose path does not exist, or a result that breaks the
//! configuration's invariants ([`super::invariants`]) is an error: the
//! proxy then gets its configuration without any patch, and inspection
//! shows why.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::Any;
use meridian_core::dataplane::DataplaneNetworking;
use meridian_core::policy::meshproxypatch::{
    Conf, FilterMatch, FilterMod, FilterOp, JsonPatch, JsonPatchOp, Modification, ResourceOp,
};
use prost::{Message, Name};
use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::any;
use crate::resources::{ResourceSet, CLUSTER, LISTENER, ROUTE};

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Why a proxy's patches were not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    /// The modification's position in the merged `appendModifications`;
    /// `None` when the configuration they produce together is invalid.
    pub index: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "appendModifications[{i}]: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for PatchError {}

fn pool() -> Result<&'static prost_reflect::DescriptorPool, String> {
    crate::config_dump::descriptors().map_err(|e| e.to_string())
}

/// `bytes` of message `full_name` as proto3 JSON (camelCase).
fn to_json(full_name: &str, bytes: &[u8]) -> Result<Value, String> {
    let desc = pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no descriptor of {full_name}"))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    msg.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| e.to_string())
}

/// The JSON of a message `full_name`, encoded; an unknown field or a wrong
/// type is an error naming it.
fn from_json(full_name: &str, json: &Value) -> Result<Vec<u8>, String> {
    let desc = pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no descriptor of {full_name}"))?;
    let msg = DynamicMessage::deserialize_with_options(desc, json.clone(), &DeserializeOptions::new())
        .map_err(|e| format!("not a valid {full_name}: {e}"))?;
    Ok(msg.encode_to_vec())
}

/// A modification's `value`: YAML (JSON is YAML) of an object.
fn value_json(value: Option<&String>) -> Result<Value, String> {
    let text = value.ok_or("\"value\" is required for this operation")?;
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("value is not YAML: {e}"))?;
    if !v.is_object() {
        return Err("value must be an object".into());
    }
    Ok(v)
}

/// Merges `patch` (JSON of message `full_name`) into `bytes` as protobuf
/// merges: the encodings concatenated.
fn merge(full_name: &str, bytes: &[u8], patch: &Value) -> Result<Vec<u8>, String> {
    let mut out = bytes.to_vec();
    out.extend(from_json(full_name, patch)?);
    // Re-encode, so that the result is canonical (and checked).
    let desc = pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no descriptor of {full_name}"))?;
    let msg = DynamicMessage::decode(desc, out.as_slice()).map_err(|e| e.to_string())?;
    Ok(msg.encode_to_vec())
}

/// `patches` applied to `bytes` of `full_name` through its JSON.
fn json_patch(full_name: &str, bytes: &[u8], patches: &[JsonPatch]) -> Result<Vec<u8>, String> {
    let mut doc = to_json(full_name, bytes)?;
    for (i, p) in patches.iter().enumerate() {
        apply_json_patch(&mut doc, p).map_err(|e| format!("jsonPatches[{i}] ({:?} {}): {e}", p.op, p.path))?;
    }
    from_json(full_name, &doc)
}

/// What a write of `kind` with `spec` gets refused for beyond its own
/// validation: each MeshProxyPatch `value` must parse as the Envoy message
/// it stands for (every `@type` known), and each JSON patch path must be a
/// JSON pointer. Violations as (field below `spec`, message). The same
/// parsing happens at generation; checked at the write, a mistake is
/// refused with its field instead of leaving proxies unpatched.
pub fn check_spec(kind: meridian_core::ResourceType, spec: &Value) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter as Hf;
    if kind != meridian_core::ResourceType::MeshProxyPatch {
        return Vec::new();
    }
    let Ok(policy) = serde_json::from_value::<meridian_core::policy::meshproxypatch::MeshProxyPatch>(spec.clone())
    else {
        // Not decodable: its own validation refuses it.
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut check = |at: String,
                     value: Option<&String>,
                     patches: Option<&Vec<JsonPatch>>,
                     parse: fn(Option<&String>) -> Result<(), String>| {
        if value.is_some() {
            if let Err(e) = parse(value) {
                out.push((format!("{at}.value"), e));
            }
        }
        for (j, p) in patches.into_iter().flatten().enumerate() {
            if let Err(e) = pointer(&p.path) {
                out.push((format!("{at}.jsonPatches[{j}].path"), e));
            }
            if let Some(from) = &p.from {
                if let Err(e) = pointer(from) {
                    out.push((format!("{at}.jsonPatches[{j}].from"), e));
                }
            }
        }
    };
    fn as_msg<M: Message + Name + Default>(value: Option<&String>) -> Result<(), String> {
        parsed::<M>(value)
            .map(|_| ())
            .map_err(|e| format!("is not a valid {}: {e}", M::full_name()))
    }
    for (i, m) in policy
        .default
        .iter()
        .flat_map(|d| d.append_modifications.iter())
        .enumerate()
    {
        type Parse = fn(Option<&String>) -> Result<(), String>;
        // A modification's value and JSON patches.
        type Parts<'a> = Option<(Option<&'a String>, Option<&'a Vec<JsonPatch>>)>;
        let kinds: [(&str, Parts<'_>, Parse); 5] = [
            (
                "cluster",
                m.cluster.as_ref().map(|c| (c.value.as_ref(), c.json_patches.as_ref())),
                as_msg::<Cluster>,
            ),
            (
                "listener",
                m.listener.as_ref().map(|l| (l.value.as_ref(), l.json_patches.as_ref())),
                as_msg::<Listener>,
            ),
            (
                "networkFilter",
                m.network_filter
                    .as_ref()
                    .map(|f| (f.value.as_ref(), f.json_patches.as_ref())),
                as_msg::<Filter>,
            ),
            (
                "httpFilter",
                m.http_filter
                    .as_ref()
                    .map(|f| (f.value.as_ref(), f.json_patches.as_ref())),
                as_msg::<Hf>,
            ),
            (
                "virtualHost",
                m.virtual_host
                    .as_ref()
                    .map(|v| (v.value.as_ref(), v.json_patches.as_ref())),
                as_msg::<VirtualHost>,
            ),
        ];
        for (kind, set, parse) in kinds {
            if let Some((value, patches)) = set {
                check(
                    format!("default.appendModifications[{i}].{kind}"),
                    value,
                    patches,
                    parse,
                );
            }
        }
    }
    out
}

/// The reference tokens of a JSON pointer.
fn pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or("a path starts with /")?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for t in tokens {
        at = match at {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("no {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an index"))?;
                a.get_mut(i).ok_or_else(|| format!("no index {i}"))?
            }
            _ => return Err(format!("{t:?} is inside a value that is not an object or a list")),
        };
    }
    Ok(at)
}

fn remove_at(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (last, init) = tokens.split_last().ok_or("cannot remove the whole document")?;
    match parent(doc, init)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("no {last:?} to remove")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("no index {i} to remove"))
            }
        }
        _ => Err("the parent is not an object or a list".into()),
    }
}

fn add_at(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, init)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("{last:?} is not an index"))?
            };
            if i > a.len() {
                return Err(format!("index {i} is past the end"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err("the parent is not an object or a list".into()),
    }
}

/// One RFC 6902 operation on `doc`.
pub fn apply_json_patch(doc: &mut Value, p: &JsonPatch) -> Result<(), String> {
    let path = pointer(&p.path)?;
    let value = || p.value.clone().ok_or_else(|| "\"value\" is required".to_string());
    let from = || pointer(p.from.as_deref().ok_or("\"from\" is required")?);
    match p.op {
        JsonPatchOp::Add => add_at(doc, &path, value()?),
        JsonPatchOp::Remove => remove_at(doc, &path).map(drop),
        JsonPatchOp::Replace => {
            let target = parent(doc, &path)?;
            *target = value()?;
            Ok(())
        }
        JsonPatchOp::Move => {
            let v = remove_at(doc, &from()?)?;
            add_at(doc, &path, v)
        }
        JsonPatchOp::Copy => {
            let v = parent(doc, &from()?)?.clone();
            add_at(doc, &path, v)
        }
    }
}

/// What generated a resource, by its name (see the module's docs).
pub fn origin(type_url: &str, name: &str) -> &'static str {
    if name.starts_with("inbound:passthrough")
        || name.starts_with("outbound:passthrough")
        || name == "outbound:blackhole"
    {
        "transparent"
    } else if name.starts_with("_meridian:metrics:") || name == super::observability::METRICS_AGENT_CLUSTER {
        "prometheus"
    } else if name.starts_with("_meridian:") {
        "observability"
    } else if name.starts_with("inbound:") || (type_url == CLUSTER && name.starts_with("localhost:")) {
        "inbound"
    } else {
        "outbound"
    }
}

/// The tags of each inbound listener, by its name.
fn listener_tags(net: &DataplaneNetworking) -> BTreeMap<String, BTreeMap<String, String>> {
    net.inbound
        .iter()
        .map(|i| {
            let address = i.address.as_deref().unwrap_or(&net.address);
            (format!("inbound:{address}:{}", i.port), i.tags.clone())
        })
        .collect()
}

fn tags_match(want: Option<&BTreeMap<String, String>>, have: Option<&BTreeMap<String, String>>) -> bool {
    match want {
        None => true,
        Some(w) => have.is_some_and(|h| w.iter().all(|(k, v)| h.get(k) == Some(v))),
    }
}

fn eq(want: Option<&String>, have: &str) -> bool {
    want.is_none_or(|w| w == have)
}

/// The working copy of a set's listeners, clusters and routes, decoded.
struct Work {
    listeners: BTreeMap<String, Listener>,
    clusters: BTreeMap<String, Cluster>,
    routes: BTreeMap<String, RouteConfiguration>,
    tags: BTreeMap<String, BTreeMap<String, String>>,
}

fn decode_all<M: Message + Default>(set: &ResourceSet, type_url: &str) -> Result<BTreeMap<String, M>, String> {
    set.of_type(type_url)
        .map(|r| {
            M::decode(r.body.value.as_slice())
                .map(|m| (r.name.clone(), m))
                .map_err(|e| format!("{type_url} {}: {e}", r.name))
        })
        .collect()
}

fn decode_as<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| e.to_string())
}

/// A typed message patched by `value` (merged) and `patches`.
fn patched<M: Message + Name + Default>(m: &M, value: Option<&String>, patches: &[JsonPatch]) -> Result<M, String> {
    let full = M::full_name();
    let mut bytes = m.encode_to_vec();
    if value.is_some() {
        bytes = merge(&full, &bytes, &value_json(value)?)?;
    }
    if !patches.is_empty() {
        bytes = json_patch(&full, &bytes, patches)?;
    }
    decode_as(&bytes)
}

/// A whole message from a `value`.
fn parsed<M: Message + Name + Default>(value: Option<&String>) -> Result<M, String> {
    decode_as(&from_json(&M::full_name(), &value_json(value)?)?)
}

/// A filter's typed config patched: the `value` (a filter whose typed
/// config has the same type) merged into it, then `patches` on its JSON.
fn patched_config(config: &Any, value: Option<&String>, patches: &[JsonPatch]) -> Result<Any, String> {
    let full = config.type_url.rsplit('/').next().unwrap_or_default().to_string();
    let mut bytes = config.value.clone();
    if value.is_some() {
        let v = value_json(value)?;
        let typed = v
            .get("typedConfig")
            .or_else(|| v.get("typed_config"))
            .ok_or("value has no typedConfig to merge")?;
        let at_type = typed.get("@type").and_then(Value::as_str).unwrap_or_default();
        if at_type != config.type_url {
            return Err(format!(
                "value's typedConfig is {at_type:?}, the filter's {:?}",
                config.type_url
            ));
        }
        let mut fields = typed.clone();
        if let Some(o) = fields.as_object_mut() {
            o.remove("@type");
        }
        bytes = merge(&full, &bytes, &fields)?;
    }
    if !patches.is_empty() {
        bytes = json_patch(&full, &bytes, patches)?;
    }
    Ok(Any {
        type_url: config.type_url.clone(),
        value: bytes,
    })
}

/// A network or HTTP filter: a name and a typed config.
trait TypedFilter: Clone {
    const WHAT: &'static str;
    fn name(&self) -> &str;
    fn typed_config(&self) -> Option<&Any>;
    fn with_config(&self, config: Any) -> Self;
}

/// The two filter messages differ only in their config's enum.
macro_rules! typed_filter {
    ($($ty:ty, $config:ident, $what:literal);* $(;)?) => {
        $(impl TypedFilter for $ty {
            const WHAT: &'static str = $what;
            fn name(&self) -> &str {
                &self.name
            }
            fn typed_config(&self) -> Option<&Any> {
                match &self.config_type {
                    Some($config::ConfigType::TypedConfig(c)) => Some(c),
                    _ => None,
                }
            }
            fn with_config(&self, config: Any) -> Self {
                Self {
                    config_type: Some($config::ConfigType::TypedConfig(config)),
                    ..self.clone()
                }
            }
        })*
    };
}

typed_filter!(Filter, filter, "filter"; HttpFilter, http_filter, "HTTP filter");

/// Applies a filter modification to a list of filters (of a chain, or of a
/// connection manager).
fn modify_filters<T: TypedFilter + Message + Name + Default>(list: &mut Vec<T>, f: &FilterMod) -> Result<(), String> {
    let patches = f.json_patches.as_deref().unwrap_or_default();
    apply_to_list(
        list,
        T::name,
        f.operation,
        f.match_.as_ref().and_then(|m| m.name.as_ref()),
        || parsed::<T>(f.value.as_ref()),
        |x: &T| {
            let config = x
                .typed_config()
                .ok_or_else(|| format!("{} {} has no typed config to patch", T::WHAT, x.name()))?;
            Ok(x.with_config(patched_config(config, f.value.as_ref(), patches)?))
        },
    )
}

/// Applies `op` to a list of named items: the filters of a chain or of a
/// connection manager.
fn apply_to_list<T: Clone>(
    list: &mut Vec<T>,
    name_of: impl Fn(&T) -> &str,
    op: FilterOp,
    matched: Option<&String>,
    new_item: impl Fn() -> Result<T, String>,
    patch: impl Fn(&T) -> Result<T, String>,
) -> Result<(), String> {
    let position = |list: &Vec<T>| matched.and_then(|m| list.iter().position(|f| name_of(f) == m));
    match op {
        FilterOp::AddFirst => list.insert(0, new_item()?),
        FilterOp::AddLast => list.push(new_item()?),
        FilterOp::AddBefore | FilterOp::AddAfter => {
            if matched.is_none() {
                return Err("AddBefore and AddAfter need match.name".into());
            }
            if let Some(i) = position(list) {
                let at = if op == FilterOp::AddBefore { i } else { i + 1 };
                list.insert(at, new_item()?);
            }
        }
        FilterOp::Remove => list.retain(|f| matched.is_some_and(|m| name_of(f) != m)),
        FilterOp::Patch => {
            for f in list.iter_mut() {
                if matched.is_none_or(|m| name_of(f) == m) {
                    *f = patch(f)?;
                }
            }
        }
    }
    Ok(())
}

impl Work {
    fn listener_selected(&self, name: &str, m: Option<&FilterMatch>) -> bool {
        let Some(m) = m else {
            return true;
        };
        eq(m.listener_name.as_ref(), name)
            && eq(m.origin.as_ref(), origin(LISTENER, name))
            && tags_match(m.listener_tags.as_ref(), self.tags.get(name))
    }

    fn network_filter(&mut self, f: &FilterMod) -> Result<(), String> {
        let m = f.match_.as_ref();
        let names: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| self.listener_selected(n, m))
            .cloned()
            .collect();
        for name in names {
            if let Some(l) = self.listeners.get_mut(&name) {
                for chain in &mut l.filter_chains {
                    modify_filters(&mut chain.filters, f)?;
                }
            }
        }
        Ok(())
    }

    /// Runs `change` on every HTTP connection manager of the listeners `m`
    /// selects, re-encoding each.
    fn each_hcm(
        &mut self,
        m: Option<&FilterMatch>,
        mut change: impl FnMut(&mut HttpConnectionManager) -> Result<(), String>,
    ) -> Result<(), String> {
        let names: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| self.listener_selected(n, m))
            .cloned()
            .collect();
        for name in names {
            let Some(l) = self.listeners.get_mut(&name) else {
                continue;
            };
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    let Some(filter::ConfigType::TypedConfig(config)) = &mut f.config_type else {
                        continue;
                    };
                    if config.type_url != HCM_TYPE {
                        continue;
                    }
                    let mut hcm: HttpConnectionManager = decode_as(&config.value)?;
                    change(&mut hcm)?;
                    *config = any(&hcm);
                }
            }
        }
        Ok(())
    }

    fn http_filter(&mut self, f: &FilterMod) -> Result<(), String> {
        self.each_hcm(f.match_.as_ref(), |hcm| modify_filters(&mut hcm.http_filters, f))
    }

    fn virtual_host(&mut self, v: &meridian_core::policy::meshproxypatch::VirtualHostMod) -> Result<(), String> {
        let m = &v.match_;
        let patches = v.json_patches.as_deref().unwrap_or_default();
        let change = |rc: &mut RouteConfiguration| -> Result<(), String> {
            if !eq(m.route_configuration_name.as_ref(), &rc.name) || !eq(m.origin.as_ref(), origin(ROUTE, &rc.name)) {
                return Ok(());
            }
            match v.operation {
                ResourceOp::Add => rc.virtual_hosts.push(parsed::<VirtualHost>(v.value.as_ref())?),
                ResourceOp::Remove => rc.virtual_hosts.retain(|h| !eq(m.name.as_ref(), &h.name)),
                ResourceOp::Patch => {
                    for h in rc.virtual_hosts.iter_mut() {
                        if eq(m.name.as_ref(), &h.name) {
                            *h = patched(h, v.value.as_ref(), patches)?;
                        }
                    }
                }
            }
            Ok(())
        };
        for rc in self.routes.values_mut() {
            change(rc)?;
        }
        // Route configurations inline in connection managers (inbounds).
        self.each_hcm(None, |hcm| match &mut hcm.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => change(rc),
            _ => Ok(()),
        })
    }

    fn modify(&mut self, m: &Modification) -> Result<(), String> {
        if let Some(c) = &m.cluster {
            let mm = c.match_.as_ref();
            let selected = |name: &str| {
                mm.is_none_or(|mm| eq(mm.name.as_ref(), name) && eq(mm.origin.as_ref(), origin(CLUSTER, name)))
            };
            match c.operation {
                ResourceOp::Add => {
                    let cluster: Cluster = parsed(c.value.as_ref())?;
                    if cluster.name.is_empty() {
                        return Err("the added cluster has no name".into());
                    }
                    self.clusters.insert(cluster.name.clone(), cluster);
                }
                ResourceOp::Remove => self.clusters.retain(|n, _| !selected(n)),
                ResourceOp::Patch => {
                    let patches = c.json_patches.as_deref().unwrap_or_default();
                    for (name, cluster) in self.clusters.iter_mut() {
                        if selected(name) {
                            *cluster = patched(cluster, c.value.as_ref(), patches)?;
                        }
                    }
                }
            }
        }
        if let Some(l) = &m.listener {
            let lm = l.match_.as_ref();
            let tags = &self.tags;
            let selected = |name: &str| {
                lm.is_none_or(|lm| {
                    eq(lm.name.as_ref(), name)
                        && eq(lm.origin.as_ref(), origin(LISTENER, name))
                        && tags_match(lm.tags.as_ref(), tags.get(name))
                })
            };
            match l.operation {
                ResourceOp::Add => {
                    let listener: Listener = parsed(l.value.as_ref())?;
                    if listener.name.is_empty() {
                        return Err("the added listener has no name".into());
                    }
                    self.listeners.insert(listener.name.clone(), listener);
                }
                ResourceOp::Remove => {
                    let gone: Vec<String> = self.listeners.keys().filter(|n| selected(n)).cloned().collect();
                    for n in gone {
                        self.listeners.remove(&n);
                    }
                }
                ResourceOp::Patch => {
                    let patches = l.json_patches.as_deref().unwrap_or_default();
                    let names: Vec<String> = self.listeners.keys().filter(|n| selected(n)).cloned().collect();
                    for n in names {
                        if let Some(listener) = self.listeners.get_mut(&n) {
                            *listener = patched(listener, l.value.as_ref(), patches)?;
                        }
                    }
                }
            }
        }
        if let Some(f) = &m.network_filter {
            self.network_filter(f)?;
        }
        if let Some(f) = &m.http_filter {
            self.http_filter(f)?;
        }
        if let Some(v) = &m.virtual_host {
            self.virtual_host(v)?;
        }
        Ok(())
    }
}

/// Each resource of `m`, encoded, by name.
fn encoded<M: Message>(m: &BTreeMap<String, M>) -> BTreeMap<String, Vec<u8>> {
    m.iter().map(|(n, r)| (n.clone(), r.encode_to_vec())).collect()
}

/// `set` with the modifications of `conf` applied, or why they cannot be.
pub fn apply(set: &ResourceSet, conf: &Conf, net: &DataplaneNetworking) -> Result<ResourceSet, PatchError> {
    let whole = |message: String| PatchError { index: None, message };
    let mut work = Work {
        listeners: decode_all(set, LISTENER).map_err(whole)?,
        clusters: decode_all(set, CLUSTER).map_err(whole)?,
        routes: decode_all(set, ROUTE).map_err(whole)?,
        tags: listener_tags(net),
    };
    for (index, m) in conf.append_modifications.iter().enumerate() {
        work.modify(m).map_err(|message| PatchError {
            index: Some(index),
            message,
        })?;
    }
    // The set shares every resource the patches left as it was; the rest
    // is replaced, and what they removed is removed.
    let mut out = set.clone();
    for (type_url, kept) in [
        (LISTENER, encoded(&work.listeners)),
        (CLUSTER, encoded(&work.clusters)),
        (ROUTE, encoded(&work.routes)),
    ] {
        let gone: Vec<String> = set
            .of_type(type_url)
            .filter(|r| !kept.contains_key(&r.name))
            .map(|r| r.name.clone())
            .collect();
        for name in gone {
            out.remove(type_url, &name);
        }
        for (name, bytes) in kept {
            if set.get(type_url, &name).is_some_and(|old| old.body.value == bytes) {
                continue;
            }
            out.insert_shared(
                type_url,
                std::sync::Arc::new(crate::resources::XdsResource {
                    version: crate::resources::version_hex(&bytes),
                    name,
                    body: Any {
                        type_url: type_url.to_string(),
                        value: bytes,
                    },
                }),
            );
        }
    }
    let problems = super::invariants::check(&out);
    if !problems.is_empty() {
        return Err(PatchError {
            index: None,
            message: format!("the patched configuration is invalid: {}", problems.join("; ")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{sidecar, NoPolicies, PolicyResolver, ProxyPolicies};
    use crate::snapshot::{DataplaneEntry, MeshSnapshot, ProxyContext, ProxyKind};
    use serde_json::json;

    #[test]
    fn values_are_checked_as_envoy_messages_at_the_write() {
        use meridian_core::ResourceType;
        let spec = |modification: serde_json::Value| serde_json::json!({"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [modification]}});
        let ok = spec(
            serde_json::json!({"cluster": {"operation": "Patch", "match": {"name": "backend"},
            "value": "connectTimeout: 7s\ncircuitBreakers: {thresholds: [{maxConnections: 3}]}"}}),
        );
        assert!(check_spec(ResourceType::MeshProxyPatch, &ok).is_empty());
        let typo = spec(serde_json::json!({"cluster": {"operation": "Patch", "value": "conectTimeout: 7s"}}));
        let got = check_spec(ResourceType::MeshProxyPatch, &typo);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "default.appendModifications[0].cluster.value");
        assert!(
            got[0].1.starts_with("is not a valid envoy.config.cluster.v3.Cluster"),
            "{}",
            got[0].1
        );
        let unknown_type = spec(serde_json::json!({"httpFilter": {"operation": "AddFirst",
            "value": "name: x\ntypedConfig: {'@type': type.googleapis.com/nothing.Like.This}"}}));
        let got = check_spec(ResourceType::MeshProxyPatch, &unknown_type);
        assert_eq!(got[0].0, "default.appendModifications[0].httpFilter.value", "{got:?}");
        let pointer = spec(serde_json::json!({"listener": {"operation": "Patch",
            "jsonPatches": [{"op": "replace", "path": "no/slash", "value": 1}]}}));
        let got = check_spec(ResourceType::MeshProxyPatch, &pointer);
        assert_eq!(
            got,
            [(
                "default.appendModifications[0].listener.jsonPatches[0].path".to_string(),
                "a path starts with /".to_string()
            )]
        );
        assert!(
            check_spec(ResourceType::MeshTimeout, &typo).is_empty(),
            "other kinds are not looked at"
        );
    }

    struct Patching(Conf);

    impl PolicyResolver for Patching {
        fn outbound(&self, s: &MeshSnapshot, p: &ProxyContext, svc: &str) -> crate::generate::OutboundPolicies {
            NoPolicies.outbound(s, p, svc)
        }
        fn proxy(&self, _: &MeshSnapshot, _: &ProxyContext) -> ProxyPolicies {
            ProxyPolicies {
                patch: Some(self.0.clone()),
                ..Default::default()
            }
        }
    }

    fn dp(v: Value) -> meridian_core::dataplane::Dataplane {
        serde_json::from_value(v).unwrap()
    }

    fn generate(modifications: Value) -> (ResourceSet, Option<PatchError>, ResourceSet) {
        let web = dp(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}},
                        {"port": 15002, "servicePort": 9000, "tags": {"kuma.io/service": "web-admin"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}]}}));
        let backend = dp(json!({"networking": {"address": "10.0.0.2",
            "inbound": [{"port": 15001, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}));
        let snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![
                DataplaneEntry {
                    name: "web-1".into(),
                    spec: web.clone(),
                },
                DataplaneEntry {
                    name: "backend-1".into(),
                    spec: backend,
                },
            ],
            ..Default::default()
        };
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: "web-1".into(),
            kind: ProxyKind::Sidecar,
            dataplane: web,
            tls: Default::default(),
        };
        let conf: Conf = serde_json::from_value(json!({"appendModifications": modifications})).unwrap();
        let (set, err) = sidecar::generate_reporting(&snap, &proxy, &Patching(conf));
        (set, err, sidecar::generate(&snap, &proxy, &NoPolicies))
    }

    fn cluster(set: &ResourceSet, name: &str) -> Cluster {
        Cluster::decode(set.get(CLUSTER, name).unwrap().body.value.as_slice()).unwrap()
    }

    fn listener(set: &ResourceSet, name: &str) -> Listener {
        Listener::decode(set.get(LISTENER, name).unwrap().body.value.as_slice()).unwrap()
    }

    fn hcm(l: &Listener) -> HttpConnectionManager {
        let Some(filter::ConfigType::TypedConfig(a)) = &l.filter_chains[0].filters[0].config_type else {
            panic!("no typed config")
        };
        HttpConnectionManager::decode(a.value.as_slice()).unwrap()
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let op = |op: &str, path: &str, value: Option<Value>, from: Option<&str>| JsonPatch {
            op: serde_json::from_value(json!(op)).unwrap(),
            path: path.into(),
            from: from.map(String::from),
            value,
        };
        apply_json_patch(&mut doc, &op("add", "/a/b/-", Some(json!(3)), None)).unwrap();
        apply_json_patch(&mut doc, &op("add", "/a/b/0", Some(json!(0)), None)).unwrap();
        apply_json_patch(&mut doc, &op("replace", "/c", Some(json!("y")), None)).unwrap();
        apply_json_patch(&mut doc, &op("copy", "/d", None, Some("/c"))).unwrap();
        apply_json_patch(&mut doc, &op("move", "/e", None, Some("/a/b/1"))).unwrap();
        apply_json_patch(&mut doc, &op("remove", "/d", None, None)).unwrap();
        assert_eq!(doc, json!({"a": {"b": [0, 2, 3]}, "c": "y", "e": 1}));
        assert!(apply_json_patch(&mut doc, &op("replace", "/missing/x", Some(json!(1)), None)).is_err());
        assert!(apply_json_patch(&mut doc, &op("remove", "/a/b/9", None, None)).is_err());
        assert!(apply_json_patch(&mut doc, &op("add", "/a/b/9", Some(json!(1)), None)).is_err());
        assert!(apply_json_patch(&mut doc, &op("add", "/x", None, None)).is_err());
        assert_eq!(
            doc["a"]["b"],
            json!([0, 2, 3]),
            "a failed operation changes nothing here"
        );
    }

    #[test]
    fn clusters_and_listeners_are_patched_added_and_removed() {
        let (set, err, plain) = generate(json!([
            {"cluster": {"operation": "Patch", "match": {"name": "backend"},
                         "value": "connectTimeout: 7s\ncircuitBreakers: {thresholds: [{maxConnections: 9}]}"}},
            {"cluster": {"operation": "Patch", "match": {"origin": "inbound"},
                         "jsonPatches": [{"op": "replace", "path": "/connectTimeout", "value": "3s"}]}},
            {"cluster": {"operation": "Add", "value": "name: extra\ntype: STATIC\nconnectTimeout: 1s\nloadAssignment: {clusterName: extra, endpoints: [{lbEndpoints: [{endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 9999}}}}]}]}"}},
            {"listener": {"operation": "Patch", "match": {"tags": {"kuma.io/service": "web-admin"}},
                          "jsonPatches": [{"op": "add", "path": "/perConnectionBufferLimitBytes", "value": 32768}]}},
            {"listener": {"operation": "Remove", "match": {"name": "inbound:10.0.0.1:15001"}}}
        ]));
        assert_eq!(err, None);
        let backend = cluster(&set, "backend");
        assert_eq!(backend.connect_timeout.unwrap().seconds, 7);
        assert_eq!(
            backend.circuit_breakers.unwrap().thresholds[0]
                .max_connections
                .unwrap()
                .value,
            9
        );
        assert_eq!(cluster(&set, "localhost:8080").connect_timeout.unwrap().seconds, 3);
        assert_eq!(cluster(&set, "localhost:9000").connect_timeout.unwrap().seconds, 3);
        assert!(set.get(CLUSTER, "extra").is_some());
        let admin = listener(&set, "inbound:10.0.0.1:15002");
        assert_eq!(admin.per_connection_buffer_limit_bytes.unwrap().value, 32768);
        assert!(set.get(LISTENER, "inbound:10.0.0.1:15001").is_none());
        // What no modification touched is the same shared resource.
        assert_eq!(
            set.get(LISTENER, "outbound:127.0.0.1:10001"),
            plain.get(LISTENER, "outbound:127.0.0.1:10001")
        );
    }

    #[test]
    fn filters_and_virtual_hosts_are_changed_in_place() {
        let (set, err, _) = generate(json!([
            {"httpFilter": {"operation": "AddBefore", "match": {"name": "envoy.filters.http.router", "origin": "inbound"},
                            "value": "name: envoy.filters.http.buffer\ntypedConfig: {'@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, maxRequestBytes: 1024}"}},
            {"networkFilter": {"operation": "Patch", "match": {"name": "envoy.filters.network.tcp_proxy"},
                               "jsonPatches": [{"op": "add", "path": "/idleTimeout", "value": "10s"}]}},
            {"httpFilter": {"operation": "Patch", "match": {"name": "envoy.filters.network.http_connection_manager"},
                            "value": "name: x"}},
            {"virtualHost": {"operation": "Add", "match": {"routeConfigurationName": "backend"},
                             "value": "name: extra\ndomains: [extra.mesh]\nroutes: [{match: {prefix: /}, directResponse: {status: 418}}]"}},
            {"virtualHost": {"operation": "Patch", "match": {"origin": "inbound"},
                             "jsonPatches": [{"op": "add", "path": "/domains/-", "value": "web.mesh"}]}}
        ]));
        assert_eq!(err, None);
        let inbound = hcm(&listener(&set, "inbound:10.0.0.1:15001"));
        let names: Vec<&str> = inbound.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.http.buffer", "envoy.filters.http.router"]);
        let Some(RouteSpecifier::RouteConfig(rc)) = &inbound.route_specifier else {
            panic!()
        };
        assert_eq!(rc.virtual_hosts[0].domains, ["*", "web.mesh"]);
        let outbound = hcm(&listener(&set, "outbound:127.0.0.1:10001"));
        assert_eq!(
            outbound.http_filters.len(),
            1,
            "the router only: AddBefore matched the inbound only"
        );
        let tcp = listener(&set, "inbound:10.0.0.1:15002");
        let Some(filter::ConfigType::TypedConfig(a)) = &tcp.filter_chains[0].filters[0].config_type else {
            panic!()
        };
        let proxy =
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy::decode(a.value.as_slice())
                .unwrap();
        assert_eq!(proxy.idle_timeout.unwrap().seconds, 10);
        let routes = RouteConfiguration::decode(set.get(ROUTE, "backend").unwrap().body.value.as_slice()).unwrap();
        assert_eq!(routes.virtual_hosts.last().unwrap().name, "extra");
    }

    #[test]
    fn a_patch_that_breaks_the_configuration_is_not_applied() {
        for (mods, says) in [
            (
                json!([{"cluster": {"operation": "Remove", "match": {"name": "backend"}}}]),
                "missing cluster",
            ),
            (
                json!([{"cluster": {"operation": "Patch", "value": "connectTimeout: soon"}}]),
                "appendModifications[0]: not a valid envoy.config.cluster.v3.Cluster",
            ),
            (
                json!([{"cluster": {"operation": "Patch", "value": "noSuchField: 1"}}]),
                "noSuchField",
            ),
            (
                json!([{"listener": {"operation": "Patch", "jsonPatches": [{"op": "replace", "path": "/nope/x", "value": 1}]}}]),
                "jsonPatches[0]",
            ),
            (
                json!([{"cluster": {"operation": "Add", "value": "- a list"}}]),
                "value must be an object",
            ),
            (
                json!([{"networkFilter": {"operation": "AddFirst", "value": "name: f\ntypedConfig: {'@type': type.googleapis.com/no.Such}"}}]),
                "appendModifications[0]",
            ),
        ] {
            let (set, err, plain) = generate(mods.clone());
            let err = err.unwrap_or_else(|| panic!("{mods} was applied"));
            assert!(err.to_string().contains(says), "{mods}: {err}");
            assert_eq!(set, plain, "{mods}: the proxy gets its configuration without the patch");
        }
    }
}
