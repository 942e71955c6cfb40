# Sourced by the launch/setup* scripts and launch/gpu-bundle: Debian packages, installed once.
#   ensure_debs TAG PACKAGE...   installs the ones missing (apt-get, sudo when not root), saying
#                                so as "[TAG] installing: ..."; returns apt-get's status.

# The packages of the build (launch/setup; launch/gpu-bundle needs the same).
# shellcheck disable=SC2034
moekit_build_debs=(build-essential cmake ninja-build pkg-config
  libeigen3-dev libyaml-cpp-dev libhdf5-dev libopenmpi-dev openmpi-bin
  nlohmann-json3-dev libcli11-dev libgtest-dev libopenblas-openmp-dev libpcre2-dev libicu-dev
  python3 python3-matplotlib)

ensure_debs() {
  local tag="$1" p missing=() sudo=""
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[$tag] installing: ${missing[*]}"
  $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
