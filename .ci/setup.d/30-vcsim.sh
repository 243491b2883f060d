#!/usr/bin/env bash
# Discovery tests' real peers: govmomi's vCenter simulator (built from Debian's Go sources, no Go
# module download) and OpenSSH's sshd (started by the tests on a loopback port). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q golang-go golang-github-vmware-govmomi-dev openssh-server >/dev/null
fi
if [ ! -x tests/vcsim/vcsim ] || [ tests/vcsim/main.go -nt tests/vcsim/vcsim ]; then
  GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= go build -o tests/vcsim/vcsim tests/vcsim/main.go
fi
