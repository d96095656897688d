#!/usr/bin/env python3
"""Static checks of deploy/container/Containerfile, for machines that cannot
build it (no container engine, or no registry to pull the base images from).

    check_containerfile.py [--repo ROOT] [--ignorefile FILE] [CONTAINERFILE]

Checks what an image build would get wrong silently, or what a review would
have to catch:
- multi-stage: two FROMs or more, each stage named (AS name), names unique;
- every COPY --from=X names an earlier stage;
- base images pinned to a tag or digest, never :latest or untagged;
- no ADD of a URL (fetched unverified at build time);
- the final stage runs as a numeric, non-root USER (uid and gid not 0);
- ENTRYPOINT (and CMD) in exec form, the entrypoint one of the binaries;
- the binaries copied into /usr/local/bin are exactly the four processes,
  built by `cargo build --release --locked` with -p for each, and each -p
  a package of the workspace;
- no RUN in a distroless final stage (it has no shell);
- EXPOSE equals the ports of the *-addr defaults in deploy/global.defaults.yaml
  and deploy/zone.defaults.yaml;
- the ignore file leaves out target/ and keeps every workspace member, and
  its docker twin (Containerfile.dockerignore) says the same.

Standard library only. Exit status 1 with one line per failure.
"""

import argparse
import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path

BINARIES = {"meridian-global", "meridian-zone", "meridian-dp", "meridianctl"}
BIN_DIR = "/usr/local/bin"


def instructions(text):
    """(line number, INSTRUCTION, arguments) for each instruction, with
    backslash continuations joined and comments dropped."""
    out = []
    buf, start = "", None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if start is None:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf, start = "", None
    if buf:
        out.append((start, "UNTERMINATED", buf))
    return out


def split_flags(args):
    """(--flags as a dict, the remaining words) of COPY/ADD/FROM arguments."""
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, words


def default_ports(repo):
    """Ports of the listeners the control planes bind by default."""
    ports = set()
    for name in ("global.defaults.yaml", "zone.defaults.yaml"):
        for line in (repo / "deploy" / name).read_text().splitlines():
            m = re.match(r"^([a-z-]+-addr):\s*\S*:(\d+)\s*$", line)
            if m and int(m.group(2)) != 0:
                ports.add(int(m.group(2)))
    return ports


def workspace(repo):
    """(member directories, package names) of the Cargo workspace."""
    text = (repo / "Cargo.toml").read_text()
    m = re.search(r"^members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    members = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    packages = set()
    for d in members:
        manifest = repo / d / "Cargo.toml"
        if manifest.exists():
            p = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', manifest.read_text(), re.S | re.M)
            if p:
                packages.add(p.group(1))
    return members, packages


def ignore_patterns(path):
    return [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]


def ignored(patterns, rel):
    """Whether `rel` (a path in the context) is left out, the last matching
    pattern winning as in .dockerignore (! re-includes)."""
    out = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!").strip("/")
        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p + "/*") or fnmatch.fnmatch(rel, "*/" + p):
            out = not neg
    return out


def check(containerfile, repo, ignorefile):
    errors = []
    err = lambda n, msg: errors.append(f"{containerfile}:{n}: {msg}" if n else f"{containerfile}: {msg}")
    ins = instructions(containerfile.read_text())
    for n, word, rest in ins:
        if word == "UNTERMINATED":
            err(n, "an instruction ends in a backslash continuation with nothing after it")

    # Stages.
    stages = []  # dicts: name, image, line, instructions
    for n, word, rest in ins:
        if word == "FROM":
            flags, words = split_flags(rest)
            name = None
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2].lower()
            elif len(words) != 1:
                err(n, f"FROM {rest!r}: expected FROM IMAGE AS NAME")
            stages.append({"name": name, "image": words[0] if words else "", "line": n, "ins": []})
        elif stages:
            stages[-1]["ins"].append((n, word, rest))
        elif word not in ("ARG",):
            err(n, f"{word} before the first FROM")
    if len(stages) < 2:
        err(0, f"not multi-stage: {len(stages)} FROM, expected a build stage and a runtime stage")
    names = [s["name"] for s in stages]
    for s in stages:
        if not s["name"]:
            err(s["line"], "a stage without a name (FROM IMAGE AS NAME)")
    dupes = {x for x in names if x and names.count(x) > 1}
    if dupes:
        err(0, f"stage names used twice: {sorted(dupes)}")

    # Base images: pinned, or an earlier stage.
    for i, s in enumerate(stages):
        image = s["image"]
        if image.lower() in names[:i] or image == "scratch":
            continue
        if "$" in image:
            err(s["line"], f"base image {image!r} comes from a build argument: pin it in the file")
            continue
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" in image:
            continue
        if ":" not in last:
            err(s["line"], f"base image {image!r} is not pinned to a tag")
        elif last.rsplit(":", 1)[1] == "latest":
            err(s["line"], f"base image {image!r} is pinned to :latest, which moves")

    # COPY --from, ADD.
    for i, s in enumerate(stages):
        for n, word, rest in s["ins"]:
            if word in ("COPY", "ADD"):
                flags, words = split_flags(rest)
                src = flags.get("from")
                if src is not None:
                    earlier = names[:i]
                    if not (src.lower() in earlier or (src.isdigit() and int(src) < i)):
                        err(n, f"COPY --from={src} names no earlier stage (earlier: {earlier})")
                if word == "ADD" and any(re.match(r"^(https?|git)://|^git@", w) for w in words):
                    err(n, "ADD of a URL: fetched at build time without a checksum; download in a RUN that verifies it")

    if not stages:
        return errors
    final = stages[-1]
    fins = final["ins"]

    # USER: numeric and not root.
    users = [(n, rest) for n, word, rest in fins if word == "USER"]
    if not users:
        err(final["line"], "the final stage sets no USER: the image would run as root")
    else:
        n, user = users[-1]
        parts = user.split(":")
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            err(n, f"USER {user}: not numeric (Kubernetes runAsNonRoot can only check a numeric uid)")
        elif any(int(p) == 0 for p in parts):
            err(n, f"USER {user}: root")

    # ENTRYPOINT / CMD in exec form.
    entry = None
    for n, word, rest in fins:
        if word in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(rest)
                ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
            except ValueError:
                ok = False
            if not ok:
                err(n, f"{word} {rest}: not exec form (a JSON array of strings); a shell form needs a shell and hides signals")
            elif word == "ENTRYPOINT":
                entry = (n, value)
    if entry is None:
        err(final["line"], "the final stage has no ENTRYPOINT")

    # The binaries.
    copied = {}
    for n, word, rest in fins:
        if word == "COPY":
            flags, words = split_flags(rest)
            if len(words) < 2:
                continue
            dest = words[-1]
            if dest.rstrip("/") == BIN_DIR:
                for w in words[:-1]:
                    copied[w.rsplit("/", 1)[-1]] = (n, w)
            elif dest.startswith(BIN_DIR + "/"):
                copied[dest.rsplit("/", 1)[-1]] = (n, words[0])
    if set(copied) != BINARIES:
        missing = sorted(BINARIES - set(copied))
        extra = sorted(set(copied) - BINARIES)
        err(0, f"binaries copied into {BIN_DIR}: missing {missing}, unexpected {extra}")
    for name, (n, src) in copied.items():
        if "/target/release/" not in src:
            err(n, f"{src}: not a release build (target/release)")
    if entry and entry[1][0] not in {f"{BIN_DIR}/{b}" for b in copied}:
        err(entry[0], f"ENTRYPOINT {entry[1][0]} is not one of the copied binaries")

    # The build.
    builds = [(n, rest) for s in stages[:-1] for n, word, rest in s["ins"] if word == "RUN" and "cargo build" in rest]
    if not builds:
        err(0, "no build stage runs cargo build")
    members, packages = workspace(repo)
    for n, rest in builds:
        words = shlex.split(rest.split("cargo build", 1)[1].split("&&")[0])
        for flag in ("--release", "--locked"):
            if flag not in words:
                err(n, f"cargo build without {flag}")
        built = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-p", "--package")}
        if built != BINARIES:
            err(n, f"cargo build -p {sorted(built)}: expected exactly {sorted(BINARIES)}")
        for p in sorted(built - packages):
            err(n, f"cargo build -p {p}: no such package in the workspace")

    # Distroless: no shell in the final stage.
    if "distroless" in final["image"]:
        for n, word, rest in fins:
            if word == "RUN" and not rest.startswith("["):
                err(n, "RUN in a distroless stage: there is no shell")

    # EXPOSE.
    exposed = set()
    for n, word, rest in fins:
        if word == "EXPOSE":
            for w in rest.split():
                exposed.add(int(w.split("/")[0]))
    want = default_ports(repo)
    if exposed != want:
        err(0, f"EXPOSE {sorted(exposed)}: expected the default ports {sorted(want)} (deploy/*.defaults.yaml)")

    # The ignore file(s).
    if ignorefile is not None:
        if not ignorefile.exists():
            err(0, f"{ignorefile}: missing")
        else:
            pats = ignore_patterns(ignorefile)
            for rel in ("target", "target/release/meridian-global"):
                if not ignored(pats, rel):
                    err(0, f"{ignorefile}: {rel} is not left out of the build context")
            for rel in ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in members]:
                if ignored(pats, rel):
                    err(0, f"{ignorefile}: leaves out {rel}, which cargo needs")
            twin = containerfile.parent / (containerfile.name + ".dockerignore")
            if twin.exists() and ignore_patterns(twin) != pats:
                err(0, f"{twin} and {ignorefile} list different patterns")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    ap.add_argument("containerfile", nargs="?", type=Path, default=here / "Containerfile")
    ap.add_argument("--repo", type=Path, default=here.parent.parent)
    ap.add_argument("--ignorefile", type=Path, default=None,
                    help="the build's ignore file (default: containerignore beside the Containerfile, if any)")
    a = ap.parse_args()
    ignorefile = a.ignorefile
    if ignorefile is None and (a.containerfile.parent / "containerignore").exists():
        ignorefile = a.containerfile.parent / "containerignore"
    errors = check(a.containerfile, a.repo, ignorefile)
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"{a.containerfile}: ok (stages, pinned bases, non-root USER, exec ENTRYPOINT, "
          f"the four binaries, EXPOSE {sorted(default_ports(a.repo))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
