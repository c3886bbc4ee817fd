#!/usr/bin/env bash
verbose=0
mode=fast
while getopts ":vm:" opt; do
  case "$opt" in
    v) verbose=1 ;;
    m) mode=$OPTARG ;;
    \?) echo "unknown option -$OPTARG" >&2; exit 2 ;;
    :) echo "-$OPTARG needs a value" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

case "$mode" in
  fast|quick)
    echo "fast mode"
    ;;
  slow)
    echo "slow mode"
    ;;
  *)
    echo "default mode"
    ;;
esac
[ "$verbose" -eq 1 ] && echo "args: $*"
