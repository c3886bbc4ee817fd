#!/bin/bash
# Word frequencies and column statistics with the usual text tools.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

cat > "$tmp" <<'EOF_DATA'
name,dept,salary
alice,eng,120
bob,ops,90
carol,eng,135
dave,ops,88
EOF_DATA

tail -n +2 "$tmp" | cut -d, -f2 | sort | uniq -c | sort -rn
awk -F, 'NR > 1 { sum[$2] += $3; n[$2]++ } END { for (d in sum) printf "%s %.1f\n", d, sum[d] / n[d] }' "$tmp"
grep -E '^[a-c]' "$tmp" | sed -e 's/,/ | /g' -e 's/^/> /'
tr '[:lower:]' '[:upper:]' < "$tmp" | head -n 2
wc -l < "$tmp"
paste -sd+ <(tail -n +2 "$tmp" | cut -d, -f3) | bc
sort -t, -k3,3n "$tmp" | tee /dev/null | column -t -s,
