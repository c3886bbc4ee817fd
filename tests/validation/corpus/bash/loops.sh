#!/usr/bin/env bash
set -euo pipefail

for i in 1 2 3; do
  echo "iteration $i"
done

for ((n = 0; n < 3; n++)); do
  printf '%d squared is %d\n' "$n" $((n * n))
done

count=0
while [[ $count -lt 3 ]]; do
  count=$((count + 1))
done
echo "count=$count"

until [ "$count" -eq 0 ]; do
  count=$((count - 1))
done

for file in /etc/*.conf; do
  [ -f "$file" ] || continue
  echo "$(basename "$file")"
done | head -n 3
