#!/usr/bin/env bash
# Build prerequisites for corecast, sourced by serve.sh and test.sh: cargo, a C
# compiler, pkg-config, and what quiche's BoringSSL build needs (cmake, make, clang with
# libclang for bindgen). Missing Debian packages are installed when running as
# root (apt-get update first); otherwise it says exactly what to install.
set -euo pipefail

build_deps() {
  local need=()
  command -v cc >/dev/null 2>&1 || need+=(gcc)
  command -v c++ >/dev/null 2>&1 || need+=(g++)
  command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  # cmake's default generator writes Makefiles: BoringSSL's build runs make.
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v clang >/dev/null 2>&1 || need+=(clang)
  if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
  fi
  if [ "${#need[@]}" -gt 0 ]; then
    echo "build-deps: quiche (BoringSSL) needs: ${need[*]} — installing" >&2
    if [ "$(id -u)" -ne 0 ]; then
      echo "build-deps: not root: run 'sudo apt-get install ${need[*]}' and retry" >&2
      return 1
    fi
    apt-get update -qq </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "build-deps: cargo is required (install a Rust toolchain with rustup)" >&2
    return 1
  fi
}

build_deps
