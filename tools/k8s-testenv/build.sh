#!/usr/bin/env bash
# Build the test control plane binaries from upstream Go modules (no Docker):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kustomize
# into a cache directory outside the repository:
#   ${SCANWARD_K8S_BIN:-$HOME/.cache/scanward/k8s/<k8s-version>}
# A binary is skipped when it exists and was built from the same pinned
# version and flags (stamp file .<name>.stamp); delete it to force a rebuild.
#
# Usage: ./build.sh            (prints the bin dir on the last line)
# Env:   SCANWARD_K8S_BIN      output dir
#        BUILD_NICE=19         nice level for the go builds
#        GO=go                 go command
#        KWOK_VERSION=v0.8.0   kwok release to go-install
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GO="${GO:-go}"
NICE=(nice -n "${BUILD_NICE:-19}")

# The pinned versions come from the checked-in go.mod files (see gen-gomod.sh).
modver() { # module go.mod -> version required in that go.mod
  awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$2"
}
K8S_VERSION="$(modver k8s.io/kubernetes "$HERE/go.mod")"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3 "$HERE/etcd/go.mod")"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.5.0}"
[[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { echo "cannot read k8s.io/kubernetes version from go.mod" >&2; exit 1; }
K8S_MINOR="${BASH_REMATCH[1]}"
[[ -n "$ETCD_VERSION" ]] || { echo "cannot read etcd version from etcd/go.mod" >&2; exit 1; }

BIN="${SCANWARD_K8S_BIN:-$HOME/.cache/scanward/k8s/$K8S_VERSION}"
mkdir -p "$BIN"
case "$(cd "$BIN" && pwd -P)/" in
  "$(cd "$HERE/../.." && pwd -P)"/*) echo "refusing to build into the repository ($BIN)" >&2; exit 1 ;;
esac

export CGO_ENABLED=0
CALLER_GOFLAGS="${GOFLAGS:-}"
# Build exactly what go.mod/go.sum pin (-mod=readonly), and do not stamp VCS
# info of the scanward checkout into the binaries.
export GOFLAGS="${CALLER_GOFLAGS} -mod=readonly -buildvcs=false"

# Same variables the upstream release build stamps (hack/lib/version.sh sets
# them in both k8s.io/component-base/version and k8s.io/client-go/pkg/version).
# buildDate: the release's publication time from the module proxy (keeps the
# build reproducible). gitCommit stays unset: module zips carry no VCS data.
K8S_BUILD_DATE="$(cd "$HERE" && "$GO" list -m -json k8s.io/kubernetes |
  sed -n 's/^[[:space:]]*"Time": "\(.*\)",*$/\1/p')"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
  K8S_LDFLAGS+=" -X ${pkg}.gitMajor=1"
  K8S_LDFLAGS+=" -X ${pkg}.gitMinor=${K8S_MINOR}"
  K8S_LDFLAGS+=" -X ${pkg}.gitTreeState=clean"
  if [[ -n "$K8S_BUILD_DATE" ]]; then K8S_LDFLAGS+=" -X ${pkg}.buildDate=${K8S_BUILD_DATE}"; fi
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

T_ALL="$(now)"
BUILT=0

# A binary is rebuilt when missing or when its stamp (pinned version + flags)
# differs, e.g. after gen-gomod.sh moved etcd or KWOK_VERSION changed.
up_to_date() { # name stamp
  [[ -x "$BIN/$1" && -f "$BIN/.$1.stamp" && "$(cat "$BIN/.$1.stamp")" == "$2" ]]
}

build_one() { # name dir package version ldflags
  local name="$1" dir="$2" pkg="$3" version="$4" ldflags="$5"
  local stamp="$pkg@$version $ldflags"
  if up_to_date "$name" "$stamp"; then
    echo "skip  $name (up to date in $BIN)"
    return
  fi
  local t; t="$(now)"
  echo "build $name ($pkg@$version) ..."
  (cd "$dir" && "${NICE[@]}" "$GO" build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" "$pkg")
  mv -f "$BIN/$name.tmp" "$BIN/$name"
  echo "$stamp" >"$BIN/.$name.stamp"
  BUILT=$((BUILT + 1))
  echo "done  $name in $(elapsed "$t")"
}

build_one etcd "$HERE/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  build_one "$cmd" "$HERE" "k8s.io/kubernetes/cmd/$cmd" "$K8S_VERSION" "$K8S_LDFLAGS"
done

# "go install pkg@version" builds a tool with its own go.mod/go.sum (checked against
# the checksum database), outside this module.
go_install() { # name package version
  local name="$1" pkg="$2" version="$3" stamp="$2@$3 -s -w"
  if up_to_date "$name" "$stamp"; then
    echo "skip  $name (up to date in $BIN)"
    return
  fi
  local t
  t="$(now)"
  echo "build $name ($pkg@$version) ..."
  (cd "$BIN" && GOFLAGS="$CALLER_GOFLAGS" GOBIN="$BIN" "${NICE[@]}" "$GO" install -trimpath \
    -ldflags "-s -w" "$pkg@$version")
  echo "$stamp" >"$BIN/.$name.stamp"
  BUILT=$((BUILT + 1))
  echo "done  $name in $(elapsed "$t")"
}

go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
# kustomize renders deploy/ in the manifest tests (kubectl is not on every machine).
go_install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"

cat >"$BIN/VERSIONS" <<EOF
kubernetes ${K8S_VERSION}
etcd ${ETCD_VERSION}
kwok ${KWOK_VERSION}
kustomize ${KUSTOMIZE_VERSION}
go $("$GO" env GOVERSION)
EOF

"$BIN/kube-apiserver" --version
# sed, not head: head exits after one line and, with pipefail, the writer's SIGPIPE
# (exit 141) would fail the build when it races.
"$BIN/etcd" --version | sed -n 1p
"$BIN/kwok" --version 2>/dev/null | sed -n 1p || true
echo "built ${BUILT} binaries in $(elapsed "$T_ALL") (wall clock)"
echo "$BIN"
