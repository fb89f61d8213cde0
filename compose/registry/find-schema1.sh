#!/bin/sh
# Lists the tags whose manifest is Docker image manifest schema 1, which registry:3
# (distribution 3.x) no longer serves, reading the registry's storage directly (the registry
# may be running or not): ./find-schema1.sh [STORAGE_DIR]   (default: ../data/registry)
# Prints `REPOSITORY:TAG DIGEST` per tag and exits 0; nothing printed: nothing to convert.
# Convert such an image before upgrading, e.g. pull it and push it again with a current docker,
# or `skopeo copy --format v2s2 docker://HOST/REPO:TAG docker://HOST/REPO:TAG`.
set -eu
storage=${1:-$(cd "$(dirname "$0")" && pwd)/../data/registry}
v2="$storage/docker/registry/v2"
[ -d "$v2/repositories" ] || { echo "find-schema1.sh: no registry storage at $storage" >&2; exit 2; }
find "$v2/repositories" -path '*/_manifests/tags/*/current/link' | sort | while read -r link; do
  digest=$(cat "$link")
  hex=${digest#sha256:}
  blob="$v2/blobs/sha256/$(printf %.2s "$hex")/$hex/data"
  [ -f "$blob" ] || continue
  # schema 1 says "schemaVersion": 1; schema 2, lists and OCI say 2
  if tr -d ' \n\t' <"$blob" | grep -q '"schemaVersion":1[,}]'; then
    repo=${link#"$v2/repositories/"}; repo=${repo%%/_manifests/*}
    tag=${link%/current/link}; tag=${tag##*/}
    echo "$repo:$tag $digest"
  fi
done
