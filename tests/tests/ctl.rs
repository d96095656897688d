//! meridianctl as an operator uses it: apply from several files and
//! directories, unchanged and dry-run, type aliases, version, completion,
//! an address without a scheme, and a pipe closed early.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};

use meridian_e2e::*;

fn timeout_doc(name: &str, idle: &str) -> String {
    format!(
        "type: MeshTimeout\nmesh: default\nname: {name}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: {idle}}}\n"
    )
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn meridianctl_applies_like_an_operator_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("g"), &[]);
    let nested = d.join("policies/team-a");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(d.join("policies/one.yaml"), timeout_doc("one", "1m")).unwrap();
    std::fs::write(nested.join("two.yml"), timeout_doc("two", "2m")).unwrap();
    std::fs::write(nested.join("notes.txt"), "not a resource").unwrap();
    std::fs::write(d.join("three.yaml"), timeout_doc("three", "3m")).unwrap();

    // Dry run: nothing written, each document named.
    let policies = d.join("policies");
    let three = d.join("three.yaml");
    let args = [
        "apply",
        "--dry-run",
        "-f",
        policies.to_str().unwrap(),
        three.to_str().unwrap(),
    ];
    let out = global.ctl(&args, None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("would be created (dry run)").count(), 3, "{stdout}");
    assert_eq!(global.get("/meshes/default/meshtimeouts/one").0, 404);

    // For real: a directory (recursively) and a file after one -f.
    let out = global.ctl(&args[..1].iter().chain(&args[2..]).copied().collect::<Vec<_>>(), None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(" created").count(), 3, "{stdout}");
    for name in ["one", "two", "three"] {
        assert_eq!(
            global.get(&format!("/meshes/default/meshtimeouts/{name}")).0,
            200,
            "{name}"
        );
    }

    // Again: unchanged, and nothing written (the version stays).
    let (_, before) = global.get("/meshes/default/meshtimeouts/two");
    let out = global.ctl(&["apply", "-f", policies.to_str().unwrap()], None);
    let (stdout, _) = text(&out);
    assert_eq!(stdout.matches("unchanged").count(), 2, "{stdout}");
    let (_, after) = global.get("/meshes/default/meshtimeouts/two");
    assert_eq!(before["modificationTime"], after["modificationTime"]);
    // What `get -o yaml` prints applies as unchanged too.
    let out = global.ctl(&["get", "meshtimeout", "one", "-o", "yaml"], None);
    let (yaml, _) = text(&out);
    let out = global.ctl(&["apply", "-f", "-"], Some(&yaml));
    assert!(text(&out).0.contains("unchanged"), "{yaml} → {:?}", text(&out));
    // A change is an update.
    std::fs::write(d.join("policies/one.yaml"), timeout_doc("one", "9m")).unwrap();
    let out = global.ctl(&["apply", "-f", d.join("policies/one.yaml").to_str().unwrap()], None);
    assert!(text(&out).0.contains("updated"), "{:?}", text(&out));

    // Type aliases with hyphens.
    let out = global.ctl(&["get", "zone-ingresses"], None);
    assert!(out.status.success(), "{:?}", text(&out));

    // An address without a scheme.
    let bare = global.api.trim_start_matches("http://");
    let out = Command::new(bin("meridianctl"))
        .args(["--api", bare, "--token-file"])
        .arg(
            dir.path()
                .join(format!("admin-token-{}", bare.rsplit(':').next().unwrap())),
        )
        .args(["get", "meshes"])
        .env("MERIDIAN_CONFIG", d.join("no-contexts.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("default"));

    // version: both sides.
    let out = global.ctl(&["version"], None);
    let (stdout, _) = text(&out);
    let ours = env!("CARGO_PKG_VERSION");
    assert!(stdout.contains(&format!("meridianctl: {ours}")), "{stdout}");
    assert!(stdout.contains(&format!("control plane (global): {ours}")), "{stdout}");

    // completion scripts for three shells.
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef meridianctl"),
        ("fish", "complete -c meridianctl"),
    ] {
        let out = global.ctl(&["completion", shell], None);
        assert!(
            out.status.success() && text(&out).0.contains(marker),
            "{shell}: {:?}",
            text(&out)
        );
    }

    // A reader that stops early (`| head -c 1`): no panic, no error text.
    let mut child = Command::new(bin("meridianctl"))
        .args(["--api", &global.api, "--token-file"])
        .arg(
            dir.path()
                .join(format!("admin-token-{}", bare.rsplit(':').next().unwrap())),
        )
        .args(["completion", "bash"])
        .env("MERIDIAN_CONFIG", d.join("no-contexts.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's reading end is dropped here; the writer sees EPIPE.
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success() || status.code().is_none(), "{status:?}: {stderr}");
}
