#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it into a throwaway
# root with dpkg, and checks the layout: binary, unit, conffile, rules,
# templates; then runs the installed binary's `check` on the installed
# config and rates the installed unit with systemd-analyze when present.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
fail() { echo "FAIL: $*" >&2; exit 1; }

if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
command -v dpkg >/dev/null 2>&1 || fail "dpkg is not installed"

deb=$(cargo deb --output target/debian/ | tail -n 1)
[ -f "$deb" ] || fail "cargo deb did not report a package (got: $deb)"
echo "built $deb"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log"
touch "$root/var/lib/dpkg/status"
dpkg --root="$root" --force-depends --force-not-root -i "$deb"

want_file() { [ -f "$root$1" ] || fail "$1 is not installed"; echo "ok  $1"; }
want_file /usr/bin/tidings
[ -x "$root/usr/bin/tidings" ] || fail "/usr/bin/tidings is not executable"
want_file /lib/systemd/system/tidings.service
want_file /etc/tidings/tidings.yaml
want_file /usr/share/tidings/rules/default.yaml
want_file /usr/share/tidings/templates/progress.email.j2
want_file /usr/share/tidings/templates/id/progress.email.j2
want_file /usr/share/tidings/templates/pl/progress.email.j2
want_file /usr/share/tidings/templates/tl/progress.email.j2
want_file /usr/share/tidings/templates/progress.sms.j2
want_file /usr/share/tidings/templates/digest.email.j2
want_file /usr/share/doc/tidings/README.md
want_file /usr/share/tidings/inbound/zendesk-trigger-body.json
want_file /usr/share/tidings/inbound/freshdesk-automation-body.json
want_file /usr/share/tidings/inbound/mapping.yaml
grep -qx /etc/tidings/tidings.yaml "$root/var/lib/dpkg/info/tidings.conffiles" \
  || fail "/etc/tidings/tidings.yaml is not a conffile"
echo "ok  /etc/tidings/tidings.yaml is a conffile"
dpkg --root="$root" -s tidings | grep -q '^Status: install ok installed' \
  || fail "dpkg does not list tidings as installed"

# The installed config points at the installed rules and templates.
grep -q '^rules: /usr/share/tidings/rules' "$root/etc/tidings/tidings.yaml" || fail "rules path"
grep -q '^templates: /usr/share/tidings/templates' "$root/etc/tidings/tidings.yaml" || fail "templates path"
grep -q '^data_dir: /var/lib/tidings' "$root/etc/tidings/tidings.yaml" || fail "data_dir"
sed -e "s#/usr/share/tidings#$root/usr/share/tidings#g" -e "s#/var/lib/tidings#$root/var/lib/tidings#" \
  "$root/etc/tidings/tidings.yaml" > "$root/check.yaml"
"$root/usr/bin/tidings" check --config "$root/check.yaml"

if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze security --offline=yes --no-pager "$root/lib/systemd/system/tidings.service" | tail -n 1
fi
echo "packaging/test-deb.sh: ok in $(( $(date +%s) - start ))s"
