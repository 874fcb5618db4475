#!/usr/bin/env bash
# The fresh-machine rehearsal: runs the README's two commands (./scripts/demo.sh, then
# ./scripts/test.sh) in a fresh clone of the current commit, as a new user would, with every
# cache empty: a new HOME (so no ~/.cache, ~/.foundry, ~/.npm, ~/.cargo), an empty CARGO_HOME
# (no crates.io registry, no installed cargo tools), an empty CARGO_TARGET_DIR, and no .local/ or
# node_modules in the checkout. What may stay, as on a new machine of this kind: the Rust
# toolchain (rustup's), Python and Node.js, and Debian packages.
#
#   scripts/fresh-check.sh            both commands (about 35-45 min on 2 cores)
#   scripts/fresh-check.sh --quick    only the installers and what runs offline after them, in the
#                                     same empty state (a few minutes; CI runs this one)
#   scripts/fresh-check.sh --keep     keep the scratch directory (default: removed at the end)
#
# Prints each command's exit code and time, and exits non-zero if either failed. Uncommitted
# changes are not part of the rehearsal (it clones HEAD): commit first.
# Run it before every stop (see README, Development); paste its summary into the issue notes.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

quick="" keep=""
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--quick] [--keep]" >&2; exit 2 ;;
  esac
done

commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "fresh-check: uncommitted changes are not rehearsed (HEAD is $commit)" >&2
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/x402-fresh.XXXXXX")
cleanup() {
  # A demo or test that failed may leave its services up: stop what runs from the scratch dir.
  pkill -f "$scratch/" 2>/dev/null || true
  if [ -z "$keep" ]; then rm -rf "$scratch"; else echo "fresh-check: kept $scratch" >&2; fi
}
trap cleanup EXIT

# The toolchain stays (rustup's proxies, resolved through the real RUSTUP_HOME); nothing else
# installed under the old CARGO_HOME does (cargo-fuzz, for one, must be installed again).
real_home=$HOME
export RUSTUP_HOME="${RUSTUP_HOME:-$real_home/.rustup}"
export PYENV_ROOT="${PYENV_ROOT:-$real_home/.pyenv}"
toolbin="$scratch/toolchain-bin"
mkdir -p "$toolbin"
cargo_bin=$(dirname "$(command -v cargo)")
for t in cargo rustc rustdoc rustup rustfmt cargo-fmt cargo-clippy clippy-driver; do
  [ -x "$cargo_bin/$t" ] && ln -s "$cargo_bin/$t" "$toolbin/$t"
done
if command -v cargo-nextest > /dev/null; then ln -s "$(command -v cargo-nextest)" "$toolbin/"; fi
path_without_cargo=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$cargo_bin" | paste -sd: -)

# A new home: the machine's registry and git settings only (a new machine has them too).
home="$scratch/home"
mkdir -p "$home"
for f in .npmrc .gitconfig; do
  [ -f "$real_home/$f" ] && cp "$real_home/$f" "$home/"
done
export HOME="$home"
export CARGO_HOME="$home/.cargo"
export PATH="$CARGO_HOME/bin:$toolbin:$path_without_cargo"
unset CARGO_TARGET_DIR X402_CACHE XDG_CACHE_HOME npm_config_cache PIP_CACHE_DIR
export XDG_CACHE_HOME="$home/.cache"

git clone --quiet --no-hardlinks "$top" "$scratch/src"
git -C "$scratch/src" checkout --quiet "$commit"
cd "$scratch/src"

summary=()
failed=0
run_step() {
  local name=$1; shift
  local log="$scratch/$name.log" t0 t1 rc
  echo "fresh-check: $name ($*), log $log" >&2
  t0=$(date +%s)
  set +e
  "$@" < /dev/null > "$log" 2>&1
  rc=$?
  set -e
  t1=$(date +%s)
  summary+=("$(printf '%-28s exit %d  %dm%02ds' "$name" "$rc" $(((t1 - t0) / 60)) $(((t1 - t0) % 60)))")
  if [ "$rc" != 0 ]; then
    failed=1
    echo "fresh-check: $name failed; its last lines:" >&2
    tail -30 "$log" >&2
  fi
}

if [ -n "$quick" ]; then
  # Every installer of the two commands, from nothing, then the steps that must work offline
  # after them (the Dockerfile's dependency layer).
  quick_steps() (
    set -euo pipefail
    source scripts/env.sh
    ensure_build_tools
    ensure_node_tools
    ensure_python_tools
    ensure_deploy_tools
    scripts/deploy-check.sh --layer-only
  )
  run_step "installers-and-offline" quick_steps
else
  run_step "scripts/demo.sh" env DEMO_EXIT=1 ./scripts/demo.sh
  run_step "scripts/test.sh" ./scripts/test.sh
fi

echo
echo "fresh-check of $commit (empty CARGO_HOME, CARGO_TARGET_DIR, HOME caches; $(nproc) cores):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
