//! Compiles the descriptors of the Envoy messages a configuration dump can
//! hold (the admin `ConfigDump`, the xDS resources and every extension
//! Meridian packs into an `Any`) from the `.proto` files that ship inside
//! the `envoy-types` crate, into `$OUT_DIR/envoy_descriptors.bin`.
//! `config_dump.rs` turns a dump into proto3 JSON with them.
//!
//! Each root file is compiled on its own and the results merged by file
//! name: some Envoy files only resolve their relative type names when the
//! packages of unrelated files are not loaded beside them (as Envoy's own
//! build compiles them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;

/// Directories (below `data-plane-api`) whose files are compiled as roots.
const ROOTS: &[&str] = &[
    "envoy/admin/v3",
    // Every HTTP, network and listener filter: MeshProxyPatch values may
    // add any of them.
    "envoy/extensions/filters/http",
    "envoy/extensions/filters/network",
    "envoy/extensions/filters/listener",
    "envoy/extensions/transport_sockets/tls",
    "envoy/extensions/transport_sockets/raw_buffer",
    "envoy/extensions/upstreams/http",
    "envoy/extensions/health_check/event_sinks/file",
    "envoy/extensions/access_loggers/file",
    "envoy/extensions/access_loggers/grpc",
    "envoy/extensions/access_loggers/open_telemetry",
    "envoy/extensions/load_balancing_policies",
    "envoy/config/trace/v3",
];

/// Include paths (below the crate's `proto` directory).
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec",
    "opentelemetry-proto",
    "client_model",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MERIDIAN_ENVOY_PROTO_DIR");
    let proto = match envoy_proto_dir() {
        Ok(dir) => dir,
        Err(e) => fail(&format!("the .proto files of envoy-types: {e}")),
    };
    let api = proto.join("data-plane-api");
    let mut roots = Vec::new();
    for dir in ROOTS {
        collect(&api.join(dir), &api, &mut roots);
    }
    roots.sort();
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|d| proto.join(d)).collect();
    let mut merged = prost_types::FileDescriptorSet::default();
    let mut seen = BTreeSet::new();
    // One root at a time: names resolve as they do for Envoy, where a file
    // sees only what it imports (all together, `common.async_files` would
    // resolve into `envoy.extensions.filters.common`).
    for root in &roots {
        match protox::compile([root], &includes) {
            Ok(set) => merged
                .file
                .extend(set.file.into_iter().filter(|f| seen.insert(f.name.clone()))),
            Err(e) => fail(&format!("compiling {root}: {e}")),
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    if let Err(e) = std::fs::write(out.join("envoy_descriptors.bin"), merged.encode_to_vec()) {
        fail(&format!("writing the descriptors: {e}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("meridian-xds build: {message}");
    std::process::exit(1)
}

/// The `.proto` files below `dir`, as paths relative to `base`.
fn collect(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        fail(&format!("{} is not a directory", dir.display()))
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// `MERIDIAN_ENVOY_PROTO_DIR`, else the `proto` directory of the resolved
/// `envoy-types` package (from `cargo metadata`, offline, for this target),
/// else the newest `envoy-types-0.7.*` in the cargo registry's sources.
fn envoy_proto_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("MERIDIAN_ENVOY_PROTO_DIR") {
        return Ok(PathBuf::from(dir));
    }
    match from_metadata() {
        Ok(dir) => return Ok(dir),
        Err(e) => println!("cargo:warning=cargo metadata did not name envoy-types ({e}); looking in the registry"),
    }
    from_registry()
}

fn from_metadata() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").map_err(|e| e.to_string())?;
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let target = std::env::var("TARGET").map_err(|e| e.to_string())?;
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &target,
        ])
        .current_dir(manifest_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("no envoy-types package")?;
    let dir = Path::new(manifest).parent().ok_or("manifest without a directory")?;
    Ok(dir.join("proto"))
}

fn from_registry() -> Result<PathBuf, String> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set".to_string())?;
    let sources = home.join("registry").join("src");
    let mut found: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    for index in std::fs::read_dir(&sources)
        .map_err(|e| format!("{}: {e}", sources.display()))?
        .flatten()
    {
        for package in std::fs::read_dir(index.path()).into_iter().flatten().flatten() {
            let name = package.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.strip_prefix("envoy-types-0.7.") {
                let key: Vec<u64> = std::iter::once(version.parse().unwrap_or(0)).collect();
                found.push((key, package.path().join("proto")));
            }
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| format!("no envoy-types-0.7.* below {}", sources.display()))
}
