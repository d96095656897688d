#!/usr/bin/env python3
"""Static checks of the systemd units and example configs in deploy/systemd.

    check_units.py --bin DIR [--dir deploy/systemd] [--repo ROOT]

- Each unit keeps the hardening and the layout the deployment relies on
  (the directives below, with these values), runs its binary from
  /usr/local/bin with `run --config /etc/meridian/…`, and passes the data
  directory its StateDirectory= makes.
- Every flag on an ExecStart line is a flag of that binary's `run --help`
  (DIR holds the built binaries).
- Every key of an example config, set or commented out, is a flag of the
  binary and is named in deploy/<process>.defaults.yaml (set or commented).

systemd-analyze verify/security and the start-up with these files are in
deploy/check-systemd-container.sh. Standard library only; exit status 1 with
one line per failure.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

# Directives every unit has, exactly (a unit may have more).
COMMON = [
    "Wants=network-online.target",
    "Type=exec",
    "Restart=on-failure",
    "LimitNOFILE=1048576",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "WantedBy=multi-user.target",
]
# Directives that must be there with some value.
PRESENT = ["RestartSec", "TimeoutStopSec", "UMask", "Description"]

UNITS = {
    "meridian-global.service": {
        "process": "global",
        "example": "global.yaml",
        "exact": ["User=meridian", "Group=meridian", "ConfigurationDirectory=meridian",
                  "StateDirectory=meridian/global", "StateDirectoryMode=0700", "PrivateUsers=yes"],
        "after": ["network-online.target", "etcd.service"],
        "exec": ["/usr/local/bin/meridian-global", "run", "--config", "/etc/meridian/global.yaml"],
        "args": {"--data-dir": "/var/lib/meridian/global",
                 "--admin-token-file": "/var/lib/meridian/global/admin-token"},
    },
    "meridian-zone.service": {
        "process": "zone",
        "example": "zone.yaml",
        "exact": ["User=meridian", "Group=meridian", "ConfigurationDirectory=meridian",
                  "StateDirectory=meridian/zone", "StateDirectoryMode=0700", "PrivateUsers=yes"],
        "after": ["network-online.target"],
        "exec": ["/usr/local/bin/meridian-zone", "run", "--config", "/etc/meridian/zone.yaml"],
        "args": {"--data-dir": "/var/lib/meridian/zone",
                 "--admin-token-file": "/var/lib/meridian/zone/admin-token"},
    },
    "meridian-dp@.service": {
        "process": "dp",
        "example": "dp-example.yaml",
        "exact": ["User=meridian", "Group=meridian", "ConfigurationDirectory=meridian/dp",
                  "RuntimeDirectory=meridian-dp/%i"],
        "after": ["network-online.target"],
        "exec": ["/usr/local/bin/meridian-dp", "run", "--config", "/etc/meridian/dp/%i.yaml"],
        "args": {"--grpc-bootstrap-file": "/run/meridian-dp/%i/grpc-bootstrap.json",
                 "--certificates-dir": "/run/meridian-dp/%i/certs"},
    },
}

KEY = r"[a-z][a-z0-9-]*"


def flags_of(binary):
    out = subprocess.run([str(binary), "run", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(rf"^\s+--({KEY})\b", out, re.M)) - {"help"}


def config_keys(text):
    """(keys set, keys commented out as `# key: value`) at the top level."""
    set_keys = re.findall(rf"^({KEY}):", text, re.M)
    commented = re.findall(rf"^# ({KEY}): \S", text, re.M)
    return set_keys, commented


def check(unit_dir, repo, bin_dir):
    errors = []
    for unit, want in UNITS.items():
        path = unit_dir / unit
        if not path.exists():
            errors.append(f"{path}: missing")
            continue
        text = path.read_text()
        lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith(("#", ";"))]
        err = lambda msg: errors.append(f"{path}: {msg}")
        for d in COMMON + want["exact"]:
            if d not in lines:
                err(f"missing {d}")
        for k in PRESENT:
            if not any(l.startswith(k + "=") and len(l) > len(k) + 1 for l in lines):
                err(f"missing {k}=")
        after = " ".join(l.split("=", 1)[1] for l in lines if l.startswith("After="))
        for a in want["after"]:
            if a not in after.split():
                err(f"After= does not name {a}")
        users = [l for l in lines if l.startswith("User=")]
        if any(l in ("User=root", "User=0") for l in users):
            err("runs as root")
        execs = [l.split("=", 1)[1] for l in lines if l.startswith("ExecStart=")]
        if len(execs) != 1:
            err(f"{len(execs)} ExecStart= lines, expected 1")
            continue
        argv = execs[0].split()
        if any(c in execs[0] for c in "'\"\\$;"):
            err("ExecStart= has quotes, variables or escapes; the checks read it as plain words")
        if argv[: len(want["exec"])] != want["exec"]:
            err(f"ExecStart= starts {argv[:4]}, expected {want['exec']}")
        for flag, value in want["args"].items():
            if flag not in argv or argv.index(flag) + 1 >= len(argv) or argv[argv.index(flag) + 1] != value:
                err(f"ExecStart= does not pass {flag} {value}")
        binary = bin_dir / Path(want["exec"][0]).name
        if not binary.exists():
            err(f"{binary}: not built")
            continue
        flags = flags_of(binary)
        for w in argv[2:]:
            if w.startswith("--") and w[2:].split("=")[0] not in flags:
                err(f"ExecStart= passes {w}, not a flag of {binary.name} run")

        # The example config.
        example = unit_dir / want["example"]
        if not example.exists():
            errors.append(f"{example}: missing")
            continue
        defaults = repo / "deploy" / f"{want['process']}.defaults.yaml"
        # Set or commented out; prose lines that look like keys are no flags.
        documented = set(re.findall(rf"^#?\s*({KEY}):", defaults.read_text(), re.M))
        e_set, e_commented = config_keys(example.read_text())
        if not e_set:
            errors.append(f"{example}: no keys")
        for k in sorted({k for k in e_set if e_set.count(k) > 1}):
            errors.append(f"{example}: {k} set twice")
        for k in e_set + e_commented:
            if k not in flags:
                errors.append(f"{example}: {k} is not a flag of {binary.name} run")
            elif k not in documented:
                errors.append(f"{example}: {k} is not in {defaults.name}")
    return errors


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, required=True, help="where the built binaries are")
    ap.add_argument("--dir", type=Path, default=here, help="the units and example configs")
    ap.add_argument("--repo", type=Path, default=here.parent.parent)
    a = ap.parse_args()
    errors = check(a.dir, a.repo, a.bin)
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"{a.dir}: units hardened and laid out as documented; ExecStart flags and example keys exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
