#!/usr/bin/env bash
# Publish-readiness of the workspace, without publishing anything:
#
# 1. every publishable crate (all but `publish = false`) has the metadata
#    crates.io and docs.rs show: description, license, repository,
#    documentation (libraries), readme, keywords, categories;
# 2. they package together (`cargo package --workspace`: manifests valid,
#    every path dependency also versioned, files present), unverified since
#    the workspace members are not on crates.io yet;
# 3. the libraries' docs build with no rustdoc warning.
#
# Usage: scripts/package-check.sh   (the .crate files land in target/package)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "metadata of the publishable crates"
metadata=$(cargo metadata --no-deps --format-version 1)
unpublished=$(python3 - "$metadata" <<'PY'
import json, sys

meta = json.loads(sys.argv[1])
missing = []
for pkg in meta["packages"]:
    if pkg["publish"] == []:
        print(pkg["name"])
        continue
    has_lib = any("lib" in t["kind"] for t in pkg["targets"])
    need = ["description", "license", "repository", "readme", "keywords", "categories"]
    if has_lib:
        need.append("documentation")
    for field in need:
        if not pkg.get(field):
            missing.append(f"{pkg['name']}: no {field}")
    if pkg.get("repository", "").startswith("https://example."):
        missing.append(f"{pkg['name']}: placeholder repository")
if missing:
    sys.exit("missing package metadata:\n  " + "\n  ".join(missing))
PY
)
echo "not published: $(echo $unpublished)"

log "cargo package"
excludes=()
for name in $unpublished; do
  excludes+=(--exclude "$name")
done
cargo package --workspace "${excludes[@]}" --no-verify --allow-dirty

log "docs (rustdoc warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib

echo "package check passed"
