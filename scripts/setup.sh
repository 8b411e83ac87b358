#!/usr/bin/env bash
# Bring this checkout and machine to the state the tests need. Idempotent, and fast
# once done (each step checks before it acts), so scripts/test.sh runs it every time.
#   - system tools: python3.11, Java 17 + Maven (the Kafka test broker), promtool and
#     prometheus (the deploy tests check the alert rules and scrape config with them)
#   - .venv with `pip install -e '.[test]'`, redone only when pyproject.toml changed
#   - the Kafka broker jars in .kafka/jars
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
venv=$repo_root/.venv
stamp=$venv/.padimd-install-stamp

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# Teammates share one checkout and one .venv: two concurrent pip runs in the same venv
# can corrupt it, so whole setups take turns.
lock_file=${TMPDIR:-/tmp}/padimd-setup-$(echo "$repo_root" | sha256sum | cut -c1-12).lock
exec 9>"$lock_file"
if ! flock -n 9; then
    say "another setup of $repo_root is running; waiting for it"
    flock 9
fi

# --- Debian packages --------------------------------------------------------------

export DEBIAN_FRONTEND=noninteractive
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || die "installing Debian packages needs root or sudo"
    sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
fi

apt_install() {
    local pkg need_update=0 made_policy=0
    # `apt-get update` is slow and touches the network: only when a package is unknown
    # (no package lists yet, as on a fresh image) or when installing from stale lists
    # fails (mirrors drop superseded versions).
    for pkg in "$@"; do
        apt-cache show --no-all-versions "$pkg" >/dev/null 2>&1 || need_update=1
    done
    if ((need_update)); then
        say "apt-get update (package lists missing or incomplete)"
        "${sudo[@]}" apt-get update -qq
    fi
    # Packages such as prometheus ship a service that their postinst would start: a
    # daemon left running behind the tests. policy-rc.d answering 101 forbids that;
    # create it only for this install when the image has none.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    say "apt-get install $*"
    local rc=0
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" || rc=$?
    if ((rc != 0 && need_update == 0)); then
        say "install failed; refreshing package lists and retrying once"
        "${sudo[@]}" apt-get update -qq
        rc=0
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" || rc=$?
    fi
    if ((made_policy)); then
        "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    ((rc == 0)) || die "apt-get install $* failed"
}

missing=()
command -v python3.11 >/dev/null || missing+=(python3.11 python3.11-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v promtool >/dev/null || missing+=(prometheus)
# systemd-analyze verifies the shipped unit in tests/deploy.
command -v systemd-analyze >/dev/null || missing+=(systemd)
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
else
    say "system tools present (python3.11, java, mvn, promtool)"
fi

# --- Python virtualenv --------------------------------------------------------------

if ! "$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    # Missing, or left over from another interpreter: start clean.
    say "creating $venv (python3.11)"
    rm -rf "$venv"
    python3.11 -m venv "$venv"
fi

# The stamp holds the hash of the pyproject.toml last installed successfully; it lives
# in the venv so that a recreated venv always reinstalls.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    say "python packages up to date (pyproject.toml unchanged)"
else
    say "pip install -e '.[test]' (pyproject.toml changed or first install)"
    "$venv/bin/python" -m pip install --progress-bar off -e '.[test]'
    echo "$want" >"$stamp"
fi

# --- Kafka broker jars ----------------------------------------------------------------

bash "$repo_root/scripts/kafka-broker.sh" fetch
say "Kafka broker jars in ${PADIMD_KAFKA_JARS:-$repo_root/.kafka/jars}"
say "done"
