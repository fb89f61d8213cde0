# Sourced by install.sh, install-clients.sh and install-registry3.sh: packages Debian 12 lacks,
# taken from Debian's unstable suite without touching the system. `unstable_apt` makes $tmp (a
# scratch directory removed on exit), points a private apt state in it at unstable, runs
# `apt-get update`, and sets $opts for further apt-get/apt-cache calls; `dpkg-deb -x` then
# unpacks what `apt-get download` fetched.
unstable_apt() {
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt drops to _apt for downloads
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  echo "deb http://deb.debian.org/debian sid main" >"$tmp/sources.list"
  opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
        -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" -qq update
}
