#!/usr/bin/env bash

log() {
  local level=$1; shift
  printf '[%s] %s\n' "$level" "$*" >&2
}

function max() {
  local best=$1
  for value in "$@"; do
    (( value > best )) && best=$value
  done
  echo "$best"
}

require_tool() {
  command -v "$1" >/dev/null 2>&1 || { log WARN "missing $1"; return 1; }
}

greet() { echo "hello, ${1:-world}"; }

log INFO "starting"
greet
greet "bash"
result=$(max 3 9 4)
echo "max is $result"
require_tool sort && echo "sort is available"
if require_tool jq; then echo "jq found"; else echo "no jq"; fi
